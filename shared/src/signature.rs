//! Webhook signatures: `hex(HMAC-SHA256(WEBHOOK_SECRET, raw body bytes))`, as
//! the older token provider computed them (CONTRACTS.md), carried in
//! `X-Signature` on outbound calls and checked by `POST /webhook/verify`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The lower-case hex signature of `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex, either case) is `body`'s, compared in constant
/// time (`Mac::verify_slice`), so the time taken tells nothing about how many
/// leading bytes matched. Anything that is not 64 hex digits is simply wrong.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(expected) = hex::decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn wrong_tampered_and_malformed_signatures_fail() {
        let good = sign(b"k", b"{\"a\":1}");
        assert!(verify(b"k", b"{\"a\":1}", &good));
        assert!(verify(b"k", b"{\"a\":1}", &good.to_uppercase()));
        assert!(!verify(b"other", b"{\"a\":1}", &good));
        assert!(!verify(b"k", b"{\"a\":2}", &good));
        assert!(!verify(b"k", b"{\"a\":1}", &good[..62]));
        assert!(!verify(b"k", b"{\"a\":1}", "not hex"));
        assert!(!verify(b"k", b"{\"a\":1}", ""));
    }
}
