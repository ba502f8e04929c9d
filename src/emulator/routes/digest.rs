//! The `Digest` header (RFC 3230) that part uploads and commits carry.
use base64::Engine;

use super::super::errors::BoxApiError;

/// RFC 3230 `Digest`: `sha=` (any case) is required, `sha-256=` is checked when sent.
#[derive(Debug, Default, PartialEq)]
pub struct PartDigest {
    pub sha1: Option<[u8; 20]>,
    pub sha256: Option<[u8; 32]>,
}

impl PartDigest {
    pub fn parse(v: &str) -> Result<Self, BoxApiError> {
        let mut d = PartDigest::default();
        for item in v.split(',') {
            let Some((alg, value)) = item.trim().split_once('=') else {
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| bad_digest_header())?;
            match alg.to_ascii_lowercase().as_str() {
                "sha" => d.sha1 = Some(bytes.try_into().map_err(|_| bad_digest_header())?),
                "sha-256" => d.sha256 = Some(bytes.try_into().map_err(|_| bad_digest_header())?),
                _ => {}
            }
        }
        Ok(d)
    }
}

fn bad_digest_header() -> BoxApiError {
    BoxApiError::bad_request("Digest header is malformed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_takes_sha_in_any_case_and_sha256() {
        let d = PartDigest::parse(
            "SHA=2jmj7l5rSw0yVb/vlWAYkK/YBwk=, sha-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        )
        .unwrap();
        assert_eq!(
            hex::encode(d.sha1.unwrap()),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert!(d.sha256.is_some());
        assert!(PartDigest::parse("sha=notbase64!").is_err());
    }
}
