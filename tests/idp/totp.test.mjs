// RFC 6238 appendix B test vectors (SHA-1, last 6 digits) for the test IdP's TOTP check.

import assert from 'node:assert/strict';
import test from 'node:test';

import { totpAt, verifyTotp, base32Decode } from './totp.mjs';

// ASCII "12345678901234567890" in base32.
const SECRET = 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ';

test('base32 decodes the RFC secret', () => {
  assert.equal(base32Decode(SECRET).toString('ascii'), '12345678901234567890');
});

test('RFC 6238 vectors', () => {
  const vectors = [
    [59, '287082'],
    [1111111109, '081804'],
    [1111111111, '050471'],
    [1234567890, '005924'],
    [2000000000, '279037'],
  ];
  for (const [t, code] of vectors) {
    assert.equal(totpAt(SECRET, Math.floor(t / 30)), code, `T=${t}`);
  }
});

test('verify accepts one step of drift and nothing more', () => {
  const now = 1111111111 * 1000;
  assert.equal(verifyTotp(SECRET, '050471', now), true);
  assert.equal(verifyTotp(SECRET, totpAt(SECRET, Math.floor(now / 30000) + 1), now), true);
  assert.equal(verifyTotp(SECRET, totpAt(SECRET, Math.floor(now / 30000) + 2), now), false);
  assert.equal(verifyTotp(SECRET, '', now), false);
  assert.equal(verifyTotp(SECRET, '05047', now), false);
});
