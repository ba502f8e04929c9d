//! Upload links: tokens the gateway signs (HMAC-SHA256) so that someone without an API key can upload
//! into one folder, as the key that made the link, until it expires. The token carries the key's
//! name, a binding to the key's digest, the folder, the limits, the note and the expiry, and any
//! replica holding the secret checks it; only revocations are stored (`access/links.rs`).
//!
//! A token is `<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "upload-link.v2." + claims))>`.
//! Several secrets may be configured: the first signs, every one verifies (rotation: put the new one
//! first, drop the old one once the links it signed have expired).
//!
//! v2 (this form) added the key binding `d`: a v1 token (no binding) fails the MAC and is refused, so
//! no link outlives a rotation of its key's secret for want of a binding to compare.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Keeps a token signed for one purpose from being taken for another, should the secret be reused.
const CONTEXT: &[u8] = b"upload-link.v2.";
/// The key binding's own context: a binding is never a valid MAC of anything else.
const BINDING_CONTEXT: &[u8] = b"upload-link.key.v2.";
/// A binding is the first 12 bytes of its HMAC (96 bits: a forger cannot guess it, and it keeps the
/// token short). Stored in base64url: 16 characters.
const BINDING_LEN: usize = 12;
/// Above any token the gateway makes: a longer one is refused before any work, and a link whose token
/// would pass it is never issued (`LinkKeys::sign`).
pub const MAX_TOKEN_LEN: usize = 4096;
/// The longest note a link may carry, in characters.
pub const MAX_NOTE_CHARS: usize = 500;
/// The shortest secret accepted: 32 bytes, as many as the MAC.
pub const MIN_SECRET_LEN: usize = 32;

/// What a link allows; the JSON names are short because they travel in the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// Random, names the link in logs and in the browser's storage (not a secret).
    #[serde(rename = "i")]
    pub id: String,
    /// The API key the link's uploads act as.
    #[serde(rename = "k")]
    pub key: String,
    /// Binds the link to the key's secret (`LinkKeys::binding` of the key's SHA-256): once the key's
    /// secret changes, its `sha256` does and the link is refused, even with the key's name kept.
    #[serde(rename = "d")]
    pub key_binding: String,
    #[serde(rename = "f")]
    pub folder_id: String,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub max_file_size_bytes: Option<u64>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Not signed by any of the secrets, altered, or not a token at all.
    Invalid,
    /// Genuine, but past its expiry (carries the claims, for logs and metrics).
    Expired(Box<LinkClaims>),
}

/// The secrets links are signed and checked with.
pub struct LinkKeys {
    secrets: Vec<Secret>,
}

impl LinkKeys {
    /// `secrets` must not be empty (the settings' validation sees to it); the first one signs.
    pub fn new(secrets: Vec<Secret>) -> Option<Self> {
        (!secrets.is_empty()).then_some(Self { secrets })
    }

    fn mac(secret: &Secret, payload: &str) -> HmacSha256 {
        // HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("any key length");
        mac.update(CONTEXT);
        mac.update(payload.as_bytes());
        mac
    }

    /// The token of `claims`; None when it would be longer than `MAX_TOKEN_LEN` (which `verify`
    /// refuses): a link is never issued that its page would then turn away.
    pub fn sign(&self, claims: &LinkClaims) -> Option<String> {
        let json = serde_json::to_vec(claims).expect("claims serialise");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = Self::mac(&self.secrets[0], &payload).finalize().into_bytes();
        let token = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag));
        (token.len() <= MAX_TOKEN_LEN).then_some(token)
    }

    fn binding_with(secret: &Secret, key_digest: &[u8; 32]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("any key length");
        mac.update(BINDING_CONTEXT);
        mac.update(key_digest);
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..BINDING_LEN])
    }

    /// The binding of a new link to the key whose SHA-256 is `key_digest`: a MAC (by the signing
    /// secret), so the token, which its holder can read, says nothing about the key's digest.
    pub fn binding(&self, key_digest: &[u8; 32]) -> String {
        Self::binding_with(&self.secrets[0], key_digest)
    }

    /// Whether `claims` were bound to the key whose SHA-256 is `key_digest`, by any of the secrets
    /// (a link signed before a rotation of `upload_link_secret` was bound by the old one); compared in
    /// constant time, every secret tried.
    pub fn is_bound_to(&self, claims: &LinkClaims, key_digest: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        let given = claims.key_binding.as_bytes();
        self.secrets.iter().fold(false, |ok, s| {
            bool::from(Self::binding_with(s, key_digest).as_bytes().ct_eq(given)) | ok
        })
    }

    /// The claims of a genuine token not expired at `now` (Unix seconds). The signature is checked
    /// first (in constant time, against every secret), so an expired forgery is `Invalid`.
    pub fn verify(&self, token: &str, now: u64) -> Result<LinkClaims, LinkRefusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(LinkRefusal::Invalid);
        }
        let (payload, tag) = token.split_once('.').ok_or(LinkRefusal::Invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| LinkRefusal::Invalid)?;
        let genuine = self.secrets.iter().fold(false, |ok, s| {
            Self::mac(s, payload).verify_slice(&tag).is_ok() | ok
        });
        if !genuine {
            return Err(LinkRefusal::Invalid);
        }
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| LinkRefusal::Invalid)?;
        let claims: LinkClaims = serde_json::from_slice(&json).map_err(|_| LinkRefusal::Invalid)?;
        if claims.expires_at <= now {
            return Err(LinkRefusal::Expired(Box::new(claims)));
        }
        Ok(claims)
    }
}

/// Why a note cannot travel in a link: it is too long, or holds control characters (each would be
/// escaped to six bytes in the token, and a page has no use for them). None: it can.
pub fn note_problem(note: &str) -> Option<String> {
    if note.chars().count() > MAX_NOTE_CHARS {
        return Some(format!("note is longer than {MAX_NOTE_CHARS} characters"));
    }
    if note.chars().any(char::is_control) {
        return Some("note holds control characters (line breaks included); send plain text".into());
    }
    None
}

/// The secrets of `upload_link_secret` (or its file's content): separated by commas or white space.
pub fn parse_secrets(text: &str) -> Vec<Secret> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: u64) -> LinkClaims {
        LinkClaims {
            id: "abc".into(),
            key: "team".into(),
            key_binding: "b".into(),
            folder_id: "123".into(),
            max_file_size_bytes: Some(10),
            max_files: Some(2),
            note: Some("Hello, <b>world</b> \u{e9}".into()),
            expires_at,
        }
    }

    fn keys(secrets: &[&str]) -> LinkKeys {
        LinkKeys::new(secrets.iter().map(|s| Secret::new(*s)).collect()).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_travel_in_a_url() {
        let k = keys(&["first-secret-0123456789abcdef0123"]);
        let token = k.sign(&claims(100)).unwrap();
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(k.verify(&token, 99), Ok(claims(100)));
        assert_eq!(
            k.verify(&token, 100),
            Err(LinkRefusal::Expired(Box::new(claims(100))))
        );
    }

    #[test]
    fn altered_or_foreign_tokens_are_invalid() {
        let k = keys(&["first-secret-0123456789abcdef0123"]);
        let token = k.sign(&claims(100)).unwrap();
        let (payload, tag) = token.split_once('.').unwrap();
        // Another folder, same tag.
        let mut other = claims(100);
        other.folder_id = "999".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        for bad in [
            format!("{forged_payload}.{tag}"),
            format!("{payload}.{}", &tag[1..]),
            format!("{payload}x.{tag}"),
            payload.to_owned(),
            String::new(),
            "a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(k.verify(&bad, 0), Err(LinkRefusal::Invalid), "{bad}");
        }
        // Signed by another secret: invalid, even when expired.
        let stranger = keys(&["another-secret-0123456789abcdef01"]);
        assert_eq!(stranger.verify(&token, 1000), Err(LinkRefusal::Invalid));
    }

    #[test]
    fn rotation_signs_with_the_first_and_accepts_every_one() {
        let old = keys(&["old-secret-0123456789abcdef012345"]);
        let rotated = keys(&[
            "new-secret-0123456789abcdef012345",
            "old-secret-0123456789abcdef012345",
        ]);
        let by_old = old.sign(&claims(100)).unwrap();
        let by_new = rotated.sign(&claims(100)).unwrap();
        assert!(rotated.verify(&by_old, 1).is_ok());
        assert!(rotated.verify(&by_new, 1).is_ok());
        assert_eq!(old.verify(&by_new, 1), Err(LinkRefusal::Invalid));
        assert_eq!(parse_secrets(" a,b\nc  ").len(), 3);
    }

    #[test]
    fn links_are_bound_to_their_keys_digest_by_any_secret() {
        let old = keys(&["old-secret-0123456789abcdef012345"]);
        let rotated = keys(&[
            "new-secret-0123456789abcdef012345",
            "old-secret-0123456789abcdef012345",
        ]);
        let (digest, rotated_key) = ([7u8; 32], [8u8; 32]);
        let mut c = claims(100);
        c.key_binding = old.binding(&digest);
        assert_eq!(c.key_binding.len(), 16);
        assert!(old.is_bound_to(&c, &digest));
        assert!(
            rotated.is_bound_to(&c, &digest),
            "bound by a secret still accepted"
        );
        assert!(!old.is_bound_to(&c, &rotated_key), "the key's secret changed");
        assert!(!keys(&["new-secret-0123456789abcdef012345"]).is_bound_to(&c, &digest));
        // The binding is a MAC: it is not the digest, nor anything derived from it alone.
        assert!(!c.key_binding.contains(&hex::encode(digest)[..8]));
    }

    #[test]
    fn a_token_too_long_for_verify_is_never_signed_and_notes_are_checked() {
        let k = keys(&["first-secret-0123456789abcdef0123"]);
        let mut c = claims(100);
        c.note = Some("\u{1}".repeat(MAX_NOTE_CHARS));
        assert_eq!(
            k.sign(&c),
            None,
            "500 control characters escape past MAX_TOKEN_LEN"
        );
        c.note = Some("\u{10ffff}".repeat(MAX_NOTE_CHARS));
        let token = k.sign(&c).expect("500 four-byte characters still fit");
        assert!(k.verify(&token, 0).is_ok());
        assert!(note_problem(&"\u{1}".repeat(3)).unwrap().contains("control"));
        assert!(note_problem("line\nbreak").is_some());
        assert!(note_problem(&"n".repeat(MAX_NOTE_CHARS + 1))
            .unwrap()
            .contains("longer"));
        assert_eq!(note_problem("Scans <please> \u{e9}"), None);
    }
}
