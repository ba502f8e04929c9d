//! The benchmark's two native helpers (`bench/run` builds them in the same profile as the gateway):
//!
//! - `bench-tools floor BYTES`: the CPU floor of an upload of BYTES, two SHA-1 passes over every byte
//!   (each part's digest and the whole file's digest are independent chains), with the same `sha1`
//!   crate the gateway uses, in one process. Prints `{"bytes", "cpu_seconds", "wall_seconds"}`; CPU is
//!   utime + stime from /proc, as the benchmark reads it for the gateway.
//! - `bench-tools twin-floor BYTES`: the same bytes, in the same pieces, through the gateway's own
//!   `TwinSha1` (both chains in one pass, fused on CPUs with the SHA extensions): the floor of the
//!   hashing the gateway actually does. Same output, plus `"fused"` (whether the CPU allowed it).
//! - `bench-tools sink`: an HTTP server on a loopback port that only reads request bodies (answers 201
//!   with the byte count): what a client's upload costs when nothing is done with the bytes. Prints
//!   `listening PORT`, runs until killed.
use std::io::Write;
use std::time::Instant;

use actix_web::{web, App, HttpResponse, HttpServer};
use box_upload_gateway::pipeline::TwinSha1;
use futures_util::StreamExt;
use sha1::{Digest, Sha1};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["floor", bytes] => {
            floor(bytes.parse().map_err(std::io::Error::other)?, two_passes, "");
            Ok(())
        }
        ["twin-floor", bytes] => {
            let fused = format!(r#", "fused": {}"#, TwinSha1::new().is_fused());
            floor(bytes.parse().map_err(std::io::Error::other)?, twin, &fused);
            Ok(())
        }
        ["sink"] => actix_web::rt::System::new().block_on(sink()),
        _ => {
            eprintln!("usage: bench-tools floor BYTES | bench-tools twin-floor BYTES | bench-tools sink");
            std::process::exit(2)
        }
    }
}

/// The gateway hashes what arrives from the socket in pieces of tens of KiB, from memory that is not
/// in cache for the part digest: the floor reads a buffer larger than the L3 cache, in 64 KiB pieces,
/// one "part" of the buffer's size at a time, like the gateway: its own digest, and the whole file's.
fn floor(bytes: u64, hash: fn(&[u8], u64), extra: &str) {
    const BUFFER: usize = 64 << 20;
    let mut buffer = vec![0u8; BUFFER];
    fastrand::fill(&mut buffer);
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    hash(&buffer, bytes);
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(r#"{{"bytes": {bytes}, "cpu_seconds": {cpu:.3}, "wall_seconds": {wall:.3}{extra}}}"#);
}

const PIECE: usize = 64 << 10;

/// The issue's floor: two passes of the `sha1` crate.
fn two_passes(buffer: &[u8], bytes: u64) {
    let (mut whole, mut left) = (Sha1::new(), bytes);
    while left > 0 {
        let mut part = Sha1::new();
        let len = left.min(buffer.len() as u64) as usize;
        for piece in buffer[..len].chunks(PIECE) {
            whole.update(piece);
        }
        for piece in buffer[..len].chunks(PIECE) {
            part.update(piece);
        }
        std::hint::black_box(part.finalize());
        left -= len as u64;
    }
    std::hint::black_box(whole.finalize());
}

/// One pass of the gateway's two-lane hasher.
fn twin(buffer: &[u8], bytes: u64) {
    let (mut hasher, mut left) = (TwinSha1::new(), bytes);
    while left > 0 {
        let len = left.min(buffer.len() as u64) as usize;
        for piece in buffer[..len].chunks(PIECE) {
            hasher.update(piece);
        }
        std::hint::black_box(hasher.finish_part());
        left -= len as u64;
    }
    std::hint::black_box(hasher.finalize());
}

/// utime + stime of this process, from /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn sink() -> std::io::Result<()> {
    let server = HttpServer::new(|| App::new().default_service(web::to(read_all))).bind("127.0.0.1:0")?;
    let port = server.addrs()[0].port();
    println!("listening {port}");
    std::io::stdout().flush()?;
    server.run().await
}

async fn read_all(mut body: web::Payload) -> HttpResponse {
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => received += chunk.len() as u64,
            Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
        }
    }
    HttpResponse::Created().json(serde_json::json!({ "received": received }))
}
