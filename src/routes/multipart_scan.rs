//! Finds where the file's bytes start in a raw `multipart/form-data` body, so that a file sent as the
//! last part can take its size from `Content-Length` before its first byte is read:
//! size = Content-Length - offset of the file's data - len("\r\n--" boundary "--\r\n").
//! The figure is checked exactly when the body ends; a body that breaks the assumption (a field
//! after the file, no CRLF after the close delimiter) fails cleanly with `size_mismatch`.

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

pub fn file_data_offset(body: &[u8], boundary: &str) -> Scan {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter may follow a preamble; later ones follow a CRLF.
    let Some(mut at) = find(body, delimiter, 0) else {
        return Scan::NeedMore;
    };
    loop {
        let after = at + delimiter.len();
        if body.len() < after + 2 {
            return Scan::NeedMore;
        }
        if &body[after..after + 2] == b"--" {
            return Scan::NoFile;
        }
        let Some(head_end) = find(body, b"\r\n\r\n", after) else {
            return Scan::NeedMore;
        };
        if has_filename(&body[after..head_end]) {
            return Scan::Found(head_end + 4);
        }
        let mut next = b"\r\n".to_vec();
        next.extend_from_slice(delimiter);
        match find(body, &next, head_end + 4) {
            Some(i) => at = i + 2,
            None => return Scan::NeedMore,
        }
    }
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
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
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
