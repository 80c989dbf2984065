// A real OpenID Connect provider (npm `oidc-provider`) for ztmesh tests and the demo.
//
// Start:  node tests/idp/server.mjs --port 0 --clients clients.json --users users.json
// Prints one line `ztmesh-test-idp ready issuer=URL port=N` on stdout once it serves.
// See tests/idp/README.md for the file formats, the admin endpoints and the test-only knobs.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

import { verifyTotp } from './totp.mjs';
import { loginPage, escapeHtml } from './pages.mjs';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: process.env.IDP_HOST || '127.0.0.1' },
    port: { type: 'string', default: process.env.IDP_PORT || '0' },
    issuer: { type: 'string', default: process.env.IDP_ISSUER || '' },
    clients: { type: 'string', default: process.env.IDP_CLIENTS || '' },
    users: { type: 'string', default: process.env.IDP_USERS || '' },
    'admin-token-file': { type: 'string', default: process.env.IDP_ADMIN_TOKEN_FILE || '' },
    'id-token-ttl': { type: 'string', default: process.env.IDP_ID_TOKEN_TTL || '3600' },
    kid: { type: 'string', default: process.env.IDP_KID || '' },
  },
  strict: true,
});

function fail(message) {
  process.stderr.write(`ztmesh-test-idp: ${message}\n`);
  process.exit(2);
}

function readJson(path, what) {
  if (!path) fail(`--${what} FILE is required`);
  try {
    return JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (err) {
    return fail(`cannot read ${what} file ${path}: ${err.message}`);
  }
}

// ---- users -------------------------------------------------------------------------------

function loadUsers() {
  const raw = readJson(args.users, 'users');
  const list = Array.isArray(raw) ? raw : raw.users;
  if (!Array.isArray(list)) fail('users file: expected an array or {"users": [...]}');
  const map = new Map();
  for (const u of list) {
    if (!u.login || typeof u.password !== 'string') fail('users file: every user needs login and password');
    map.set(u.login, {
      login: u.login,
      password: u.password,
      totpSecret: u.totp_secret || null,
      email: u.email || `${u.login}@example.test`,
      emailVerified: u.email_verified !== false,
      name: u.name || u.login,
      groups: Array.isArray(u.groups) ? u.groups : [],
      disabled: Boolean(u.disabled),
    });
  }
  return map;
}
let users = loadUsers();

// The admin endpoint flips `disabled` in memory; a reload (SIGHUP or /admin/reload) takes the
// file's word again.
function findUser(login) {
  const u = users.get(login);
  return u && !u.disabled ? u : undefined;
}

// ---- clients -----------------------------------------------------------------------------

const rawClients = readJson(args.clients, 'clients');
const clientList = Array.isArray(rawClients) ? rawClients : rawClients.clients;
if (!Array.isArray(clientList)) fail('clients file: expected an array or {"clients": [...]}');
// Test-only misbehaviour per client (never set it for a real deployment): the provider
// re-signs the ID token it issues to that client with one property broken, so that each
// relying-party check can be shown to refuse exactly that fault.
const tamperByClient = new Map();
const clients = clientList.map((c) => {
  const { x_test_tamper: tamper, ...meta } = c;
  if (tamper) tamperByClient.set(meta.client_id, tamper);
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: meta.client_secret ? 'client_secret_basic' : 'none',
    ...meta,
  };
});

// ---- signing keys ------------------------------------------------------------------------

const kid = args.kid || crypto.randomBytes(8).toString('hex');
function newRsaKey() {
  return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
}
const signingKey = newRsaKey();
const signingJwk = { ...signingKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
// A key the relying party has never seen, published under the same kid, for `foreign_key`.
let foreignKey;

// ---- admin token -------------------------------------------------------------------------

let adminToken = null;
if (args['admin-token-file']) {
  adminToken = fs.readFileSync(args['admin-token-file'], 'utf8').trim();
  if (!adminToken) fail('admin token file is empty');
} else if (process.env.IDP_ADMIN_TOKEN) {
  adminToken = process.env.IDP_ADMIN_TOKEN;
}

function adminAuthorized(req) {
  if (!adminToken) return false;
  const header = req.headers.authorization || '';
  const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '');
  const want = Buffer.from(adminToken);
  // Constant-time compare; lengths are not secret.
  return given.length === want.length && crypto.timingSafeEqual(given, want);
}

// ---- server + provider -------------------------------------------------------------------

const idTokenTtl = Number.parseInt(args['id-token-ttl'], 10);
if (!(idTokenTtl > 0)) fail('--id-token-ttl must be a positive number of seconds');

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number.parseInt(args.port, 10), args.host, resolve);
});
const { port } = server.address();
const hostForUrl = args.host.includes(':') ? `[${args.host}]` : args.host;
const issuer = args.issuer || `http://${hostForUrl}:${port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: {
    // amr/acr/auth_time reach the ID token only when listed here.
    openid: ['sub', 'amr', 'acr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Scope claims (email, groups) go into the ID token itself, not only /me.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  // PKCE for every client, confidential ones too.
  pkce: { required: () => true },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: idTokenTtl,
    RefreshToken: 24 * 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 24 * 3600,
  },
  // Refresh tokens only for offline_access; rotation stays the library default.
  async findAccount(_ctx, sub) {
    // A disabled or removed user has no account: refresh-token grants then fail
    // with invalid_grant, which is how relying parties notice.
    const user = findUser(sub);
    if (!user) return undefined;
    return {
      accountId: user.login,
      async claims() {
        return {
          sub: user.login,
          email: user.email,
          email_verified: user.emailVerified,
          name: user.name,
          preferred_username: user.login,
          groups: user.groups,
        };
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>IdP error</title></head><body><h1>Error</h1><pre>${escapeHtml(JSON.stringify(out))}</pre></body></html>`;
  },
});
provider.on('server_error', (_ctx, err) => process.stderr.write(`idp server_error: ${err.stack}\n`));

// Test-only: break the ID token for clients configured with x_test_tamper.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route !== 'token' || ctx.status !== 200 || !ctx.body?.id_token) return;
  const tamper = tamperByClient.get(ctx.oidc.client?.clientId);
  if (!tamper) return;
  ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, tamper) };
});

function resign(jwt, tamper) {
  const [h, p] = jwt.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  if (tamper.aud !== undefined) payload.aud = tamper.aud;
  if (tamper.nonce !== undefined) payload.nonce = tamper.nonce;
  if (tamper.iss !== undefined) payload.iss = tamper.iss;
  if (tamper.exp_offset_secs !== undefined) {
    for (const claim of ['iat', 'exp', 'auth_time']) {
      if (typeof payload[claim] === 'number') payload[claim] += tamper.exp_offset_secs;
    }
  }
  let key = signingKey;
  if (tamper.foreign_key) {
    foreignKey ||= newRsaKey();
    key = foreignKey;
  }
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const signature = crypto.sign('RSA-SHA256', Buffer.from(input), key).toString('base64url');
  return `${input}.${signature}`;
}

// ---- interactions ------------------------------------------------------------------------

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function handleInteraction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, 'text/plain', 'interaction mismatch\n');
    return;
  }
  const { prompt, params } = details;

  if (prompt.name === 'login') {
    if (req.method === 'GET' && !action) {
      send(res, 200, 'text/html; charset=utf-8', loginPage({ uid, clientId: params.client_id }));
      return;
    }
    if (req.method === 'POST' && action === 'login') {
      const form = await readForm(req);
      const login = form.get('login') || '';
      const password = form.get('password') || '';
      const otp = (form.get('otp') || '').trim();
      const user = findUser(login);
      const pwOk = user
        && user.password.length === password.length
        && crypto.timingSafeEqual(Buffer.from(user.password), Buffer.from(password));
      if (!pwOk) {
        log('login refused', { login, reason: 'bad credentials or disabled' });
        send(res, 401, 'text/html; charset=utf-8', loginPage({ uid, clientId: params.client_id, error: 'Invalid login or password.' }));
        return;
      }
      let amr = ['pwd'];
      if (user.totpSecret) {
        if (!verifyTotp(user.totpSecret, otp)) {
          log('login refused', { login, reason: 'bad one-time code' });
          send(res, 401, 'text/html; charset=utf-8', loginPage({ uid, clientId: params.client_id, error: 'Invalid one-time code.' }));
          return;
        }
        amr = ['pwd', 'otp'];
      }
      log('login ok', { login, amr: amr.join(',') });
      await provider.interactionFinished(req, res, {
        login: {
          accountId: user.login,
          amr,
          acr: amr.includes('otp') ? 'urn:ztmesh:idp:mfa' : 'urn:ztmesh:idp:pwd',
          remember: false,
        },
      }, { mergeWithLastSubmission: false });
      return;
    }
  }

  if (prompt.name === 'consent') {
    // Test provider: consent is granted automatically for everything the client asked for.
    const { session, grantId } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const id = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
    return;
  }

  send(res, 400, 'text/plain', `unexpected prompt ${prompt.name}\n`);
}

// ---- admin -------------------------------------------------------------------------------

async function handleAdmin(req, res, path) {
  if (!adminAuthorized(req)) {
    send(res, 401, 'application/json', '{"error":"unauthorized"}\n');
    return;
  }
  let m;
  if (req.method === 'POST' && (m = path.match(/^\/admin\/users\/([^/]+)\/(disable|enable)$/))) {
    const login = decodeURIComponent(m[1]);
    const user = users.get(login);
    if (!user) {
      send(res, 404, 'application/json', '{"error":"no such user"}\n');
      return;
    }
    user.disabled = m[2] === 'disable';
    log(`user ${m[2]}d`, { login });
    send(res, 200, 'application/json', `${JSON.stringify({ login, disabled: user.disabled })}\n`);
    return;
  }
  if (req.method === 'POST' && path === '/admin/reload') {
    users = loadUsers();
    log('users reloaded', { count: users.size });
    send(res, 200, 'application/json', `${JSON.stringify({ users: users.size })}\n`);
    return;
  }
  send(res, 404, 'application/json', '{"error":"not found"}\n');
}

process.on('SIGHUP', () => {
  try {
    users = loadUsers();
    log('users reloaded (SIGHUP)', { count: users.size });
  } catch (err) {
    log('reload failed', { error: err.message });
  }
});

function log(msg, fields = {}) {
  const kv = Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(' ');
  process.stderr.write(`idp: ${msg}${kv ? ` ${kv}` : ''}\n`);
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  const url = new URL(req.url, 'http://x');
  const m = url.pathname.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?$/);
  let work;
  if (m) work = handleInteraction(req, res, m[1], m[2]);
  else if (url.pathname.startsWith('/admin/')) work = handleAdmin(req, res, url.pathname);
  else {
    providerCallback(req, res);
    return;
  }
  work.catch((err) => {
    log('request failed', { path: url.pathname, error: err.message });
    if (!res.headersSent) send(res, 400, 'text/plain', `${err.message}\n`);
  });
});

function shutdown() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`ztmesh-test-idp ready issuer=${issuer} port=${port}\n`);
