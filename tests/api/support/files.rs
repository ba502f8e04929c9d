//! Test files and bytes, and their digests.
use std::io::Write;
use std::path::Path;

use base64::Engine;
use sha1::{Digest, Sha1};

/// A file of `size` pseudo-random bytes and its SHA-1 (hex).
pub fn make_file(size: u64) -> (tempfile::NamedTempFile, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut hasher = Sha1::new();
    let mut state = size.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for b in buf[..n].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
    (file, hex::encode(hasher.finalize()))
}

/// `n` deterministic bytes that differ at every offset, another run for another `seed`.
pub fn seeded_bytes(n: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

pub fn sha1_of_path(path: &Path) -> String {
    let mut hasher = Sha1::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

pub fn sha1_raw(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

pub fn sha1_hex(data: &[u8]) -> String {
    hex::encode(sha1_raw(data))
}

/// As tus's `Upload-Checksum` and Box's `Digest: sha=` carry it.
pub fn sha1_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha1_raw(data))
}
