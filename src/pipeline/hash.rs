//! Both SHA-1 chains of a chunked upload in one pass over the bytes.
//!
//! Every byte is hashed twice: into its part's digest (`Digest` of the part upload) and into the
//! whole file's (the commit's). When every part so far was a multiple of 64 bytes long (Box's part
//! sizes are 8, 32 or 64 MiB in practice), both chains consume the very same 64-byte blocks; only
//! their states differ. With the x86 SHA extensions one chain is latency-bound (each `sha1rnds4`
//! waits for the one before), so two chains interleaved over the same block, sharing the message
//! schedule, cost little more than one chain instead of 2 (measured on an AMD EPYC and an Intel Xeon:
//! 0.5 to 0.6 times the CPU of two passes of the `sha1` crate, see docs/benchmark.md).
//!
//! Where the lanes are not block-aligned with each other (a part size that is not a multiple of 64),
//! or the CPU lacks the extensions, each lane is compressed on its own by the `sha1` crate's
//! `compress` (which picks SHA-NI or its portable code at run time), exactly as two separate hashers.
//!
//! One chain is a `ResumableSha1`: its state is plain data, so a resumable (tus) upload's whole-file
//! digest lives in the state store between PATCHes and any replica takes it up again (`TwinSha1::resume`).
//! sha1 0.10's `Sha1` does not expose its state (digest 0.10 has no `SerializableState`), hence the
//! crate's block function (`compress` feature) and the standard padding here, checked against `Sha1`.
use serde::{Deserialize, Serialize};
use sha1::digest::core_api::Block;
use sha1::Sha1Core;

const BLOCK: usize = 64;
/// FIPS 180-4, 5.3.1.
const IV: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];

/// The whole file's SHA-1 and each part's, from bytes given once.
///
/// `update` feeds the next bytes of the file; `finish_part` ends the current part (the bytes since
/// the previous `finish_part`) and returns its digest; `finalize` returns the whole file's.
#[derive(Clone)]
pub struct TwinSha1 {
    whole: ResumableSha1,
    part: ResumableSha1,
    /// Present when the CPU has the SHA extensions: the lanes may then be fused.
    sha_ni: Option<x86::ShaNi>,
}

impl Default for TwinSha1 {
    fn default() -> Self {
        Self::new()
    }
}

impl TwinSha1 {
    /// Fused when the CPU has the SHA extensions (detected at run time), two plain chains otherwise.
    pub fn new() -> Self {
        Self::resume(ResumableSha1::default())
    }

    /// Goes on with a whole-file chain kept from earlier bytes (a resumable upload's), with a new part.
    pub fn resume(whole: ResumableSha1) -> Self {
        Self {
            whole,
            part: ResumableSha1::default(),
            sha_ni: x86::ShaNi::detect(),
        }
    }

    /// Never fused: two independent chains, as on a CPU without the SHA extensions.
    pub fn portable() -> Self {
        Self {
            sha_ni: None,
            ..Self::new()
        }
    }

    /// Whether blocks shared by both lanes go through the fused two-lane compression.
    pub fn is_fused(&self) -> bool {
        self.sha_ni.is_some()
    }

    pub fn update(&mut self, data: &[u8]) {
        let aligned = self.whole.buffered() == self.part.buffered();
        let Some(sha_ni) = self.sha_ni.as_ref().filter(|_| aligned) else {
            self.whole.update(data);
            self.part.update(data);
            return;
        };
        // Both lanes hold the same bytes of an unfinished block (part boundaries so far fell on block
        // boundaries): feed the whole file's lane, every full block compressed once for both, and
        // give the part's lane the same unfinished block.
        let (whole, part) = (&mut self.whole, &mut self.part);
        whole.feed(data, |state, blocks| {
            sha_ni.compress_twin(state, &mut part.state, blocks)
        });
        part.len += data.len() as u64;
        part.buf = whole.buf;
    }

    /// The digest of the current part; the next `update` starts the next part.
    pub fn finish_part(&mut self) -> [u8; 20] {
        std::mem::take(&mut self.part).finalize()
    }

    /// The digest of every byte given.
    pub fn finalize(self) -> [u8; 20] {
        self.whole.finalize()
    }

    /// The whole-file chain, to be kept and resumed (the current part's bytes are in it too).
    pub fn into_whole(self) -> ResumableSha1 {
        self.whole
    }
}

/// One SHA-1 chain whose state is plain data: the five words, the bytes of an unfinished block, and
/// the length so far. Stored (serde) as `{"state", "len", "tail"}`, `tail` the unfinished block's
/// bytes; a stored state whose tail does not match its length is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "Stored", try_from = "Stored")]
pub struct ResumableSha1 {
    state: [u32; 5],
    buf: [u8; BLOCK],
    len: u64,
}

impl Default for ResumableSha1 {
    fn default() -> Self {
        Self {
            state: IV,
            buf: [0; BLOCK],
            len: 0,
        }
    }
}

/// The same chain: `buf` past the unfinished block's bytes is stale and does not count.
impl PartialEq for ResumableSha1 {
    fn eq(&self, other: &Self) -> bool {
        let k = self.buffered();
        (self.state, self.len) == (other.state, other.len) && self.buf[..k] == other.buf[..k]
    }
}

impl Eq for ResumableSha1 {}

#[derive(Serialize, Deserialize)]
struct Stored {
    state: [u32; 5],
    len: u64,
    tail: Vec<u8>,
}

impl From<ResumableSha1> for Stored {
    fn from(h: ResumableSha1) -> Self {
        Self {
            state: h.state,
            len: h.len,
            tail: h.buf[..h.buffered()].to_vec(),
        }
    }
}

impl TryFrom<Stored> for ResumableSha1 {
    type Error = String;

    fn try_from(s: Stored) -> Result<Self, String> {
        if s.tail.len() as u64 != s.len % BLOCK as u64 {
            return Err(format!(
                "a SHA-1 state of {} bytes with a tail of {}",
                s.len,
                s.tail.len()
            ));
        }
        let mut h = Self {
            state: s.state,
            len: s.len - s.tail.len() as u64,
            ..Self::default()
        };
        h.buffer(&s.tail);
        Ok(h)
    }
}

impl ResumableSha1 {
    /// Bytes held in `buf`, waiting for their block to fill.
    fn buffered(&self) -> usize {
        (self.len % BLOCK as u64) as usize
    }

    /// Appends bytes that do not complete the block.
    fn buffer(&mut self, bytes: &[u8]) {
        let k = self.buffered();
        self.buf[k..k + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn update(&mut self, data: &[u8]) {
        self.feed(data, compress);
    }

    /// Appends `data`: completes the unfinished block, then every full block, each run through
    /// `compress` (with this chain's state), and keeps the rest as the new unfinished block.
    fn feed(&mut self, mut data: &[u8], mut compress: impl FnMut(&mut [u32; 5], &[u8])) {
        let k = self.buffered();
        if k > 0 {
            let n = (BLOCK - k).min(data.len());
            let (head, rest) = data.split_at(n);
            self.buffer(head);
            data = rest;
            if k + n < BLOCK {
                return;
            }
            let block = self.buf;
            compress(&mut self.state, &block);
        }
        let full = data.len() - data.len() % BLOCK;
        let (blocks, tail) = data.split_at(full);
        compress(&mut self.state, blocks);
        self.len += full as u64;
        self.buffer(tail);
    }

    /// SHA-1 padding (FIPS 180-4, 5.1.1): 0x80, zeros, the length in bits as a big-endian u64.
    pub fn finalize(mut self) -> [u8; 20] {
        let k = self.buffered();
        let mut last = [0u8; 2 * BLOCK];
        last[..k].copy_from_slice(&self.buf[..k]);
        last[k] = 0x80;
        let end = if k < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        last[end - 8..end].copy_from_slice(&(self.len * 8).to_be_bytes());
        compress(&mut self.state, &last[..end]);
        let mut out = [0u8; 20];
        for (word, bytes) in self.state.iter().zip(out.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// One chain over whole blocks (`blocks.len()` is a multiple of 64), with the `sha1` crate.
fn compress(state: &mut [u32; 5], blocks: &[u8]) {
    // Copied by 64 blocks into the crate's block type on the stack (memcpy is ~8 times faster than
    // SHA-1 here) rather than reinterpreted with `unsafe`.
    let mut batch = [Block::<Sha1Core>::default(); 64];
    for bytes in blocks.chunks(BLOCK * batch.len()) {
        let n = bytes.len() / BLOCK;
        for (slot, block) in batch.iter_mut().zip(bytes.chunks_exact(BLOCK)) {
            slot.copy_from_slice(block);
        }
        sha1::compress(state, &batch[..n]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// Proof that the CPU has the SHA extensions (and the SSE levels the code below uses): only
    /// `detect` makes one.
    #[derive(Clone)]
    pub struct ShaNi(());

    impl ShaNi {
        pub fn detect() -> Option<Self> {
            let present = is_x86_feature_detected!("sha")
                && is_x86_feature_detected!("sse2")
                && is_x86_feature_detected!("ssse3")
                && is_x86_feature_detected!("sse4.1");
            present.then_some(Self(()))
        }

        /// Both chains over the same whole blocks (`blocks.len()` is a multiple of 64).
        pub fn compress_twin(&self, a: &mut [u32; 5], b: &mut [u32; 5], blocks: &[u8]) {
            assert_eq!(blocks.len() % 64, 0);
            // SAFETY: `self` exists only when `detect` found every feature `twin_blocks` enables.
            unsafe { twin_blocks(a, b, blocks) }
        }
    }

    /// Four rounds of one lane: the RustCrypto `sha1` crate's x86 backend, after Intel's "Intel SHA
    /// Extensions" white paper (2013).
    macro_rules! rounds4 {
        ($h0:ident, $h1:ident, $wk:expr, $i:expr) => {
            _mm_sha1rnds4_epu32($h0, _mm_sha1nexte_epu32($h1, $wk), $i)
        };
    }

    /// The next four words of the message schedule; it depends on the block only, not the state, so
    /// both lanes share it.
    macro_rules! schedule {
        ($v0:expr, $v1:expr, $v2:expr, $v3:expr) => {
            _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32($v0, $v1), $v2), $v3)
        };
    }

    /// Four rounds of both lanes (`a`, `b`) on the next schedule words. The two lanes' instructions
    /// are independent, so the CPU overlaps them: one lane alone waits on `sha1rnds4`'s latency.
    macro_rules! schedule_rounds4_twin {
        ($a0:ident, $a1:ident, $b0:ident, $b1:ident, $w0:expr, $w1:expr, $w2:expr, $w3:expr, $w4:expr, $i:expr) => {
            $w4 = schedule!($w0, $w1, $w2, $w3);
            $a1 = rounds4!($a0, $a1, $w4, $i);
            $b1 = rounds4!($b0, $b1, $w4, $i);
        };
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn twin_blocks(a: &mut [u32; 5], b: &mut [u32; 5], blocks: &[u8]) {
        // Byte order: the message words are big-endian.
        let mask = _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0A0B_0C0D_0E0F);
        let load = |s: &[u32; 5]| {
            (
                _mm_set_epi32(s[0] as i32, s[1] as i32, s[2] as i32, s[3] as i32),
                _mm_set_epi32(s[4] as i32, 0, 0, 0),
            )
        };
        let (mut abcd_a, mut e_a) = load(a);
        let (mut abcd_b, mut e_b) = load(b);

        for block in blocks.chunks_exact(64) {
            // SAFETY: four unaligned 16-byte loads within the 64-byte `block`.
            let p = block.as_ptr().cast::<__m128i>();
            let mut w0 = _mm_shuffle_epi8(_mm_loadu_si128(p), mask);
            let mut w1 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), mask);
            let mut w2 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), mask);
            let mut w3 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), mask);
            let mut w4;

            let (mut a0, mut a1) = (abcd_a, _mm_add_epi32(e_a, w0));
            let (mut b0, mut b1) = (abcd_b, _mm_add_epi32(e_b, w0));

            // Rounds 0..20
            a1 = _mm_sha1rnds4_epu32(a0, a1, 0);
            b1 = _mm_sha1rnds4_epu32(b0, b1, 0);
            a0 = rounds4!(a1, a0, w1, 0);
            b0 = rounds4!(b1, b0, w1, 0);
            a1 = rounds4!(a0, a1, w2, 0);
            b1 = rounds4!(b0, b1, w2, 0);
            a0 = rounds4!(a1, a0, w3, 0);
            b0 = rounds4!(b1, b0, w3, 0);
            schedule_rounds4_twin!(a0, a1, b0, b1, w0, w1, w2, w3, w4, 0);

            // Rounds 20..40
            schedule_rounds4_twin!(a1, a0, b1, b0, w1, w2, w3, w4, w0, 1);
            schedule_rounds4_twin!(a0, a1, b0, b1, w2, w3, w4, w0, w1, 1);
            schedule_rounds4_twin!(a1, a0, b1, b0, w3, w4, w0, w1, w2, 1);
            schedule_rounds4_twin!(a0, a1, b0, b1, w4, w0, w1, w2, w3, 1);
            schedule_rounds4_twin!(a1, a0, b1, b0, w0, w1, w2, w3, w4, 1);

            // Rounds 40..60
            schedule_rounds4_twin!(a0, a1, b0, b1, w1, w2, w3, w4, w0, 2);
            schedule_rounds4_twin!(a1, a0, b1, b0, w2, w3, w4, w0, w1, 2);
            schedule_rounds4_twin!(a0, a1, b0, b1, w3, w4, w0, w1, w2, 2);
            schedule_rounds4_twin!(a1, a0, b1, b0, w4, w0, w1, w2, w3, 2);
            schedule_rounds4_twin!(a0, a1, b0, b1, w0, w1, w2, w3, w4, 2);

            // Rounds 60..80
            schedule_rounds4_twin!(a1, a0, b1, b0, w1, w2, w3, w4, w0, 3);
            schedule_rounds4_twin!(a0, a1, b0, b1, w2, w3, w4, w0, w1, 3);
            schedule_rounds4_twin!(a1, a0, b1, b0, w3, w4, w0, w1, w2, 3);
            schedule_rounds4_twin!(a0, a1, b0, b1, w4, w0, w1, w2, w3, 3);
            schedule_rounds4_twin!(a1, a0, b1, b0, w0, w1, w2, w3, w4, 3);

            abcd_a = _mm_add_epi32(abcd_a, a0);
            e_a = _mm_sha1nexte_epu32(a1, e_a);
            abcd_b = _mm_add_epi32(abcd_b, b0);
            e_b = _mm_sha1nexte_epu32(b1, e_b);
        }

        let store = |s: &mut [u32; 5], abcd: __m128i, e: __m128i| {
            *s = [
                _mm_extract_epi32(abcd, 3) as u32,
                _mm_extract_epi32(abcd, 2) as u32,
                _mm_extract_epi32(abcd, 1) as u32,
                _mm_extract_epi32(abcd, 0) as u32,
                _mm_extract_epi32(e, 3) as u32,
            ]
        };
        store(a, abcd_a, e_a);
        store(b, abcd_b, e_b);
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    /// No SHA extensions off x86_64: never made, so the fused path is never taken.
    #[derive(Clone)]
    pub enum ShaNi {}

    impl ShaNi {
        pub fn detect() -> Option<Self> {
            None
        }

        pub fn compress_twin(&self, _: &mut [u32; 5], _: &mut [u32; 5], _: &[u8]) {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    fn sha1(data: &[u8]) -> [u8; 20] {
        Sha1::digest(data).into()
    }

    /// Hashes `data` cut into parts of `part_size`, fed in pieces ending at `cuts`; checks every
    /// part's digest and the whole file's against the `sha1` crate.
    fn check(mut hasher: TwinSha1, data: &[u8], part_size: usize, cuts: &[usize]) {
        let mut expected_parts = Vec::new();
        let mut parts = Vec::new();
        let mut fed = 0;
        for part in data.chunks(part_size.max(1)) {
            let end = fed + part.len();
            // The pieces the caller hands over: cut at `cuts` within this part.
            let mut points: Vec<usize> = cuts.iter().copied().filter(|c| *c > fed && *c < end).collect();
            points.sort_unstable();
            points.push(end);
            for point in points {
                hasher.update(&data[fed..point]);
                fed = point;
            }
            parts.push(hasher.finish_part());
            expected_parts.push(sha1(part));
        }
        assert_eq!(parts, expected_parts);
        assert_eq!(hasher.finalize(), sha1(data));
    }

    fn both() -> [TwinSha1; 2] {
        [TwinSha1::new(), TwinSha1::portable()]
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn fused_where_the_cpu_allows() {
        assert_eq!(TwinSha1::new().is_fused(), is_x86_feature_detected!("sha"));
        assert!(!TwinSha1::portable().is_fused());
    }

    /// FIPS 180-2 appendix A and the NIST example of a million `a`s, as one part each.
    #[test]
    fn fips_vectors() {
        let million = vec![b'a'; 1_000_000];
        let vectors: [(&[u8], &str); 4] = [
            (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            ),
            (&million, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
            (b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ];
        for hasher in both() {
            let mut hasher = hasher;
            for (input, digest) in vectors {
                hasher.update(input);
                assert_eq!(hex::encode(hasher.finish_part()), digest);
            }
        }
        for (input, digest) in vectors {
            for mut hasher in both() {
                for piece in input.chunks(7) {
                    hasher.update(piece);
                }
                assert_eq!(hex::encode(hasher.finalize()), digest);
            }
        }
    }

    /// Lengths around the padding's edges (55, 56, 63, 64, 119, 120 bytes ...).
    #[test]
    fn padding_edges() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for len in 0..data.len() {
            for hasher in both() {
                check(hasher, &data[..len], 64, &[1, 55, 56, 63, 65, 128, 200]);
            }
        }
    }

    /// A part size that is not a multiple of 64 puts the lanes out of step: they go on separately.
    #[test]
    fn unaligned_part_sizes() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
        for part_size in [1, 63, 65, 100, 1000, 4097] {
            for hasher in both() {
                check(hasher, &data, part_size, &[3, 64, 640, 641, 3000]);
            }
        }
    }

    /// A tus upload: the whole-file chain stored (as the state store keeps it) after each PATCH and
    /// resumed by the next, parts hashed beside it.
    #[test]
    fn resumed_from_a_stored_state() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + (i >> 5)) as u8).collect();
        for part_size in [640, 1000] {
            let mut whole = ResumableSha1::default();
            for patch in data.chunks(part_size * 3) {
                let mut hasher = TwinSha1::resume(whole);
                for part in patch.chunks(part_size) {
                    hasher.update(part);
                    assert_eq!(hasher.finish_part(), sha1(part));
                }
                whole = serde_json::from_slice(&serde_json::to_vec(&hasher.into_whole()).unwrap()).unwrap();
            }
            assert_eq!(whole.finalize(), sha1(&data));
        }
    }

    /// The stored form is the one tus uploads in a state store were written with; a tail that does
    /// not match the length is refused.
    #[test]
    fn stored_form() {
        let mut h = ResumableSha1::default();
        h.update(b"abc");
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["len"], 3);
        assert_eq!(json["tail"], serde_json::json!([97, 98, 99]));
        assert_eq!(serde_json::from_value::<ResumableSha1>(json.clone()).unwrap(), h);
        let mut bad = json;
        bad["len"] = 4.into();
        assert!(serde_json::from_value::<ResumableSha1>(bad).is_err());
        // 70 bytes in two pieces: the first block's bytes stay in `buf` after the 6 of the next.
        let mut h = ResumableSha1::default();
        h.update(&[1; 60]);
        h.update(&[2; 10]);
        let stored = serde_json::to_vec(&h).unwrap();
        assert_eq!(serde_json::from_slice::<ResumableSha1>(&stored).unwrap(), h);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn matches_the_sha1_crate(
            data in proptest::collection::vec(any::<u8>(), 0..20_000),
            blocks_per_part in 1usize..80,
            odd in 0usize..64,
            unaligned in any::<bool>(),
            cuts in proptest::collection::vec(0usize..20_000, 0..24),
        ) {
            // Mostly multiples of 64 (the fused path), sometimes not (the lanes apart).
            let part_size = blocks_per_part * 64 + if unaligned { odd } else { 0 };
            for hasher in both() {
                check(hasher, &data, part_size, &cuts);
            }
        }

        #[test]
        fn one_chain_across_splits_and_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
        ) {
            let mut h = ResumableSha1::default();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..cut]);
                at = cut;
                h = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
            }
            prop_assert_eq!(h.finalize(), sha1(&data));
        }
    }
}
