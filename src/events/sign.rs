//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, "Signature scheme"): the secret
//! is `whsec_<base64 key>`; the signature is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! one per secret, space-separated, so a receiver that knows either secret of a rotation accepts.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

const PREFIX: &str = "whsec_";
/// The shortest key accepted, in bytes after base64 decoding: Standard Webhooks' secrets are 24 to 64
/// bytes ("Signature scheme"); a shorter HMAC key can be guessed offline from one signed event.
pub const MIN_KEY_BYTES: usize = 24;

/// The keys of a `webhook_secret` value: whitespace-separated `whsec_<base64>` secrets. Errors
/// never repeat a secret, only its position.
pub fn parse_secrets(value: &Secret) -> Result<Vec<Secret>, String> {
    let mut keys = Vec::new();
    for (i, word) in value.expose().split_whitespace().enumerate() {
        let encoded = word
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("secret {} does not start with {PREFIX}", i + 1))?;
        let key = B64
            .decode(encoded)
            .map_err(|_| format!("secret {} is not {PREFIX}<base64>", i + 1))?;
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "secret {} is {} bytes; at least {MIN_KEY_BYTES} are needed (32 random bytes, base64)",
                i + 1,
                key.len()
            ));
        }
        // The key's bytes are held as base64 text so they stay behind the redacted type.
        keys.push(Secret::new(B64.encode(key)));
    }
    if keys.is_empty() {
        return Err("no secret given".into());
    }
    Ok(keys)
}

/// The `webhook-signature` header's value for one message, signed by each key.
pub fn signature(keys: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let raw = B64.decode(key.expose()).unwrap_or_default();
            let mut mac = Hmac::<Sha256>::new_from_slice(&raw).expect("HMAC takes a key of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specifications_example() {
        // The example of the Standard Webhooks reference libraries' tests.
        let keys = parse_secrets(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&keys, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn each_secret_of_a_rotation_signs() {
        let (a, b) = (B64.encode([b'a'; 24]), B64.encode([b'b'; 32]));
        let keys = parse_secrets(&Secret::new(format!("whsec_{a}  whsec_{b}\n"))).unwrap();
        let sig = signature(&keys, "id", 1, b"{}");
        let parts: Vec<_> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(parts[0], signature(&keys[..1], "id", 1, b"{}"));
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        for bad in ["", "  ", "abc", "whsec_!!!", "whsec_"] {
            let err = parse_secrets(&Secret::new(bad)).unwrap_err();
            assert!(bad.trim().is_empty() || !err.contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn keys_shorter_than_24_bytes_are_refused() {
        // `whsec_YQ==` is one byte: an HMAC key anyone can guess from one signed event.
        let err = parse_secrets(&Secret::new("whsec_YQ==")).unwrap_err();
        assert!(err.contains("1 bytes") && err.contains("24"), "{err}");
        let short = B64.encode([7u8; 23]);
        assert!(parse_secrets(&Secret::new(format!("whsec_{short}"))).is_err());
        let enough = B64.encode([7u8; 24]);
        assert!(parse_secrets(&Secret::new(format!("whsec_{enough}"))).is_ok());
        // One short secret of a rotation is enough to refuse the whole value.
        let err = parse_secrets(&Secret::new(format!("whsec_{enough} whsec_YQ=="))).unwrap_err();
        assert!(err.starts_with("secret 2 "), "{err}");
        assert!(!err.contains("YQ=="), "{err}");
    }
}
