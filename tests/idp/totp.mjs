// RFC 6238 TOTP (SHA-1, 6 digits, 30 s steps) check for the test provider's login form.

import crypto from 'node:crypto';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

export function base32Decode(text) {
  const clean = text.replace(/=+$/, '').replace(/\s+/g, '').toUpperCase();
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const idx = ALPHABET.indexOf(ch);
    if (idx < 0) throw new Error('invalid base32 in TOTP secret');
    value = (value << 5) | idx;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

export function totpAt(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return code.toString().padStart(6, '0');
}

// Accepts the current step and one on either side, for clock drift between browser and server.
export function verifyTotp(secret, code, now = Date.now()) {
  if (!/^[0-9]{6}$/.test(code)) return false;
  const step = Math.floor(now / 1000 / 30);
  let ok = false;
  for (const s of [step - 1, step, step + 1]) {
    const want = Buffer.from(totpAt(secret, s));
    // Constant time per candidate; always check all three.
    ok = crypto.timingSafeEqual(want, Buffer.from(code)) || ok;
  }
  return ok;
}
