//! A SHA-1 whose state can be stored and taken up again by another process: a resumable (tus)
//! upload's whole-file digest lives in the state store between PATCHes, and any replica may take the
//! next one.
//!
//! sha1 0.10's `Sha1` does not expose or serialize its state (digest 0.10 has no `SerializableState`),
//! but the crate exports its block function (`compress` feature), the same SHA-NI-detecting code the
//! hasher runs. The state is then just the five words, the byte count and the bytes of an unfinished
//! 64-byte block; padding is the standard one (FIPS 180-4, 5.1.1), checked against `Sha1` below.
use serde::{Deserialize, Serialize};

type Block = sha1::digest::core_api::Block<sha1::Sha1Core>;

const BLOCK: usize = 64;
const INIT: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumableSha1 {
    state: [u32; 5],
    /// Bytes hashed so far.
    len: u64,
    /// The bytes of the block not yet full (fewer than 64).
    tail: Vec<u8>,
}

impl Default for ResumableSha1 {
    fn default() -> Self {
        Self {
            state: INIT,
            len: 0,
            tail: Vec::new(),
        }
    }
}

impl ResumableSha1 {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let take = (BLOCK - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < BLOCK {
                return;
            }
            let mut block = Block::default();
            block.copy_from_slice(&self.tail);
            sha1::compress(&mut self.state, &[block]);
            self.tail.clear();
        }
        let (blocks, rest) = data.split_at(data.len() - data.len() % BLOCK);
        // Copied by 64 blocks into a stack buffer (memcpy is ~8 times faster than SHA-1 here) rather
        // than reinterpreted with `unsafe`.
        let mut buf = [Block::default(); 64];
        for batch in blocks.chunks(BLOCK * buf.len()) {
            let n = batch.len() / BLOCK;
            for (slot, block) in buf.iter_mut().zip(batch.chunks_exact(BLOCK)) {
                slot.copy_from_slice(block);
            }
            sha1::compress(&mut self.state, &buf[..n]);
        }
        self.tail.extend_from_slice(rest);
    }

    pub fn finalize(mut self) -> [u8; 20] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let used = (self.tail.len() + 1) % BLOCK;
        pad.resize(1 + (BLOCK + 56 - used) % BLOCK, 0);
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        debug_assert!(self.tail.is_empty() && self.len == len + pad.len() as u64);
        let mut out = [0u8; 20];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    proptest! {
        #[test]
        fn equals_sha1_across_splits_and_a_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600),
                                                       cuts in proptest::collection::vec(0usize..600, 0..6)) {
            let mut h = ResumableSha1::default();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..cut]);
                at = cut;
                // What the state store holds between PATCHes.
                h = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
            }
            prop_assert_eq!(h.finalize(), <[u8; 20]>::from(Sha1::digest(&data)));
        }
    }

    #[test]
    fn block_edges() {
        for n in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1 << 20] {
            let data = vec![0xA5u8; n];
            let mut h = ResumableSha1::default();
            h.update(&data);
            assert_eq!(h.finalize(), <[u8; 20]>::from(Sha1::digest(&data)), "{n}");
        }
    }
}
