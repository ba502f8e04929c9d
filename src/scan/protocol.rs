//! clamd's wire protocol, the part the gateway speaks, as clamd(8) documents it and clamd 1.4 does it
//! (`clamd/session.c`, `clamd/server-th.c`; each answer below was seen from Debian's clamd 1.4.3):
//! - Commands carry the `z` prefix and end with NUL; clamd ends its answers with the same NUL.
//!   (`n` would end them with a newline, which a signature name could not be told from.)
//! - `IDSESSION` keeps the connection for more commands; each answer is then `<id>: <answer>`, the
//!   ids counting the commands after `IDSESSION` from 1. Without a session clamd closes the
//!   connection after one answer.
//! - `INSTREAM`: chunks of `<length: u32, big-endian><bytes>`, a zero length ends the stream. clamd
//!   writes the bytes to a temporary file as they come and scans that file only once the stream
//!   has ended: the verdict's wait grows with the file's size.
//! - Above `StreamMaxLength` in all, clamd answers `INSTREAM size limit exceeded. ERROR` and closes the
//!   connection. It checks at each chunk's header: a chunk longer than what is left of the limit is
//!   refused before its bytes.
//! - Answers: `stream: OK`, `stream: <signature> FOUND`, `<message> ERROR`, `PONG`, `UNKNOWN COMMAND`;
//!   and `COMMAND READ TIMED OUT` ended by a newline and without an id, when a client was silent past
//!   `ReadTimeout` (clamd then closes the connection).
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ErrorKind, ScanError};

pub const IDSESSION: &[u8] = b"zIDSESSION\0";
pub const INSTREAM: &[u8] = b"zINSTREAM\0";
pub const PING: &[u8] = b"zPING\0";
/// Answered `ClamAV <engine version>/<database version>/<database date>`.
pub const VERSION: &[u8] = b"zVERSION\0";
/// The zero-length chunk that ends a stream.
pub const END_OF_STREAM: &[u8] = &[0, 0, 0, 0];

/// The most bytes one chunk carries. Any length below `StreamMaxLength` is valid; 1 MiB keeps each
/// header's 4 bytes negligible, stays far below any sensible `StreamMaxLength` (the default is
/// 100 MiB), and lets clamd refuse an over-long stream within 1 MiB of its limit.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// An answer longer than this is not clamd's (its longest is a signature name of a few dozen
/// characters behind `stream: `).
pub const MAX_ANSWER_BYTES: usize = 1024;

/// Appends the chunks that carry `pieces` to `out`: each a 4-byte length, then slices of the pieces
/// (never copied) totalling that length, between 1 and `max_chunk` bytes. Small pieces share a
/// chunk; a large one is cut. A chunk of length 0 would end the stream, so none is made.
pub fn frame(pieces: impl IntoIterator<Item = Bytes>, max_chunk: usize, out: &mut Vec<Bytes>) {
    assert!(max_chunk > 0 && max_chunk <= u32::MAX as usize);
    let mut slices: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let flush = |slices: &mut Vec<Bytes>, len: &mut usize, out: &mut Vec<Bytes>| {
        if *len > 0 {
            out.push(Bytes::copy_from_slice(&(*len as u32).to_be_bytes()));
            out.append(slices);
            *len = 0;
        }
    };
    for mut piece in pieces {
        while !piece.is_empty() {
            let n = piece.len().min(max_chunk - len);
            slices.push(piece.split_to(n));
            len += n;
            if len == max_chunk {
                flush(&mut slices, &mut len, out);
            }
        }
    }
    flush(&mut slices, &mut len, out);
}

/// One answer, without its terminator.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub text: Vec<u8>,
    /// clamd sent more after the answer: the session is out of step and is not reused.
    pub trailing: bool,
}

/// Reads one answer: up to a NUL, or a newline (`COMMAND READ TIMED OUT` ends with one even in a
/// `z` session). The end of the connection before it is `connection_lost` (nothing came) or
/// `protocol` (a truncated answer).
pub async fn read_answer(io: &mut (impl AsyncRead + Unpin)) -> Result<Answer, ScanError> {
    let mut text = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        let n = io
            .read(&mut buf)
            .await
            .map_err(|e| ScanError::new(ErrorKind::ConnectionLost, format!("reading clamd's answer: {e}")))?;
        if n == 0 {
            return Err(if text.is_empty() {
                ScanError::new(
                    ErrorKind::ConnectionLost,
                    "clamd closed the connection without an answer",
                )
            } else {
                ScanError::new(
                    ErrorKind::Protocol,
                    format!("clamd's answer ended early: {}", shown(&text)),
                )
            });
        }
        text.extend_from_slice(&buf[..n]);
        if let Some(end) = text.iter().position(|b| *b == 0 || *b == b'\n') {
            let trailing = text.len() > end + 1;
            text.truncate(end);
            return Ok(Answer { text, trailing });
        }
        if text.len() > MAX_ANSWER_BYTES {
            return Err(ScanError::new(
                ErrorKind::Protocol,
                format!(
                    "clamd's answer is over {MAX_ANSWER_BYTES} bytes: {}",
                    shown(&text)
                ),
            ));
        }
    }
}

/// What clamd found in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Clean,
    Infected(String),
}

/// The verdict in an answer to `INSTREAM` (`id`: the command's id in a session). Anything but
/// `stream: OK` and `stream: <signature> FOUND` is an error, never clean.
pub fn stream_finding(answer: &[u8], id: Option<u32>) -> Result<Finding, ScanError> {
    let text = in_session(answer, id)?;
    if text == "stream: OK" {
        return Ok(Finding::Clean);
    }
    if let Some(signature) = text
        .strip_prefix("stream: ")
        .and_then(|t| t.strip_suffix(" FOUND"))
        .filter(|s| !s.is_empty())
    {
        // Whatever clamd names is kept, `(null)` included (clamd 0.105 with AlertExceedsMax,
        // Cisco-Talos/clamav#720): a FOUND is never taken for clean.
        return Ok(Finding::Infected(signature.to_owned()));
    }
    Err(other_answer(text))
}

/// An answer to `PING`.
pub fn pong(answer: &[u8], id: Option<u32>) -> Result<(), ScanError> {
    match in_session(answer, id)? {
        "PONG" => Ok(()),
        text => Err(other_answer(text)),
    }
}

/// An answer to `VERSION`: `ClamAV 1.4.3/27471/Sat Nov 22 09:25:02 2025` (no session id: it is
/// asked outside a session). Anything else is not clamd's.
pub fn version(answer: &[u8]) -> Result<String, ScanError> {
    match in_session(answer, None)? {
        text if text.starts_with("ClamAV ") && text.len() <= 100 => Ok(text.to_owned()),
        text => Err(other_answer(text)),
    }
}

/// The answer's text past its session id, which must be `id`.
fn in_session(answer: &[u8], id: Option<u32>) -> Result<&str, ScanError> {
    let garbage = || ScanError::new(ErrorKind::Protocol, format!("clamd answered {}", shown(answer)));
    let text = std::str::from_utf8(answer).map_err(|_| garbage())?;
    if text.chars().any(char::is_control) {
        return Err(garbage());
    }
    // clamd says this without an id, even in a session.
    if text == "COMMAND READ TIMED OUT" {
        return Err(ScanError::new(
            ErrorKind::ClamdTimeout,
            "clamd timed the connection out (ReadTimeout): no bytes came for that long",
        ));
    }
    let Some(id) = id else { return Ok(text) };
    match text.split_once(": ") {
        Some((n, rest)) if n == id.to_string() => Ok(rest),
        Some((n, _)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Err(ScanError::new(
            ErrorKind::Protocol,
            format!(
                "clamd answered command {n} of the session, not {id}: {}",
                shown(answer)
            ),
        )),
        _ => Err(garbage()),
    }
}

/// An answer that is neither a verdict nor a PONG.
fn other_answer(text: &str) -> ScanError {
    if text.starts_with("INSTREAM size limit exceeded") {
        return ScanError::new(
            ErrorKind::SizeLimit,
            "clamd refused the stream: longer than its StreamMaxLength",
        );
    }
    if let Some(message) = text.strip_suffix(" ERROR") {
        return ScanError::new(
            ErrorKind::ClamdError,
            format!("clamd: {}", shown(message.as_bytes())),
        );
    }
    ScanError::new(
        ErrorKind::Protocol,
        format!("clamd answered {}", shown(text.as_bytes())),
    )
}

/// An answer as it may go into a log: at most 200 characters, escaped.
fn shown(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(&text[..text.len().min(200)]);
    format!("{:?}", text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_answers_name_the_engine_and_database() {
        assert_eq!(
            super::version(b"ClamAV 1.4.3/27471/Sat Nov 22 09:25:02 2025").unwrap(),
            "ClamAV 1.4.3/27471/Sat Nov 22 09:25:02 2025"
        );
        assert!(super::version(b"UNKNOWN COMMAND").is_err());
        assert!(super::version(b"ClamAV \x07").is_err());
    }

    use super::*;
    use proptest::prelude::*;

    /// Reads chunks back as clamd does (`handle_stream`): the bytes, and each chunk's length.
    fn unframe(wire: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let (mut data, mut lens, mut at) = (Vec::new(), Vec::new(), 0);
        while at < wire.len() {
            let len = u32::from_be_bytes(wire[at..at + 4].try_into().unwrap()) as usize;
            at += 4;
            assert!(len > 0, "a zero-length chunk inside the stream would end it");
            data.extend_from_slice(&wire[at..at + len]);
            lens.push(len);
            at += len;
        }
        assert_eq!(at, wire.len(), "the last chunk is cut short");
        (data, lens)
    }

    fn framed(pieces: &[&[u8]], max: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        frame(pieces.iter().map(|p| Bytes::copy_from_slice(p)), max, &mut out);
        out
    }

    fn wire(out: &[Bytes]) -> Vec<u8> {
        out.concat()
    }

    #[test]
    fn a_piece_is_one_chunk_with_its_length_big_endian() {
        let out = framed(&[b"hello"], MAX_CHUNK_BYTES);
        assert_eq!(wire(&out), b"\x00\x00\x00\x05hello");
        let big = vec![7u8; 0x0001_0203];
        let out = framed(&[&big], MAX_CHUNK_BYTES);
        assert_eq!(&out[0][..], &[0x00, 0x01, 0x02, 0x03]);
    }

    #[test]
    fn small_pieces_share_a_chunk_and_large_ones_are_cut() {
        let out = framed(&[b"ab", b"cd", b"efghij"], 4);
        assert_eq!(
            wire(&out),
            b"\x00\x00\x00\x04abcd\x00\x00\x00\x04efgh\x00\x00\x00\x02ij"
        );
        // Exact multiples leave no empty chunk behind.
        let out = framed(&[b"abcdefgh"], 4);
        assert_eq!(unframe(&wire(&out)).1, [4, 4]);
    }

    #[test]
    fn nothing_and_empty_pieces_make_no_chunk() {
        assert!(framed(&[], 4).is_empty());
        assert!(framed(&[b"", b""], 4).is_empty());
        assert_eq!(unframe(&wire(&framed(&[b"", b"a", b""], 4))).1, [1]);
    }

    #[test]
    fn pieces_are_sliced_not_copied() {
        let piece = Bytes::from(vec![1u8; 10]);
        let mut out = Vec::new();
        frame([piece.clone()], 4, &mut out);
        // Header, slice, header, slice, header, slice.
        assert_eq!(out.len(), 6);
        for slice in out.iter().skip(1).step_by(2) {
            let offset = slice.as_ptr() as usize - piece.as_ptr() as usize;
            assert!(offset < piece.len(), "a slice that is not part of the piece");
        }
    }

    proptest! {
        /// Whatever the pieces, the chunks carry exactly their bytes, in order, each 1..=max long.
        #[test]
        fn chunks_carry_the_pieces(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20),
            max in 1usize..17,
        ) {
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (data, lens) = unframe(&wire(&framed(&refs, max)));
            prop_assert_eq!(data, pieces.concat());
            prop_assert!(lens.iter().all(|l| (1..=max).contains(l)));
        }
    }

    async fn read(bytes: &[u8]) -> Result<Answer, ScanError> {
        read_answer(&mut &bytes[..]).await
    }

    fn kind<T: std::fmt::Debug>(result: Result<T, ScanError>) -> ErrorKind {
        result.unwrap_err().kind
    }

    #[tokio::test]
    async fn answers_end_at_nul_or_newline() {
        let a = read(b"stream: OK\0").await.unwrap();
        assert_eq!((a.text.as_slice(), a.trailing), (&b"stream: OK"[..], false));
        let a = read(b"COMMAND READ TIMED OUT\n").await.unwrap();
        assert_eq!(a.text, b"COMMAND READ TIMED OUT");
        assert!(read(b"1: PONG\x002: PONG\0").await.unwrap().trailing);
    }

    #[tokio::test]
    async fn a_truncated_or_missing_answer_is_an_error() {
        assert_eq!(kind(read(b"").await), ErrorKind::ConnectionLost);
        assert_eq!(kind(read(b"stream: O").await), ErrorKind::Protocol);
        assert_eq!(
            kind(read(b"stream: Eicar-Test-Signature FOU").await),
            ErrorKind::Protocol
        );
        assert_eq!(
            kind(read(&[b'x'; MAX_ANSWER_BYTES + 10]).await),
            ErrorKind::Protocol
        );
    }

    #[tokio::test]
    async fn an_answer_split_across_reads_is_put_together() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_answer(&mut client).await });
        for piece in [&b"1: stream: Win.Test"[..], b".EICAR_HDB-1 FO", b"UND\0"] {
            tokio::io::AsyncWriteExt::write_all(&mut server, piece)
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        let answer = reader.await.unwrap().unwrap();
        assert_eq!(
            stream_finding(&answer.text, Some(1)),
            Ok(Finding::Infected("Win.Test.EICAR_HDB-1".into()))
        );
    }

    /// clamd 1.4.3's own answers, taken from the wire.
    #[test]
    fn clamds_verdicts() {
        assert_eq!(stream_finding(b"stream: OK", None), Ok(Finding::Clean));
        assert_eq!(stream_finding(b"3: stream: OK", Some(3)), Ok(Finding::Clean));
        assert_eq!(
            stream_finding(b"stream: Gateway.Test.EICAR.UNOFFICIAL FOUND", None),
            Ok(Finding::Infected("Gateway.Test.EICAR.UNOFFICIAL".into()))
        );
        assert_eq!(
            stream_finding(
                b"1: stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND",
                Some(1)
            ),
            Ok(Finding::Infected("Heuristics.Limits.Exceeded.MaxFileSize".into()))
        );
        assert_eq!(
            stream_finding(b"stream: (null) FOUND", None),
            Ok(Finding::Infected("(null)".into()))
        );
    }

    #[test]
    fn clamds_refusals_are_errors_never_clean() {
        let cases: &[(&[u8], Option<u32>, ErrorKind)] = &[
            (b"INSTREAM size limit exceeded. ERROR", None, ErrorKind::SizeLimit),
            (
                b"1: INSTREAM size limit exceeded. ERROR",
                Some(1),
                ErrorKind::SizeLimit,
            ),
            (b"COMMAND READ TIMED OUT", Some(4), ErrorKind::ClamdTimeout),
            (
                b"Error writing to temporary file ERROR",
                None,
                ErrorKind::ClamdError,
            ),
            (
                b"2: stream: Can't allocate memory ERROR",
                Some(2),
                ErrorKind::ClamdError,
            ),
            (b"UNKNOWN COMMAND", None, ErrorKind::Protocol),
            (b"1: COMMAND UNAVAILABLE", Some(1), ErrorKind::Protocol),
        ];
        for (answer, id, expected) in cases {
            let got = stream_finding(answer, *id);
            assert_eq!(kind(got), *expected, "{}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for answer in [
            &b""[..],
            b"stream: ok",
            b"stream: OK ",
            b"stream:OK",
            b"stream:  FOUND",
            b"stream: FOUND",
            b"OK",
            b"PONG",
            b"stream: Eicar\x01 FOUND",
            b"\xff\xfe stream: OK",
            b"HTTP/1.1 400 Bad Request",
        ] {
            assert_eq!(
                kind(stream_finding(answer, None)),
                ErrorKind::Protocol,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[test]
    fn a_session_answer_must_carry_the_commands_id() {
        assert_eq!(kind(stream_finding(b"stream: OK", Some(1))), ErrorKind::Protocol);
        assert_eq!(
            kind(stream_finding(b"2: stream: OK", Some(1))),
            ErrorKind::Protocol
        );
        assert_eq!(kind(stream_finding(b"1: stream: OK", None)), ErrorKind::Protocol);
        assert_eq!(
            kind(stream_finding(b": stream: OK", Some(1))),
            ErrorKind::Protocol
        );
        assert_eq!(pong(b"7: PONG", Some(7)), Ok(()));
        assert_eq!(pong(b"PONG", None), Ok(()));
        assert_eq!(kind(pong(b"7: PONG", Some(8))), ErrorKind::Protocol);
        assert_eq!(kind(pong(b"7: stream: OK", Some(7))), ErrorKind::Protocol);
    }

    #[test]
    fn what_goes_into_a_log_is_bounded_and_escaped() {
        let err = stream_finding(&[b'A'; 900], None).unwrap_err();
        assert!(err.detail.len() < 260, "{}", err.detail);
        let err = stream_finding(b"bell\x07", None).unwrap_err();
        assert!(err.detail.contains("\\u{7}"), "{}", err.detail);
    }
}
