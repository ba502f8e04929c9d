//! Bodies in tiny HTTP chunks, raw and multipart: memory stays within the budget plus a fixed bound.
//!
//! The gateway runs as its own process (its RSS is its own, read from /proc/PID/status); the emulator
//! runs in the test. The client frames the chunked body itself over a raw TcpStream, in large writes
//! (so the client is cheap), while the gateway still reads every tiny HTTP chunk as a piece of its own.
use std::time::{Duration, Instant};

use box_upload_gateway::emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{anonymous_env, env_refs, Gateway};
use crate::support::{env_or, holds_within};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 64 * MIB;
/// The target: peak RSS <= idle + budget + 64 MiB, whatever the chunking.
const SLACK: u64 = 64 * MIB;
/// The 40 MiB bodies, in every chunk size but the smallest.
const SIZE: usize = 40 * MIB as usize;
/// 1-byte chunks are a piece per byte: a debug gateway spends about 0.9 µs of CPU on each (about 37
/// CPU-s for the 40 MiB), the price of showing the bound where it was broken. Before the fix
/// the growth was linear in the pieces (+766 MiB for 40 Mi of them, about 19 bytes each), so the
/// 20 MiB here (`MEMORY_BODY_MIB`; the smallest body that is still a chunked upload, Box's threshold
/// being 20,000,000 bytes) would show about +400 MiB, past the 128 MiB the bound allows, at half
/// the CPU. `MEMORY_BODY_MIB=40` is the run; `bench/run --only hostile` measures the release
/// build the same way.
fn one_byte_chunks_size() -> usize {
    env_or("MEMORY_BODY_MIB", 20usize) * MIB as usize
}
const BOUNDARY: &str = "hostile-memory-boundary";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Raw,
    Multipart,
}

#[derive(Debug)]
struct Measured {
    idle: u64,
    peak: u64,
    elapsed: Duration,
    /// The gateway's utime + stime during the upload.
    cpu_secs: f64,
}

/// utime + stime of a process, in seconds (assuming the usual 100 ticks a second).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()) as f64 / 100.0
}

/// A `key:` line of /proc/PID/status, in bytes.
pub(crate) fn status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The file's bytes repeat with this period, a multiple of every chunk size tried (1, 7, 1024), so
/// the client frames one period once and writes it again and again: in a debug build, framing 40 MiB
/// in 1-byte chunks byte by byte would cost the client more than the gateway. 73 periods of 7 KiB:
/// part boundaries (multiples of 8 MiB) fall at different places in it.
const PERIOD: usize = 7 * 1024 * 73;

/// The file's bytes: one pseudo-random period, repeated (and cut at `size`).
fn file_bytes(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut period = vec![0u8; PERIOD];
    for word in period.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    period.iter().copied().cycle().take(size).collect()
}

/// `bytes` framed as HTTP/1.1 chunks whose sizes follow `pattern` in a cycle (the last one shorter).
fn frame(bytes: &[u8], pattern: &[usize]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(bytes.len() + bytes.len() * 12 / pattern.iter().min().unwrap() + 12);
    let mut rest = bytes;
    for &size in pattern.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
        rest = tail;
    }
    wire
}

/// The body (`head`, `data`, `tail`) in HTTP chunks whose sizes follow `pattern`, then the
/// last-chunk. With one size, `data` (which repeats with `PERIOD`) has its period framed once and
/// written as many times as it fits; a pattern of several sizes is framed whole (its pieces are few).
async fn send_chunked(
    stream: &mut (impl AsyncWrite + Unpin),
    head: &[u8],
    data: &[u8],
    tail: &[u8],
    pattern: &[usize],
) -> std::io::Result<()> {
    stream.write_all(&frame(head, &[1])).await?;
    let whole = if pattern.len() == 1 {
        let period = frame(&data[..PERIOD.min(data.len())], pattern);
        let whole = data.len() / PERIOD;
        for _ in 0..whole {
            stream.write_all(&period).await?;
        }
        whole * PERIOD
    } else {
        0
    };
    stream.write_all(&frame(&data[whole..], pattern)).await?;
    stream.write_all(&frame(tail, &[1])).await?;
    stream.write_all(b"0\r\n\r\n").await
}

/// One upload of `data` through a fresh gateway, its body in HTTP chunks of `chunk` bytes; returns
/// the gateway's idle and peak RSS, after checking the file landed whole in the emulator.
async fn upload_in_chunks(kind: Kind, pattern: &[usize], data: &[u8]) -> Measured {
    let mut config = EmulatorConfig::default();
    if pattern.len() > 1 {
        // Box slower than the client, so the gateway stops reading while its parts are in flight
        // and actix-http's read buffer fills: the large chunks then come out of it as whole slices.
        config.faults.bandwidth_bytes_per_sec = Some(8 * MIB);
    }
    let emulator = Emulator::spawn(config).await.unwrap();
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_MEMORY_BUDGET_BYTES", BUDGET.to_string()),
        ("GATEWAY_CHUNKED_THRESHOLD_BYTES", "20000000".into()),
        // Every part of the 40 MiB in flight at once: the budget, not the concurrency, is the bound.
        ("GATEWAY_PART_CONCURRENCY", "8".into()),
        // Its stdout is read only at the end: little to say (the port line is `info`).
        ("RUST_LOG", "warn,box_upload_gateway=info".into()),
    ]);
    let gateway = Gateway::start(&env_refs(&env)).await;
    let pid = gateway.pid();
    let idle = status_bytes(pid, "VmRSS");
    let name = format!("{kind:?}-{}.bin", pattern[0]).to_lowercase();

    let (started, cpu) = (Instant::now(), cpu_secs(pid));
    let (status, answer) = post(&gateway, kind, pattern, &name, data).await;
    let elapsed = started.elapsed();
    let peak = status_bytes(pid, "VmHWM");
    let cpu_secs = cpu_secs(pid) - cpu;
    let logs = gateway.finish().await;

    assert_eq!(status, 201, "{answer}\n{logs}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let sha1 = hex::encode(Sha1::digest(data));
    assert_eq!(answer["upload"]["size"], data.len() as u64, "{answer}");
    assert_stored(&emulator, answer["file"]["id"].as_str().unwrap(), &sha1);
    Measured {
        idle,
        peak,
        elapsed,
        cpu_secs,
    }
}

/// Sends the request and reads the whole answer: (status, body).
async fn post(gateway: &Gateway, kind: Kind, pattern: &[usize], name: &str, data: &[u8]) -> (u16, String) {
    let url = gateway.url("");
    let authority = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).await.unwrap();
    let size = data.len();
    let (head, body_head, body_tail) = match kind {
        Kind::Raw => (
            format!("PUT /v1/folders/0/files/{name}?size={size} HTTP/1.1\r\n"),
            String::new(),
            String::new(),
        ),
        Kind::Multipart => (
            format!(
                "POST /v1/folders/0/files?size={size} HTTP/1.1\r\n\
                 Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            ),
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            ),
            format!("\r\n--{BOUNDARY}--\r\n"),
        ),
    };
    let request =
        format!("{head}Host: {authority}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // The answer is read while the body goes: a refusal comes before the body's end.
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        read.read_to_end(&mut answer).await.map(|_| answer)
    });
    // A refusal may close the connection before the body's end: the answer tells.
    let _ = send_chunked(
        &mut write,
        body_head.as_bytes(),
        data,
        body_tail.as_bytes(),
        pattern,
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(600), reader)
        .await
        .expect("the gateway answers")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_owned() })
}

/// The data of a chunked answer.
fn dechunk(mut wire: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = wire.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        wire = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The emulator stored exactly these bytes.
fn assert_stored(emulator: &EmulatorHandle, file_id: &str, sha1: &str) {
    let path = emulator.file_path(file_id).expect("the file is in the emulator");
    let stored = std::fs::read(path).unwrap();
    assert_eq!(
        hex::encode(Sha1::digest(&stored)),
        sha1,
        "the stored file's SHA-1"
    );
}

/// Runs one case and checks the peak against the target.
async fn case(kind: Kind, pattern: &[usize]) {
    let size = match pattern {
        [1] => one_byte_chunks_size(),
        _ => SIZE,
    };
    let data = file_bytes(size);
    let m = upload_in_chunks(kind, pattern, &data).await;
    let over = m.peak.saturating_sub(m.idle);
    eprintln!(
        "{kind:?} body of {} MiB in HTTP chunks of {:?} bytes, budget {} MiB: idle {} MiB, peak {} MiB (+{} MiB) in {:.1} s (gateway CPU {:.1} s)",
        data.len() as u64 / MIB,
        &pattern[..pattern.len().min(16)],
        BUDGET / MIB,
        m.idle / MIB,
        m.peak / MIB,
        over / MIB,
        m.elapsed.as_secs_f64(),
        m.cpu_secs
    );
    assert!(
        m.peak <= m.idle + BUDGET + SLACK,
        "peak RSS {} MiB is past idle {} MiB + budget {} MiB + {} MiB",
        m.peak / MIB,
        m.idle / MIB,
        BUDGET / MIB,
        SLACK / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_put_in_1_byte_chunks_stays_within_the_budget() {
    case(Kind::Raw, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_put_in_7_byte_chunks_stays_within_the_budget() {
    case(Kind::Raw, &[7]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_put_in_1_kib_chunks_stays_within_the_budget() {
    case(Kind::Raw, &[1024]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_post_in_1_byte_chunks_stays_within_the_budget() {
    case(Kind::Multipart, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_post_in_7_byte_chunks_stays_within_the_budget() {
    case(Kind::Multipart, &[7]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_post_in_1_kib_chunks_stays_within_the_budget() {
    case(Kind::Multipart, &[1024]).await;
}

/// Large chunks (kept zero-copy before every piece was copied, each pinning actix-http's whole read
/// buffer of up to 256 KiB) between tiny ones.
fn alternating() -> Vec<usize> {
    vec![64 * 1024, 1, 1, 1, 1, 1, 1, 1, 1, 7, 100 * 1024, 1, 1, 3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_put_alternating_large_and_tiny_chunks_stays_within_the_budget() {
    case(Kind::Raw, &alternating()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_post_alternating_large_and_tiny_chunks_stays_within_the_budget() {
    case(Kind::Multipart, &alternating()).await;
}

/// A direct upload's bytes stay counted in the budget until the task that sends them to Box ends,
/// even when the request's future is dropped (the client left) while Box is still receiving them.
/// Framework-free: the pipeline with a real Box client against the real emulator, its `send` future
/// dropped by hand (over HTTP, actix-web did not drop the handler when the client left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_uploads_bytes_stay_in_the_budget_until_box_has_them() {
    use crate::pipeline::helpers::{new_file, Replica};
    use box_upload_gateway::box_api::RetryPolicy;

    // Box reads the body at 256 KiB/s: the 1 MiB file takes about 4 s to go up.
    let mut config = EmulatorConfig::default();
    config.faults.bandwidth_bytes_per_sec = Some(256 * 1024);
    let emulator = Emulator::spawn(config).await.unwrap();
    let replica = Replica::with_retry(
        &emulator,
        RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            deadline: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(60),
        },
    );
    let (pipeline, metrics) = (&replica.pipeline, &replica.metrics);
    let size = MIB as usize;
    let data = file_bytes(size);
    let prepared = pipeline
        .prepare(new_file("0", "left-early.bin", size as u64))
        .await
        .unwrap();
    let body = futures_util::stream::iter(
        data.chunks(64 * 1024)
            .map(|c| Ok::<_, box_upload_gateway::pipeline::UploadError>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    // The body is read whole at once, then the bytes go to Box, slowly: half a second into that,
    // the request's future is dropped, as when a client leaves.
    let counted = async {
        let held = holds_within(Duration::from_secs(10), || {
            std::future::ready(metrics.buffered_bytes.get() == size as i64)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        held
    };
    tokio::select! {
        outcome = pipeline.send(prepared, body) => panic!("the upload ended before it was dropped: {outcome:?}"),
        held = counted => assert!(held, "the file's bytes are counted while they are read"),
    }
    // The request is gone; its bytes are not: the task that sends them still holds them.
    assert_eq!(
        metrics.buffered_bytes.get(),
        size as i64,
        "the bytes Box is still receiving stay in the budget after the request's future is dropped"
    );
    let released = holds_within(Duration::from_secs(30), || {
        std::future::ready(metrics.buffered_bytes.get() == 0)
    })
    .await;
    assert!(released, "the budget is given back once Box has answered");
    // The upload went on without its client and landed whole.
    let inspection = emulator.inspect();
    assert_eq!(inspection.files.len(), 1, "{inspection:?}");
}

/// `clients` clients at once against a gateway with `max_connections`, each sending its body in
/// HTTP chunks of `chunk` bytes while the gateway cannot read it yet (Box is slow to open their
/// sessions). Returns the gateway's RSS growth over idle.
async fn stalled_clients(clients: usize, max_connections: usize, chunk: usize) -> u64 {
    let emulator = Emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let mut env = anonymous_env(&emulator);
    env.extend([
        ("GATEWAY_MEMORY_BUDGET_BYTES", BUDGET.to_string()),
        ("GATEWAY_MAX_CONNECTIONS", max_connections.to_string()),
        ("RUST_LOG", "warn,box_upload_gateway=info".into()),
    ]);
    let gateway = Gateway::start(&env_refs(&env)).await;
    let pid = gateway.pid();
    let idle = status_bytes(pid, "VmRSS");
    // Set once the gateway is up (its start asks Box who it is).
    emulator.set_faults(box_upload_gateway::emulator::FaultPlan {
        delay_ms: 8_000,
        ..Default::default()
    });
    let url = gateway.url("");
    let authority = url.trim_start_matches("http://").to_owned();
    // 256 KiB of body: more than the gateway takes in before it stops reading.
    let wire = frame(&file_bytes(256 * 1024), &[chunk]);
    let mut streams = Vec::new();
    for i in 0..clients {
        let stream = TcpStream::connect(&authority).await.unwrap();
        let head = format!(
            "PUT /v1/folders/0/files/stalled-{i}.bin?size={} HTTP/1.1\r\nHost: {authority}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            40 * MIB
        );
        let (read, mut write) = stream.into_split();
        let wire = wire.clone();
        // The kernel takes what the gateway does not read; the rest waits in this task.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(head.as_bytes()).await;
            let _ = write.write_all(&wire).await;
            write
        });
        streams.push((read, writer));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let grown = status_bytes(pid, "VmRSS").saturating_sub(idle);
    eprintln!(
        "{clients} clients in {chunk}-byte chunks, stalled, max_connections {max_connections}: \
         idle {} MiB, +{} MiB ({} KiB a client)",
        idle / MIB,
        grown / MIB,
        grown / 1024 / clients as u64
    );
    for (_, writer) in &streams {
        writer.abort();
    }
    drop(streams);
    drop(gateway);
    grown
}

/// What a connection costs beyond the budget when the gateway is not reading its body: the
/// per-connection figures of docs/operations.md (sizing). A client in 1-byte chunks costs about 4 MiB
/// (actix-http decodes up to 128 KiB of what it read into its queue as one `Bytes` per chunk before it
/// stops reading), one in 1 KiB chunks about 1 MiB; the cap on connections bounds the sum.
const WORST_PER_CONNECTION: u64 = 6 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_cost_a_bounded_amount_each() {
    for chunk in [1, 1024] {
        let grown = stalled_clients(40, 1000, chunk).await;
        assert!(
            grown <= 40 * WORST_PER_CONNECTION,
            "40 stalled clients in {chunk}-byte chunks took +{} MiB",
            grown / MIB
        );
    }
}

/// Any number of clients: past `max_connections`, they wait in the kernel's accept queue and cost
/// the process nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_what_any_number_of_clients_cost() {
    let grown = stalled_clients(300, 16, 1).await;
    assert!(
        grown <= 16 * WORST_PER_CONNECTION + 16 * MIB,
        "300 clients in 1-byte chunks against max_connections 16 took +{} MiB",
        grown / MIB
    );
}
