//! Cuts a byte stream into parts of exact sizes without copying: a part is a list of shared slices
//! of the chunks as they arrived, split where a part boundary falls inside a chunk.
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// One part: the slices of the input that make it, in order.
#[derive(Debug, Default)]
pub struct Part {
    pub chunks: Vec<Bytes>,
    pub len: usize,
}

pub struct Rechunker<S> {
    stream: S,
    leftover: Option<Bytes>,
    ended: bool,
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

    /// `next_part`, showing each chunk to `seen` as it arrives.
    pub async fn next_part_seen(&mut self, len: usize, mut seen: impl FnMut(&[u8])) -> Result<Part, E> {
        let mut part = Part::default();
        while part.len < len {
            let Some(mut chunk) = self.next_chunk().await? else {
                break;
            };
            let want = len - part.len;
            if chunk.len() > want {
                self.leftover = Some(chunk.split_off(want));
            }
            seen(&chunk);
            part.len += chunk.len();
            part.chunks.push(chunk);
        }
        Ok(part)
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
}
