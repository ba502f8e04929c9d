//! Cuts a byte stream into parts of exact sizes. Large pieces are kept as shared slices of the chunks
//! as they arrived (no copy), split where a part boundary falls inside a chunk; small pieces are
//! copied into a buffer the part owns, so a part is made of few pieces whatever the client's chunking.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// Pieces shorter than this are copied; longer ones are kept as slices of the buffer they came in.
///
/// Why copy: a slice keeps the whole buffer it was cut from alive, and costs a `Bytes` (32 bytes) in
/// the part's list. A body sent in 1-byte HTTP chunks arrives as 1-byte slices of actix-http's read
/// buffer: kept as they were, 40 MiB of them held about 1 GiB (issue 15). And a slice of any size pins
/// that whole buffer (up to about 256 KiB: actix-http stops reading at 128 KiB unparsed and doubles
/// its capacity), so a client alternating 64 KiB chunks with tiny ones made each kept slice pin up to
/// 4 times its length. Why 1 MiB: it is above any piece actix-http hands out, so every byte of an HTTP
/// body is copied once into buffers the part owns, and a part holds exactly its own bytes whatever the
/// client's chunking. The copy (memcpy, about 14 GB/s) is a few percent of the hashing that follows
/// (`bench/run --only cpu`); slices are kept only from streams that make large pieces of their own.
pub const COPY_BELOW_BYTES: usize = 1024 * 1024;
/// The part's copy buffers are allocated this big (or the rest of the part, if less): a part of
/// `n` bytes is at most `n / 1 MiB` slices plus `n / 256 KiB + 1` buffers (plus one buffer per
/// slice, in the rare body that alternates), and no allocation per piece.
const COPY_BUFFER_BYTES: usize = 256 * 1024;
/// Copied bytes are shown to `seen` in runs of about this many, while still in cache, rather than
/// one call per tiny piece.
const SEEN_RUN_BYTES: usize = 32 * 1024;

/// One part: its pieces, in order (shared: each Box attempt streams them without copying the list).
#[derive(Debug, Clone)]
pub struct Part {
    pub chunks: Arc<[Bytes]>,
    pub len: usize,
}

impl Default for Part {
    fn default() -> Self {
        Self {
            chunks: Arc::new([]),
            len: 0,
        }
    }
}

pub struct Rechunker<S> {
    stream: S,
    leftover: Option<Bytes>,
    ended: bool,
}

/// The copies of a part's small pieces: one buffer filled in place, frozen into a piece of the part
/// when a slice comes between (the rest of its room stays for the next small pieces).
struct Copies {
    buf: BytesMut,
    /// `buf[..seen]` has been shown to `seen`.
    seen: usize,
}

impl Copies {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            seen: 0,
        }
    }

    /// Copies `piece`; `room`: the bytes the part still wants, `piece` included.
    fn push(&mut self, mut piece: &[u8], room: usize, pieces: &mut Vec<Bytes>, seen: &mut impl FnMut(&[u8])) {
        let mut room = room;
        while !piece.is_empty() {
            let free = self.buf.capacity() - self.buf.len();
            if free == 0 {
                self.flush(pieces, seen);
                self.buf = BytesMut::with_capacity(COPY_BUFFER_BYTES.min(room));
                continue;
            }
            let n = free.min(piece.len());
            self.buf.extend_from_slice(&piece[..n]);
            piece = &piece[n..];
            room -= n;
        }
        if self.buf.len() - self.seen >= SEEN_RUN_BYTES {
            seen(&self.buf[self.seen..]);
            self.seen = self.buf.len();
        }
    }

    /// Shows what is not shown yet and freezes the copies into a piece of the part.
    fn flush(&mut self, pieces: &mut Vec<Bytes>, seen: &mut impl FnMut(&[u8])) {
        if self.buf.len() > self.seen {
            seen(&self.buf[self.seen..]);
        }
        if !self.buf.is_empty() {
            pieces.push(self.buf.split().freeze());
        }
        self.seen = 0;
    }
}

impl<S, E> Rechunker<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            leftover: None,
            ended: false,
        }
    }

    /// The next `len` bytes; shorter only when the stream ends first.
    pub async fn next_part(&mut self, len: usize) -> Result<Part, E> {
        self.next_part_seen(len, |_| ()).await
    }

    /// `next_part`, showing the part's bytes to `seen` in order as they arrive (a large chunk as it
    /// is, small ones in runs of their copies).
    pub async fn next_part_seen(&mut self, len: usize, seen: impl FnMut(&[u8])) -> Result<Part, E> {
        self.next_part_charged(len, seen, async |_| Ok::<(), E>(())).await
    }

    /// `next_part_seen`, each piece `charge`d as it joins the part, before the next one is read: the
    /// memory budget's backpressure (`budget.rs`). What is read past the part's end (the rest of a
    /// chunk that straddles it) is charged when it joins the next part.
    pub async fn next_part_charged<X>(
        &mut self,
        len: usize,
        mut seen: impl FnMut(&[u8]),
        mut charge: impl AsyncFnMut(usize) -> Result<(), X>,
    ) -> Result<Part, X>
    where
        E: Into<X>,
    {
        let mut pieces = Vec::new();
        let mut copies = Copies::new();
        let mut filled = 0;
        while filled < len {
            let Some(mut chunk) = self.next_chunk().await.map_err(Into::into)? else {
                break;
            };
            let want = len - filled;
            if chunk.len() > want {
                self.leftover = Some(chunk.split_off(want));
            }
            charge(chunk.len()).await?;
            filled += chunk.len();
            if chunk.len() < COPY_BELOW_BYTES {
                copies.push(&chunk, want, &mut pieces, &mut seen);
            } else {
                copies.flush(&mut pieces, &mut seen);
                seen(&chunk);
                pieces.push(chunk);
            }
        }
        copies.flush(&mut pieces, &mut seen);
        Ok(Part {
            chunks: pieces.into(),
            len: filled,
        })
    }

    /// Whether the stream is exhausted; a byte still to come stays for the next part.
    pub async fn is_at_end(&mut self) -> Result<bool, E> {
        match self.next_chunk().await? {
            Some(chunk) => {
                self.leftover = Some(chunk);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Reads and drops the rest of the stream, counting its bytes.
    pub async fn drain(&mut self) -> Result<u64, E> {
        let mut n = 0;
        while let Some(chunk) = self.next_chunk().await? {
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, E> {
        if let Some(chunk) = self.leftover.take() {
            return Ok(Some(chunk));
        }
        while !self.ended {
            match self.stream.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => return Ok(Some(chunk)),
                Some(Err(e)) => return Err(e),
                None => self.ended = true,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use proptest::prelude::*;
    use std::convert::Infallible;

    fn split(data: &[u8], sizes: &[usize]) -> Vec<Result<Bytes, Infallible>> {
        let mut out = Vec::new();
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .clamp(1, rest.len());
            out.push(Ok(Bytes::copy_from_slice(&rest[..n])));
            rest = &rest[n..];
            i += 1;
        }
        out
    }

    async fn cut(input: Vec<Result<Bytes, Infallible>>, part_size: usize) -> Vec<Vec<u8>> {
        let mut r = Rechunker::new(stream::iter(input));
        let mut parts = Vec::new();
        loop {
            // What `seen` is shown is the part's bytes, no more (a leftover waits for the next).
            let mut seen = Vec::new();
            let part = r
                .next_part_seen(part_size, |c| seen.extend_from_slice(c))
                .await
                .unwrap();
            if part.len == 0 {
                break;
            }
            assert_eq!(part.len, part.chunks.iter().map(Bytes::len).sum::<usize>());
            // Few pieces whatever the split: slices of at least COPY_BELOW_BYTES, a copy buffer
            // frozen before each, and full copy buffers.
            let bound = 2 * part.len / COPY_BELOW_BYTES + part.len / COPY_BUFFER_BYTES + 2;
            assert!(
                part.chunks.len() <= bound,
                "{} pieces for {} bytes",
                part.chunks.len(),
                part.len
            );
            assert_eq!(seen, part.chunks.concat());
            parts.push(seen);
        }
        parts
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn one_byte_pieces() {
        let data: Vec<u8> = (0..=255).collect();
        let parts = run(cut(split(&data, &[1]), 100));
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 56]);
        assert_eq!(parts.concat(), data);
    }

    #[test]
    fn tiny_pieces_make_few_pieces_per_part() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for size in [1, 7, 1024] {
            let mut r = Rechunker::new(stream::iter(split(&data, &[size])));
            let mut seen = Vec::new();
            let part = run(r.next_part_seen(1_000_000, |c| seen.extend_from_slice(c))).unwrap();
            assert_eq!(part.len, 1_000_000);
            // 1,000,000 bytes in copy buffers of 256 KiB.
            assert!(part.chunks.len() <= 4, "{size}: {} pieces", part.chunks.len());
            assert_eq!(part.chunks.concat(), &data[..1_000_000]);
            assert_eq!(seen, &data[..1_000_000]);
        }
    }

    #[test]
    fn large_pieces_stay_slices_of_what_came() {
        let big = Bytes::from(vec![5u8; 3 * COPY_BELOW_BYTES]);
        let input = vec![
            Ok::<_, Infallible>(Bytes::from_static(b"ab")),
            Ok(big.clone()),
            Ok(Bytes::from_static(b"cd")),
        ];
        let part = run(Rechunker::new(stream::iter(input)).next_part(usize::MAX)).unwrap();
        assert_eq!(part.chunks.len(), 3);
        assert_eq!(part.chunks[1].as_ptr(), big.as_ptr());
        assert_eq!(&part.chunks[0][..], b"ab");
        assert_eq!(&part.chunks[2][..], b"cd");
    }

    #[test]
    fn pieces_straddling_boundaries() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let parts = run(cut(split(&data, &[150, 7, 333]), 100));
        assert!(parts[..9].iter().all(|p| p.len() == 100));
        assert_eq!(parts.len(), 10);
        assert_eq!(parts.concat(), data);
    }

    #[test]
    fn exact_multiple_has_no_empty_tail() {
        let data = vec![7u8; 300];
        let parts = run(cut(split(&data, &[300]), 100));
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn empty_stream_and_empty_chunks() {
        let input = vec![Ok(Bytes::new()), Ok(Bytes::new())];
        assert!(run(cut(input, 10)).is_empty());
        let mut r = Rechunker::new(stream::iter(vec![Ok::<_, Infallible>(Bytes::new())]));
        assert!(run(r.is_at_end()).unwrap());
    }

    #[test]
    fn end_detection_keeps_the_byte() {
        let mut r = Rechunker::new(stream::iter(split(b"abcdef", &[4])));
        run(async {
            assert_eq!(r.next_part(4).await.unwrap().len, 4);
            assert!(!r.is_at_end().await.unwrap());
            assert_eq!(r.next_part(4).await.unwrap().chunks.concat(), b"ef");
            assert!(r.is_at_end().await.unwrap());
        });
    }

    #[test]
    fn errors_pass_through() {
        let input = vec![
            Ok(Bytes::from_static(b"ab")),
            Err("cut"),
            Ok(Bytes::from_static(b"c")),
        ];
        let mut r = Rechunker::new(stream::iter(input));
        assert_eq!(run(r.next_part(5)).unwrap_err(), "cut");
    }

    proptest! {
        #[test]
        fn output_equals_input(data in proptest::collection::vec(any::<u8>(), 0..5000),
                               sizes in proptest::collection::vec(1usize..700, 1..8),
                               part_size in 1usize..900) {
            let parts = run(cut(split(&data, &sizes), part_size));
            if let Some((last, full)) = parts.split_last() {
                prop_assert!(full.iter().all(|p| p.len() == part_size));
                prop_assert!(!last.is_empty() && last.len() <= part_size);
            }
            prop_assert_eq!(parts.concat(), data);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Pieces on both sides of the copy threshold, parts cutting through them.
        #[test]
        fn output_equals_input_with_large_pieces(seed in any::<u8>(),
                                                 len in 0usize..3_000_000,
                                                 sizes in proptest::collection::vec(
                                                     prop_oneof![1usize..2000, 900_000usize..1_300_000], 1..8),
                                                 part_size in prop_oneof![1usize..5000, 500_000usize..1_600_000]) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let parts = run(cut(split(&data, &sizes), part_size));
            if let Some((_, full)) = parts.split_last() {
                prop_assert!(full.iter().all(|p| p.len() == part_size));
            }
            prop_assert_eq!(parts.concat(), data);
        }
    }
}
