//! HTTP as the tests' clients speak it: curl, a plain PUT, and raw requests no library would send.
use std::time::Duration;

use serde_json::Value;

/// A free loopback port for a server the test starts itself (a receiver, a Redis). Another process
/// could take it before that server binds it; the servers the suite writes itself bind port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status and JSON answer of a `curl` run (`-w` appends the status on the last line).
pub async fn curl(args: &[&str]) -> (u16, Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("the tests need curl on the PATH (Debian: apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status.trim().parse().unwrap_or(0), json)
}

/// `PUT {base}/v1/folders/0/files/{name}` (`name` may carry a query) with `body` and `headers`, on
/// a client of its own (`TestApp::put_raw` uses the app's).
pub async fn put_raw(base: &str, name: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> RawAnswer {
    put_raw_with(&reqwest::Client::new(), base, name, body, headers).await
}

pub async fn put_raw_with(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> RawAnswer {
    let mut request = http.put(format!("{base}/v1/folders/0/files/{name}")).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    RawAnswer::of(request.send().await.expect("the gateway answers")).await
}

/// What a `raw_request` got back.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub json: Value,
}

impl RawAnswer {
    /// A reqwest answer, read whole (a body that is not JSON reads as `Null`).
    pub async fn of(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let json = response.json().await.unwrap_or(Value::Null);
        Self {
            status,
            headers,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

/// One HTTP chunk of a `Transfer-Encoding: chunked` body (an empty `data` ends the body).
pub fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// A raw HTTP/1.1 request on a connection of its own, for clients no library would be: `head` is the
/// request line and headers (no blank line); the body goes as `pieces`, each written after `pause`.
/// The answer is read meanwhile: once it comes (the gateway may answer before the body is whole) the
/// sending stops. `None` when no answer came within `deadline`.
pub async fn raw_request(
    address: &str,
    head: &str,
    pieces: impl IntoIterator<Item = Vec<u8>>,
    pause: Duration,
    deadline: Duration,
) -> Option<RawAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let socket = tokio::net::TcpStream::connect(host).await.ok()?;
    let (mut reader, mut writer) = socket.into_split();
    let writing = async move {
        if writer
            .write_all(format!("{head}\r\n\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        for piece in pieces {
            tokio::time::sleep(pause).await;
            if writer.write_all(&piece).await.is_err() {
                return;
            }
        }
        // Keep the connection open (a half-close could read as the end of the request).
        std::future::pending::<()>().await;
    };
    let reading = async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let json = serde_json::from_slice(&buf[end + 4..end + 4 + length]).unwrap_or(Value::Null);
                    return Some(RawAnswer {
                        status,
                        headers,
                        json,
                    });
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, async {
        tokio::select! {
            answer = reading => answer,
            () = writing => None,
        }
    })
    .await
    .ok()
    .flatten()
}

/// A client that declares `size` bytes and then sends `piece` bytes every `every`: far below any
/// minimum rate, yet never idle for long. Its answer, or `None` within `deadline`.
pub async fn trickle(
    address: &str,
    name: &str,
    size: u64,
    piece: usize,
    every: Duration,
    deadline: Duration,
) -> Option<RawAnswer> {
    let head = format!("PUT /v1/folders/0/files/{name} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {size}");
    let pieces = (0..size / piece as u64).map(move |_| vec![b't'; piece]);
    raw_request(address, &head, pieces, every, deadline).await
}
