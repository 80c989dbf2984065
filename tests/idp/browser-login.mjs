// Drives a login page in a real headless Chromium (npm puppeteer-core, the system browser), as
// a user would: opens a URL (following redirects), types into the form's fields, clicks its
// submit button and waits for the page the browser lands on.
//
//   node tests/idp/browser-login.mjs --chromium /usr/bin/chromium --url URL \
//        [--follow-link HREF_PART] [--field NAME=VALUE ...] [--timeout-secs 60]
//
// --follow-link: on the first page, click the link whose href contains HREF_PART (as a user
// picks "Sign in with SSO") and fill the form of the page it leads to.
//
// Prints one JSON line on stdout:
//   {"form": {"url", "status", "title", "labels": {NAME: label text}},
//    "final": {"url", "status", "title", "text"}}
// or {"error": "..."} (exit status 1) when the browser cannot get there, for example when the
// form is missing a field or the browser's own validation keeps the form from being sent.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import puppeteer from 'puppeteer-core';

const { values: args } = parseArgs({
  options: {
    chromium: { type: 'string' },
    url: { type: 'string' },
    field: { type: 'string', multiple: true, default: [] },
    'follow-link': { type: 'string' },
    'timeout-secs': { type: 'string', default: '60' },
  },
  strict: true,
});

function finish(result, status) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = status;
}

if (!args.chromium || !args.url) {
  finish({ error: '--chromium PATH and --url URL are required' }, 2);
  process.exit();
}
const timeoutMs = Number(args['timeout-secs']) * 1000;
const fields = args.field.map((spec) => {
  const at = spec.indexOf('=');
  if (at <= 0) {
    finish({ error: `--field ${spec}: expected NAME=VALUE` }, 2);
    process.exit();
  }
  return [spec.slice(0, at), spec.slice(at + 1)];
});

// A hard limit on the whole run: a stuck browser must not hang the calling test.
setTimeout(() => {
  finish({ error: `no result within ${args['timeout-secs']} s` }, 1);
  process.exit();
}, timeoutMs + 10_000).unref();

// What a user sees of a page: where it is, its HTTP status, its title and its visible text.
async function seen(page, response) {
  return {
    url: page.url(),
    status: response ? response.status() : null,
    title: await page.title(),
    text: await page.evaluate(() => document.body?.innerText ?? ''),
  };
}

async function fillAndSubmit(page) {
  let formResponse = await page.goto(args.url, { waitUntil: 'load', timeout: timeoutMs });
  if (args['follow-link']) {
    const link = await page.$(`a[href*="${args['follow-link']}"]`);
    if (!link) throw new Error(`the page at ${page.url()} has no link to ${args['follow-link']}`);
    [formResponse] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load', timeout: timeoutMs }),
      link.click(),
    ]);
  }
  const form = await seen(page, formResponse);
  delete form.text;
  form.labels = {};
  for (const [name, value] of fields) {
    const input = await page.$(`form [name="${name}"]`);
    if (!input) throw new Error(`the page at ${page.url()} has no form field named ${name}`);
    form.labels[name] = await input.evaluate((el) => (el.labels?.[0]?.innerText ?? '').trim());
    await input.click();
    if (value) await input.type(value);
  }
  const submit = await page.$('form [type="submit"]');
  if (!submit) throw new Error(`the form at ${page.url()} has no submit button`);
  // A click on submit does not send a form the browser finds invalid (required, pattern): it
  // shows the field's message instead. Report that message rather than wait for nothing.
  const invalid = await page.evaluate(() => [...document.querySelectorAll('form :invalid')]
    .filter((el) => el.name)
    .map((el) => `${el.name}: ${el.validationMessage}`));
  if (invalid.length) throw new Error(`the browser refuses to send the form (${invalid.join('; ')})`);
  const [response] = await Promise.all([
    page.waitForNavigation({ waitUntil: 'load', timeout: timeoutMs }),
    submit.click(),
  ]);
  return { form, final: await seen(page, response) };
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ztmesh-chromium-'));
let browser;
try {
  browser = await puppeteer.launch({
    executablePath: args.chromium,
    headless: true,
    userDataDir,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    timeout: timeoutMs,
  });
  const page = await browser.newPage();
  finish(await fillAndSubmit(page), 0);
} catch (err) {
  finish({ error: err.message }, 1);
} finally {
  await browser?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
