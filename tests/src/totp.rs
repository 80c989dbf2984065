//! One-time codes as an authenticator app shows them, for the lab's scripted and browser logins.

/// The current RFC 6238 code (HMAC-SHA-1, 6 digits, 30 s steps), as an authenticator app
/// shows it.
pub fn totp_now(secret_b32: &str) -> String {
    use hmac::Mac;
    let Some(secret) = base32_decode(secret_b32) else {
        return String::new();
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&secret) else {
        return String::new();
    };
    mac.update(&(crate::now_ms() / 1000 / 30).to_be_bytes());
    let h = mac.finalize().into_bytes();
    // RFC 4226 section 5.3 dynamic truncation.
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    format!("{:06}", bin % 1_000_000)
}

/// RFC 4648 base32 (no padding required), as TOTP secrets are written.
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in s
        .trim_end_matches('=')
        .bytes()
        .filter(|c| !c.is_ascii_whitespace())
    {
        let idx = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())? as u32;
        value = (value << 5) | idx;
        bits += 5;
        if bits >= 8 {
            out.push((value >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap(), b"foobar");
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert!(base32_decode("1").is_none());
    }
}
