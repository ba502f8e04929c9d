//! Every key the gateway writes in the state store, in one place: the schema an operator sizes
//! Redis's memory for. Redis puts `box-upload-gateway:` before each of them (`redis.rs`).
//!
//! | key | what | lives until |
//! | --- | --- | --- |
//! | `tus:<id>` | a tus upload's record (JSON behind its length) | its expiry + an hour |
//! | `tus:<id>:pending` | the upload's unfinished part (bytes) | it goes with its record |
//! | `tus:<id>:pending:accounts` | the accounts the part counts under, one a line | it goes with the part |
//! | `link-files:<link id>` | the uploads made through a link with `max_files` (an owner's set) | the link's expiry |
//! | `link-revoked:<key name>:<link id>` | a link its key revoked | `upload_link_max_expiry_secs` |
//! | `idem:<owner>:<digest>` | an `Idempotency-Key`'s fingerprint and kept answer | `idempotency_window_secs` |
//! | `idem:<owner>:<digest>:claim` | the claim while its upload runs (a lock) | `idempotency_claim_secs`, extended |
//! | `quota:<quota>:<key name>` | a key's own quota, and its links made or revoked (`upload_links`) (GCRA state) | while it matters |
//! | `pace:<digest>` | a Box principal's rate state, shared by the replicas | while it matters |
//! | `webhook-lease:<event id>` | a delivery under way (a lock) | `webhook_timeout_secs` + 30 s |
//! | `webhook-gone:<digest of the URL>` | a receiver that answered 410 | a day |
//!
//! Kept by the stores themselves: `lock:<key>` (a lock on `<key>`, Redis), `open:<owner>` (an owner's
//! open tus uploads, scored by expiry), `expiry` (the sweeper's index), `pending-bytes` and
//! `pending-bytes:<account>` (the bytes of all unfinished parts, and of an account's: deleted at
//! zero, no TTL, like the parts they count), and the outbox: `outbox:e:<event id>` (an event, its
//! lane and source; `webhook_max_age_secs` + an hour), `outbox-lanes`, `outbox-due:<lane>`,
//! `outbox-created`, `outbox-expiry` and `outbox-source:<key>` (indexes and counts, living as long as
//! their newest event), and, until the delivery worker has moved them, an older gateway's `outbox`,
//! `outbox-due` and `outbox-age` (no TTL). Owners are `Owner`'s stored form (`access/caller.rs`).

/// A tus upload's record.
pub fn tus_record(id: &str) -> String {
    format!("tus:{id}")
}

/// A tus upload's unfinished part, kept apart from its record.
pub fn tus_pending(id: &str) -> String {
    format!("tus:{id}:pending")
}

/// The accounts an unfinished part (`tus_pending(..)`) counts under, kept beside it by the stores.
pub fn pending_accounts(pending_key: &str) -> String {
    format!("{pending_key}:accounts")
}

/// The set (an owner of `StateStore::open_upload`) of the uploads made through a link with `max_files`.
pub fn link_files(link_id: &str) -> String {
    format!("link-files:{link_id}")
}

/// A link revoked by its key (`DELETE /v1/upload-links/{id}`): under the key's name, so a key revokes
/// only its own links.
pub fn link_revoked(key_name: &str, link_id: &str) -> String {
    format!("link-revoked:{key_name}:{link_id}")
}

/// An `Idempotency-Key`, by the owner that sent it (`Owner`'s stored form) and the digest of the key.
pub fn idempotency(owner: &str, digest_hex: &str) -> String {
    format!("idem:{owner}:{digest_hex}")
}

/// The claim on an `Idempotency-Key` (`idempotency(..)`) while its upload runs.
pub fn idempotency_claim(idempotency_key: &str) -> String {
    format!("{idempotency_key}:claim")
}

/// A key's own quota (`uploads_per_minute`, `bytes_per_day`).
pub fn quota(quota: &str, key_name: &str) -> String {
    format!("quota:{quota}:{key_name}")
}

/// A Box principal's rate state (`digest_hex`: a digest of the principal, never a token).
pub fn pace(digest_hex: &str) -> String {
    format!("pace:{digest_hex}")
}

/// The lease of one webhook delivery.
pub fn webhook_lease(event_id: &str) -> String {
    format!("webhook-lease:{event_id}")
}

/// A receiver that answered 410 (`url_digest_hex`: SHA-256 of its URL).
pub fn webhook_gone(url_digest_hex: &str) -> String {
    format!("webhook-gone:{url_digest_hex}")
}
