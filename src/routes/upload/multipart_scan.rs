//! Finds where the file's bytes start in a raw `multipart/form-data` body, so that a file sent as the
//! last part can take its size from `Content-Length` before its first byte is read:
//! size = Content-Length - offset of the file's data - len("\r\n--" boundary "--\r\n").
//! The figure is checked exactly when the body ends; a body that breaks the assumption (a field
//! after the file, no CRLF after the close delimiter) fails cleanly with `size_mismatch`.
//!
//! Then [`FileData`] cuts the file's bytes out of the raw body without copying them: slices of the
//! chunks as they came off the socket, up to the delimiter that ends the file part. actix-multipart
//! copies every byte into its own buffer and looks at every CR for a boundary: that was 7 % and 5 %
//! of the gateway's CPU per byte (docs/benchmark.md, "What made it cheaper").
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use memchr::memmem::Finder;

#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The file part's data starts at this offset.
    Found(usize),
    /// The body so far ends before the answer is known.
    NeedMore,
    /// No part with a filename before the close delimiter.
    NoFile,
}

/// Bytes after the file's data when it is the last part: CRLF, `--boundary--`, CRLF.
pub fn suffix_len(boundary: &str) -> u64 {
    boundary.len() as u64 + 8
}

/// The scan of a whole body at once (the tests' and the fuzzer's form of [`HeadScan`]).
#[cfg(test)]
pub fn file_data_offset(body: &[u8], boundary: &str) -> Scan {
    HeadScan::new(boundary).scan(body)
}

/// [`file_data_offset`] for a body that arrives in pieces: each call is given the body so far (what
/// the previous call was given, plus what came since) and searches only the new bytes plus an
/// overlap of the sought string's length - 1, so a body in 1-byte pieces costs one pass, not one
/// pass per piece. (The longest string sought is `CRLF--boundary`: RFC 2046 caps a boundary at 70
/// characters, so the overlap is at most 75 bytes.)
pub struct HeadScan {
    /// `--boundary`
    delimiter: Vec<u8>,
    /// `CRLF--boundary`: a delimiter after the first.
    next: Vec<u8>,
    stage: Stage,
    /// Where the current stage's search resumes: no match starts before it.
    from: usize,
}

#[derive(Clone, Copy)]
enum Stage {
    /// The first delimiter (it may follow a preamble).
    First,
    /// A delimiter ends at `after`: `--` there closes the form, anything else starts a part.
    Delimiter { after: usize },
    /// A part whose headers start at `after`, up to a blank line.
    Head { after: usize },
    /// A part without a filename: its content, up to the next delimiter.
    Next,
}

impl HeadScan {
    pub fn new(boundary: &str) -> Self {
        let delimiter = format!("--{boundary}").into_bytes();
        let mut next = b"\r\n".to_vec();
        next.extend_from_slice(&delimiter);
        Self {
            delimiter,
            next,
            stage: Stage::First,
            from: 0,
        }
    }

    /// `body`: the whole body so far, of which the previous calls saw a prefix.
    pub fn scan(&mut self, body: &[u8]) -> Scan {
        loop {
            match self.stage {
                Stage::First => match find(body, &self.delimiter, self.from) {
                    Some(at) => {
                        self.stage = Stage::Delimiter {
                            after: at + self.delimiter.len(),
                        }
                    }
                    None => return self.need_more(body, self.delimiter.len()),
                },
                Stage::Delimiter { after } => {
                    if body.len() < after + 2 {
                        return Scan::NeedMore;
                    }
                    if &body[after..after + 2] == b"--" {
                        return Scan::NoFile;
                    }
                    self.stage = Stage::Head { after };
                    self.from = after;
                }
                Stage::Head { after } => match find(body, b"\r\n\r\n", self.from) {
                    Some(head_end) if has_filename(&body[after..head_end]) => {
                        return Scan::Found(head_end + 4)
                    }
                    Some(head_end) => {
                        self.stage = Stage::Next;
                        self.from = head_end + 4;
                    }
                    None => return self.need_more(body, 4),
                },
                Stage::Next => match find(body, &self.next, self.from) {
                    Some(i) => {
                        self.stage = Stage::Delimiter {
                            after: i + self.next.len(),
                        }
                    }
                    None => return self.need_more(body, self.next.len()),
                },
            }
        }
    }

    /// The sought string (`needle` bytes long) is not in `body`: the next search starts where its
    /// first byte could still be.
    fn need_more(&mut self, body: &[u8], needle: usize) -> Scan {
        self.from = self.from.max(body.len().saturating_sub(needle - 1));
        Scan::NeedMore
    }
}

/// The file part's data, from its first byte to the delimiter (`CRLF--boundary`) that ends it. The
/// rest of the body is never read. A body that ends before that delimiter is an error.
pub struct FileData<S> {
    body: S,
    delimiter: Finder<'static>,
    /// Bytes read but not given out yet: the start of a chunk that may hold the delimiter, or a
    /// chunk's tail that may be the start of a delimiter continued in the next chunk.
    pending: Bytes,
    done: bool,
}

impl<S> FileData<S> {
    /// `body` starts at the file's first data byte.
    pub fn new(body: S, boundary: &str) -> Self {
        Self {
            body,
            delimiter: Finder::new(format!("\r\n--{boundary}").as_bytes()).into_owned(),
            pending: Bytes::new(),
            done: false,
        }
    }
}

impl<S> Stream for FileData<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(end) = this.delimiter.find(&this.pending) {
                this.done = true;
                let data = this.pending.split_to(end);
                this.pending = Bytes::new();
                return Poll::Ready((!data.is_empty()).then_some(Ok(data)));
            }
            // Only a tail that could begin a delimiter must wait for the next chunk.
            let keep = partial_delimiter(&this.pending, this.delimiter.needle());
            if this.pending.len() > keep {
                let data = this.pending.split_to(this.pending.len() - keep);
                return Poll::Ready(Some(Ok(data)));
            }
            match ready!(Pin::new(&mut this.body).poll_next(cx)) {
                Some(Ok(chunk)) if this.pending.is_empty() => this.pending = chunk,
                // Rare (a chunk ending in CR, or in the delimiter's first bytes): the short tail and
                // the next chunk are joined, one copy of one chunk.
                Some(Ok(chunk)) => {
                    let mut joined = BytesMut::with_capacity(this.pending.len() + chunk.len());
                    joined.extend_from_slice(&this.pending);
                    joined.extend_from_slice(&chunk);
                    this.pending = joined.freeze();
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    return Poll::Ready(Some(Err(PayloadError::Incomplete(None))));
                }
            }
        }
    }
}

/// The length of the longest tail of `data` that is a proper prefix of `delimiter`: the bytes that
/// may be the beginning of a delimiter whose rest is still to come.
fn partial_delimiter(data: &[u8], delimiter: &[u8]) -> usize {
    let start = data.len().saturating_sub(delimiter.len() - 1);
    memchr::memchr_iter(delimiter[0], &data[start..])
        .map(|i| start + i)
        .find(|&at| delimiter.starts_with(&data[at..]))
        .map_or(0, |at| data.len() - at)
}

/// Whether a part's headers carry a `filename` or `filename*` parameter in Content-Disposition
/// (a field merely *named* "filename" does not count).
fn has_filename(headers: &[u8]) -> bool {
    let text = String::from_utf8_lossy(headers).to_ascii_lowercase();
    text.split("\r\n")
        .filter(|line| line.trim_start().starts_with("content-disposition:"))
        .any(|line| {
            line.split(';').skip(1).any(|param| {
                let key = param.split('=').next().unwrap_or("").trim();
                key == "filename" || key == "filename*"
            })
        })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ";

    fn body(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (headers, content) in parts {
            out.extend_from_slice(format!("--{B}\r\n{headers}\r\n\r\n{content}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        out
    }

    #[test]
    fn file_after_fields() {
        let b = body(&[
            ("Content-Disposition: form-data; name=\"filename\"", "not a file"),
            ("Content-Disposition: form-data; name=\"size\"", "5"),
            (
                "Content-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain",
                "hello",
            ),
        ]);
        let Scan::Found(offset) = file_data_offset(&b, B) else {
            panic!()
        };
        assert_eq!(&b[offset..offset + 5], b"hello");
        assert_eq!(b.len() as u64 - offset as u64 - suffix_len(B), 5);
    }

    #[test]
    fn extended_filename_and_preamble() {
        let mut b = b"preamble\r\n".to_vec();
        b.extend(body(&[(
            "content-disposition: form-data; name=\"f\"; filename*=UTF-8''%E5%A0%B1.txt",
            "x",
        )]));
        let Scan::Found(offset) = file_data_offset(&b, B) else {
            panic!()
        };
        assert_eq!(b[offset], b'x');
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn file_data(chunks: Vec<&[u8]>) -> (Vec<Bytes>, Option<PayloadError>) {
        let body = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let mut data = FileData::new(body, B);
        let mut out = Vec::new();
        block_on(async {
            while let Some(item) = futures_util::StreamExt::next(&mut data).await {
                match item {
                    Ok(bytes) => out.push(bytes),
                    Err(e) => return (out, Some(e)),
                }
            }
            (out, None)
        })
    }

    #[test]
    fn file_data_ends_at_the_delimiter_however_the_body_is_split() {
        let body = b"ab\r\ncd\r\n--Xy\r\n--XyZ\r\nContent-Disposition: form-data; name=\"after\"\r\n\r\nx\r\n--XyZ--\r\n";
        let file = b"ab\r\ncd\r\n--Xy";
        for size in 1..body.len() {
            let (out, err) = file_data(body.chunks(size).collect());
            assert!(err.is_none(), "{size}: {err:?}");
            assert_eq!(out.concat(), file, "pieces of {size}");
            assert!(out.iter().all(|b| !b.is_empty()));
        }
    }

    #[test]
    fn file_data_shares_the_chunks_it_was_given() {
        let mut body = vec![7u8; 100_000];
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        let chunk = Bytes::from(body);
        let ptr = chunk.as_ptr();
        let mut data = FileData::new(futures_util::stream::iter([Ok(chunk)]), B);
        let first = block_on(futures_util::StreamExt::next(&mut data));
        let first = first.unwrap().unwrap();
        assert_eq!((first.as_ptr(), first.len()), (ptr, 100_000));
    }

    #[test]
    fn file_data_without_its_delimiter_is_incomplete() {
        let (out, err) = file_data(vec![b"abc\r\n--Xy"]);
        assert_eq!(out.concat(), b"abc");
        assert!(matches!(err, Some(PayloadError::Incomplete(_))));
        let (out, err) = file_data(vec![]);
        assert!(out.is_empty() && err.is_some());
    }

    #[test]
    fn partial_delimiter_tails() {
        let d = b"\r\n--XyZ";
        assert_eq!(partial_delimiter(b"abc", d), 0);
        assert_eq!(partial_delimiter(b"abc\r", d), 1);
        assert_eq!(partial_delimiter(b"abc\r\n--X", d), 5);
        assert_eq!(partial_delimiter(b"\r\r\n-", d), 3);
        assert_eq!(partial_delimiter(b"abc\rx", d), 0);
        assert_eq!(partial_delimiter(b"", d), 0);
    }

    /// Fed in pieces, the scan answers what it answers for the whole body, for every split: each
    /// delimiter (and the blank line ending each part's headers) cut at every position.
    #[test]
    fn scan_in_pieces_finds_what_the_whole_body_shows() {
        let long = "b".repeat(70);
        for boundary in [B, long.as_str()] {
            let mut b = b"preamble --x\r\n".to_vec();
            for (headers, content) in [
                ("Content-Disposition: form-data; name=\"size\"", "5"),
                (
                    "Content-Disposition: form-data; name=\"a\"",
                    "\r\n--not-it\r\n\r\n",
                ),
                (
                    "Content-Disposition: form-data; name=\"f\"; filename=\"a.txt\"",
                    "hello",
                ),
            ] {
                b.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n{content}\r\n").as_bytes());
            }
            b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            let whole = file_data_offset(&b, boundary);
            let Scan::Found(offset) = whole else {
                panic!("{whole:?}")
            };
            assert_eq!(&b[offset..offset + 5], b"hello");
            // Two pieces cut at every position, and pieces of every size up to 80.
            for cut in 0..=b.len() {
                let mut scan = HeadScan::new(boundary);
                let first = scan.scan(&b[..cut]);
                let answer = match first {
                    Scan::NeedMore => scan.scan(&b),
                    found => found,
                };
                assert_eq!(answer, Scan::Found(offset), "cut at {cut}");
            }
            for size in 1..=80 {
                let mut scan = HeadScan::new(boundary);
                let mut answer = Scan::NeedMore;
                for end in (size..b.len() + size).step_by(size) {
                    answer = scan.scan(&b[..end.min(b.len())]);
                    if answer != Scan::NeedMore {
                        break;
                    }
                }
                assert_eq!(answer, Scan::Found(offset), "pieces of {size}");
            }
            // A form without a file, in pieces: NoFile, never a wrong offset.
            let fields_only = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--{boundary}--\r\n"
            );
            for cut in 0..=fields_only.len() {
                let mut scan = HeadScan::new(boundary);
                let first = scan.scan(&fields_only.as_bytes()[..cut]);
                let answer = match first {
                    Scan::NeedMore => scan.scan(fields_only.as_bytes()),
                    other => other,
                };
                assert_eq!(answer, Scan::NoFile, "cut at {cut}");
            }
        }
    }

    #[test]
    fn partial_and_fileless_bodies() {
        let b = body(&[(
            "Content-Disposition: form-data; name=\"f\"; filename=\"a\"",
            "data",
        )]);
        for cut in 0..b.len() {
            let scan = file_data_offset(&b[..cut], B);
            assert!(matches!(scan, Scan::NeedMore | Scan::Found(_)), "{cut}: {scan:?}");
        }
        let fields_only = body(&[("Content-Disposition: form-data; name=\"a\"", "1")]);
        assert_eq!(file_data_offset(&fields_only, B), Scan::NoFile);
    }
}
