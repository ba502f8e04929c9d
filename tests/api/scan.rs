//! The scan module (`box_upload_gateway::scan`) against a real clamd (`support/clamd.rs`): verdicts as clamd
//! gives them, fail-closed errors when clamd stops, refuses or stalls, and the connection pool, with
//! clamd's own log (the client port of each stream it scanned) as the ground truth.
use std::sync::Arc;
use std::time::{Duration, Instant};

use box_upload_gateway::metrics::GatewayMetrics;
use box_upload_gateway::scan::{
    ErrorKind, Scan, ScanError, Scanner, ScannerSettings, Verdict, CLAMAV_MAX_FILE_BYTES,
};
use bytes::Bytes;

use crate::support::clamd::{eicar, Clamd, ClamdOptions, SIGNATURE};
use crate::support::eventually;

const MIB: usize = 1024 * 1024;

fn settings(clamd: &Clamd) -> ScannerSettings {
    ScannerSettings {
        address: clamd.address(),
        max_connections: 4,
        timeout: Duration::from_secs(10),
        min_scan_bytes_per_sec: 0,
        max_bytes: CLAMAV_MAX_FILE_BYTES,
        queue_bytes: 16 * MIB,
        idle: Duration::from_secs(30),
    }
}

fn new_scanner(settings: ScannerSettings) -> (Scanner, Arc<GatewayMetrics>) {
    let metrics = Arc::new(GatewayMetrics::new(&prometheus::Registry::new()).unwrap());
    let scanner = Scanner::new(settings, metrics.clone(), tokio::runtime::Handle::current());
    (scanner, metrics)
}

fn scans(metrics: &GatewayMetrics, verdict: &str) -> u64 {
    metrics.scans.with_label_values(&[verdict]).get()
}

fn errors(metrics: &GatewayMetrics, kind: ErrorKind) -> u64 {
    metrics.scan_errors.with_label_values(&[kind.as_str()]).get()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

/// Pushes `data` as the pipeline would: parts of `part` bytes, each cut into pieces of `piece`
/// bytes (slices of the same buffer: nothing copied), every piece holding a clone of the part's
/// `hold` (the budget permit the part's upload shares).
async fn push_parts(
    scan: &mut Scan,
    data: &Bytes,
    part: usize,
    piece: usize,
    hold: &Arc<()>,
) -> Result<(), Verdict> {
    for part_start in (0..data.len()).step_by(part) {
        let part_end = (part_start + part).min(data.len());
        for start in (part_start..part_end).step_by(piece) {
            let end = (start + piece).min(part_end);
            scan.push(data.slice(start..end), hold.clone()).await?;
        }
    }
    Ok(())
}

async fn scan_all(scanner: &Scanner, data: &[u8]) -> Verdict {
    let data = Bytes::copy_from_slice(data);
    let mut scan = scanner.start(data.len() as u64).unwrap();
    if let Err(verdict) = push_parts(&mut scan, &data, 8 * MIB, 256 * 1024, &Arc::new(())).await {
        return verdict;
    }
    scan.finish().await
}

fn error_kind(verdict: &Verdict) -> ErrorKind {
    match verdict {
        Verdict::Error(ScanError { kind, .. }) => *kind,
        other => panic!("expected an error verdict (never clean), got {other:?}"),
    }
}

/// Waits until the scan's task holds a connection (it takes one in the background).
async fn until_in_use(metrics: &GatewayMetrics, n: i64) {
    let started = Instant::now();
    while metrics.scanner_connections_in_use.get() != n {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "connections in use never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eicar_string_is_found_and_named() {
    let Some(clamd) = Clamd::start("scan::the_eicar_string_is_found_and_named").await else {
        return;
    };
    let (scanner, metrics) = new_scanner(settings(&clamd));

    let verdict = scan_all(&scanner, &eicar()).await;

    assert_eq!(
        verdict,
        Verdict::Infected {
            signature: SIGNATURE.into()
        }
    );
    assert_eq!(clamd.wait_for_scans(1).await[0].1, format!("{SIGNATURE} FOUND"));
    assert_eq!(scans(&metrics, "infected"), 1);
    assert_eq!(metrics.scan_bytes.get(), eicar().len() as u64);
    assert_eq!(metrics.scan_latency.get_sample_count(), 1);
}

/// `clamd_address = "unix:/path"`: the same scan over clamd's local socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_as_well() {
    let Some(clamd) = Clamd::start("scan::a_unix_socket_serves_as_well").await else {
        return;
    };
    let address = format!(
        "unix:{}",
        clamd.unix_address().to_string().trim_start_matches("unix:")
    );
    let (scanner, metrics) = new_scanner(ScannerSettings {
        address: address.parse().unwrap(),
        ..settings(&clamd)
    });

    assert_eq!(scanner.ping().await, Ok(()));
    assert_eq!(
        scan_all(&scanner, &eicar()).await,
        Verdict::Infected {
            signature: SIGNATURE.into()
        }
    );
    assert_eq!(scan_all(&scanner, b"clean").await, Verdict::Clean);
    assert_eq!((scans(&metrics, "infected"), scans(&metrics, "clean")), (1, 1));
    assert_eq!(metrics.scanner_up.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_file_is_clean_and_clamd_keeps_nothing() {
    let Some(clamd) = Clamd::start("scan::a_clean_file_is_clean_and_clamd_keeps_nothing").await else {
        return;
    };
    let (scanner, metrics) = new_scanner(settings(&clamd));
    let data = random(3 * MIB + 17, 1);

    let verdict = scan_all(&scanner, &data).await;

    assert_eq!(verdict, Verdict::Clean);
    assert_eq!(clamd.wait_for_scans(1).await[0].1, "OK");
    // clamd answers, then deletes the stream's file: a moment later, not before.
    eventually(
        "clamd deletes each stream's file after its scan",
        Duration::from_secs(5),
        || async { clamd.temporary_files() == 0 },
    )
    .await;
    assert_eq!(scans(&metrics, "clean"), 1);
    assert_eq!(metrics.scan_bytes.get(), data.len() as u64);
    assert_eq!(metrics.scanner_connections_in_use.get(), 0);
    assert_eq!(metrics.scanner_up.get(), 1);
    // Empty files are scanned too (clamd answers OK to an empty stream).
    assert_eq!(scan_all(&scanner, b"").await, Verdict::Clean);
}

/// The test string in the middle of 30 MB, across a part's boundary and a chunk's, pushed in the
/// pipeline's part-sized pieces: found. The same bytes without it: clean. Every piece's hold is
/// given back once the scan has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_string_in_the_middle_of_30_mb_is_found() {
    let Some(clamd) = Clamd::start("scan::the_test_string_in_the_middle_of_30_mb_is_found").await else {
        return;
    };
    let (scanner, metrics) = new_scanner(settings(&clamd));
    let clean = random(30 * MIB, 2);
    let mut infected = clean.clone();
    let at = 16 * MIB - 30;
    infected[at..at + eicar().len()].copy_from_slice(&eicar());

    for (data, expected) in [
        (
            infected,
            Verdict::Infected {
                signature: SIGNATURE.into(),
            },
        ),
        (clean, Verdict::Clean),
    ] {
        let data = Bytes::from(data);
        let hold = Arc::new(());
        let mut scan = scanner.start(data.len() as u64).unwrap();
        push_parts(&mut scan, &data, 8 * MIB, 256 * 1024, &hold)
            .await
            .unwrap();
        assert_eq!(scan.finish().await, expected);
        assert_eq!(Arc::strong_count(&hold), 1, "a piece's hold outlived the scan");
    }

    let logged = clamd.wait_for_scans(2).await;
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[0].1, format!("{SIGNATURE} FOUND"));
    assert_eq!(logged[1].1, "OK");
    assert_eq!(metrics.scan_bytes.get(), 60 * MIB as u64);
    assert_eq!((scans(&metrics, "infected"), scans(&metrics, "clean")), (1, 1));
}

/// clamd killed mid-stream: an error, never clean; the pieces' holds go back; once clamd is back,
/// scans work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_stopped_mid_stream_is_an_error_not_clean() {
    let Some(mut clamd) = Clamd::start("scan::clamd_stopped_mid_stream_is_an_error_not_clean").await else {
        return;
    };
    let (scanner, metrics) = new_scanner(settings(&clamd));
    let data = Bytes::from(random(40 * MIB, 3));
    let hold = Arc::new(());
    let mut scan = scanner.start(data.len() as u64).unwrap();

    push_parts(&mut scan, &data.slice(..10 * MIB), 8 * MIB, 256 * 1024, &hold)
        .await
        .unwrap();
    // The stream is under way: clamd has taken bytes of it.
    let started = Instant::now();
    while metrics.scan_bytes.get() < MIB as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no byte reached clamd"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clamd.stop().await;
    let pushed = push_parts(&mut scan, &data.slice(10 * MIB..), 8 * MIB, 256 * 1024, &hold).await;
    let verdict = scan.finish().await;

    assert_eq!(error_kind(&verdict), ErrorKind::ConnectionLost, "{verdict:?}");
    if let Err(early) = pushed {
        assert_eq!(early, verdict, "push and finish tell the same failure");
    }
    assert_eq!(
        Arc::strong_count(&hold),
        1,
        "the queue kept a hold after the scan failed"
    );
    assert_eq!(scans(&metrics, "error"), 1);
    assert_eq!(errors(&metrics, ErrorKind::ConnectionLost), 1);
    assert_eq!(metrics.scanner_connections_in_use.get(), 0);

    // Down: a new scan cannot connect.
    assert_eq!(error_kind(&scan_all(&scanner, b"x").await), ErrorKind::Connect);
    assert_eq!(metrics.scanner_up.get(), 0);
    // Back on the same port: scans work again.
    clamd.restart().await;
    assert_eq!(scan_all(&scanner, &data[..MIB]).await, Verdict::Clean);
    assert_eq!(metrics.scanner_up.get(), 1);
}

/// A stream longer than clamd's StreamMaxLength: clamd refuses it mid-stream and closes; the
/// verdict is clamd's refusal, an error, never clean. At exactly the limit it scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_stream_max_length_is_an_error_not_clean() {
    let options = ClamdOptions {
        stream_max_length: Some(MIB as u64),
        ..ClamdOptions::default()
    };
    let Some(clamd) = Clamd::start_with("scan::past_stream_max_length_is_an_error_not_clean", options).await
    else {
        return;
    };
    let (scanner, metrics) = new_scanner(settings(&clamd));

    // Refused at the header of the first chunk past the limit: well past it, and one byte past it.
    for len in [6 * MIB, MIB + 1] {
        let verdict = scan_all(&scanner, &random(len, 4)).await;
        assert_eq!(
            error_kind(&verdict),
            ErrorKind::SizeLimit,
            "{len} bytes: {verdict:?}"
        );
    }
    assert_eq!(scan_all(&scanner, &random(MIB, 5)).await, Verdict::Clean);

    assert_eq!(errors(&metrics, ErrorKind::SizeLimit), 2);
    assert_eq!(
        clamd.wait_for_scans(1).await.len(),
        1,
        "clamd scanned only the stream within its limit"
    );
}

/// clamd does not look past `MaxFileSize` and, unless `AlertExceedsMax` is on, says OK: why
/// deploy/base's clamd.conf raises the limits to ClamAV's own and turns the alert on. With it, what
/// clamd cannot look at whole is not clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_says_ok_past_its_limits_unless_told_to_alert() {
    let mut file = random(2 * MIB, 9);
    let at = file.len() - 100;
    file[at..at + eicar().len()].copy_from_slice(&eicar());
    let test = "scan::clamd_says_ok_past_its_limits_unless_told_to_alert";
    let limited = ClamdOptions {
        max_file_size: Some(MIB as u64),
        ..ClamdOptions::default()
    };

    let Some(unalerted) = Clamd::start_with(test, limited.clone()).await else {
        return;
    };
    let (scanner, _) = new_scanner(settings(&unalerted));
    assert_eq!(
        scan_all(&scanner, &file).await,
        Verdict::Clean,
        "clamd's fail-open default changed"
    );
    drop(unalerted);

    let alerted = ClamdOptions {
        alert_exceeds_max: true,
        ..limited
    };
    let Some(clamd) = Clamd::start_with(test, alerted).await else {
        return;
    };
    let (scanner, _) = new_scanner(settings(&clamd));
    let verdict = scan_all(&scanner, &file).await;
    assert_eq!(
        verdict,
        Verdict::Infected {
            signature: "Heuristics.Limits.Exceeded.MaxFileSize".into()
        }
    );
    assert!(verdict.is_limits_exceeded());
    let deployed = Clamd::start_with(test, ClamdOptions::deployed()).await.unwrap();
    let (scanner, _) = new_scanner(settings(&deployed));
    assert_eq!(
        scan_all(&scanner, &file).await,
        Verdict::Infected {
            signature: SIGNATURE.into()
        }
    );
}

/// Larger than `max_bytes`: refused before any byte reaches clamd, when the size is known, and as
/// soon as the bytes pushed pass it otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_never_sent() {
    let Some(clamd) = Clamd::start("scan::too_large_is_never_sent").await else {
        return;
    };
    let (scanner, metrics) = new_scanner(ScannerSettings {
        max_bytes: 1000,
        ..settings(&clamd)
    });

    assert_eq!(
        scanner.start(1001).err(),
        Some(Verdict::TooLarge {
            size: 1001,
            limit: 1000
        })
    );
    let mut scan = scanner.start(1000).unwrap();
    scan.push(Bytes::from(vec![0u8; 600]), ()).await.unwrap();
    let too_large = Verdict::TooLarge {
        size: 1200,
        limit: 1000,
    };
    assert_eq!(
        scan.push(Bytes::from(vec![0u8; 600]), ()).await,
        Err(too_large.clone())
    );
    assert_eq!(scan.finish().await, too_large);

    assert_eq!(scans(&metrics, "too_large"), 2);
    assert!(clamd.scans().is_empty(), "clamd scanned: {:?}", clamd.scans());
    until_in_use(&metrics, 0).await;
}

/// A clamd that stops answering (SIGSTOP): the verdict's wait and a stalled write each end at the
/// scan's timeout, as errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_is_an_error() {
    let Some(clamd) = Clamd::start("scan::a_deadline_that_passes_is_an_error").await else {
        return;
    };
    let timeout = Duration::from_millis(500);
    let (scanner, metrics) = new_scanner(ScannerSettings {
        timeout,
        ..settings(&clamd)
    });
    clamd.pause();

    // The kernel accepts the connection and buffers a small stream; the verdict never comes.
    let started = Instant::now();
    let small = scan_all(&scanner, b"hello").await;
    let waited = started.elapsed();
    // 30 MB overflow the socket buffers: a write stalls.
    let large = scan_all(&scanner, &random(30 * MIB, 6)).await;
    clamd.resume();

    assert_eq!(error_kind(&small), ErrorKind::Timeout, "{small:?}");
    assert!(
        waited >= timeout && waited < timeout * 4,
        "the verdict was waited for {waited:?}, the timeout is {timeout:?}"
    );
    assert_eq!(error_kind(&large), ErrorKind::Timeout, "{large:?}");
    assert_eq!(errors(&metrics, ErrorKind::Timeout), 2);
    // clamd answers again, and the scanner uses it.
    assert_eq!(scan_all(&scanner, b"hello").await, Verdict::Clean);
}

/// Scan after scan on one connection (clamd saw every stream from one client port); none kept
/// with `idle` zero; a stale connection (clamd restarted) is replaced before a stream starts; and
/// when every connection is in use past the timeout, `busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_reuses_its_connections() {
    let Some(mut clamd) = Clamd::start("scan::the_pool_reuses_its_connections").await else {
        return;
    };
    let (pooled, metrics) = new_scanner(settings(&clamd));
    for i in 0..5 {
        assert_eq!(scan_all(&pooled, &random(100_000, i)).await, Verdict::Clean);
    }
    let logged = clamd.wait_for_scans(5).await;
    assert_eq!(logged.len(), 5);
    assert!(logged.iter().all(|(port, _)| *port == logged[0].0), "{logged:?}");
    assert_eq!(metrics.scanner_connections_in_use.get(), 0);

    let (unpooled, _) = new_scanner(ScannerSettings {
        idle: Duration::ZERO,
        ..settings(&clamd)
    });
    for i in 0..3 {
        assert_eq!(scan_all(&unpooled, &random(1000, i)).await, Verdict::Clean);
    }
    let mut ports: Vec<u16> = clamd.wait_for_scans(8).await[5..].iter().map(|s| s.0).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "a connection per scan");

    // The pooled scanner's idle connection dies with clamd; the next scan PINGs it, finds it
    // closed, and streams on a new one.
    clamd.restart().await;
    assert_eq!(
        scan_all(&pooled, &eicar()).await,
        Verdict::Infected {
            signature: SIGNATURE.into()
        }
    );
    let last_port = clamd.wait_for_scans(9).await[8].0;
    assert_ne!(last_port, logged[0].0);

    let (single, metrics) = new_scanner(ScannerSettings {
        max_connections: 1,
        timeout: Duration::from_millis(300),
        ..settings(&clamd)
    });
    let mut first = single.start(5).unwrap();
    first.push(Bytes::from_static(b"first"), ()).await.unwrap();
    until_in_use(&metrics, 1).await;
    let second = scan_all(&single, b"second").await;
    assert_eq!(error_kind(&second), ErrorKind::Busy);
    assert_eq!(first.finish().await, Verdict::Clean);
    assert_eq!(errors(&metrics, ErrorKind::Busy), 1);
}

/// Not a test: figures for the report and for sizing (run with
/// `cargo test --test api scan::throughput -- --ignored --nocapture`): clamd's start and memory with
/// the one-signature database, and the scan module's throughput into clamd, one and several streams
/// of 200 MB in 8 MiB parts of 1 MiB pieces, with clamd's limits as deployed. Wall times depend on
/// what else the machine runs (the load average is printed); CPU seconds per GB much less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let Some(clamd) = Clamd::start_with("scan::throughput", ClamdOptions::deployed()).await else {
        return;
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let (rss, _) = clamd.memory_kib();
    println!(
        "clamd: ready {:?} after spawn, {} MiB resident",
        clamd.startup,
        rss / 1024
    );
    let (scanner, metrics) = new_scanner(ScannerSettings {
        max_connections: 8,
        timeout: Duration::from_secs(120),
        ..settings(&clamd)
    });
    let size = 200 * MIB;
    let data = Bytes::from(random(size, 7));
    for streams in [1usize, 4, 8] {
        let (clamd_cpu, own_cpu) = (
            clamd.cpu_seconds(),
            crate::support::clamd::cpu_seconds("/proc/self/stat"),
        );
        let latency_before = metrics.scan_latency.get_sample_sum();
        let started = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let (scanner, data) = (scanner.clone(), data.clone());
                // clamd keeps the verdicts of files it has seen (by their MD5) and does not scan them
                // again: each stream starts with bytes of its own.
                let own = Bytes::from(format!("{streams:04}{i:04}").into_bytes());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut scan = scanner.start((own.len() + data.len()) as u64).unwrap();
                    scan.push(own, ()).await.unwrap();
                    push_parts(&mut scan, &data, 8 * MIB, MIB, &Arc::new(()))
                        .await
                        .unwrap();
                    let sent = started.elapsed();
                    (scan.finish().await, sent)
                })
            })
            .collect();
        let mut sent = Duration::ZERO;
        for task in tasks {
            let (verdict, took) = task.await.unwrap();
            assert_eq!(verdict, Verdict::Clean);
            sent = sent.max(took);
        }
        let secs = started.elapsed().as_secs_f64();
        let latency = (metrics.scan_latency.get_sample_sum() - latency_before) / streams as f64;
        let gb = (streams * size) as f64 / 1e9;
        println!(
            "scan: {streams} x {} MB: the bytes handed over in {:.2} s ({:.0} MB/s in all), verdicts \
             {:.2} s after the last byte (mean), all done in {secs:.2} s ({:.0} MB/s in all); CPU per GB: \
             clamd {:.2} s, the gateway's side {:.2} s",
            size / 1_000_000,
            sent.as_secs_f64(),
            gb * 1000.0 / sent.as_secs_f64(),
            latency,
            gb * 1000.0 / secs,
            (clamd.cpu_seconds() - clamd_cpu) / gb,
            (crate::support::clamd::cpu_seconds("/proc/self/stat") - own_cpu) / gb,
        );
    }
    let (rss, peak) = clamd.memory_kib();
    println!(
        "clamd: {} MiB resident after, {} MiB at its peak",
        rss / 1024,
        peak / 1024
    );

    // Small files one after another, the two ways in turns (the machine's load varies).
    let small = random(64 * 1024, 8);
    let (kept, _) = new_scanner(settings(&clamd));
    let (each, _) = new_scanner(ScannerSettings {
        idle: Duration::ZERO,
        ..settings(&clamd)
    });
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (i, scanner) in [&kept, &each].into_iter().enumerate() {
            let n = 100;
            let started = Instant::now();
            for _ in 0..n {
                assert_eq!(scan_all(scanner, &small).await, Verdict::Clean);
            }
            times[i].push(started.elapsed().as_secs_f64() * 1000.0 / n as f64);
        }
    }
    for (what, mut t) in [
        ("a session kept (PING, INSTREAM)", times[0].clone()),
        ("a connection each", times[1].clone()),
    ] {
        t.sort_by(f64::total_cmp);
        println!("scan: 64 KiB files one after another, {what}: {:.2} ms a scan (median of 5 x 100; {:.2} .. {:.2})", t[2], t[0], t[4]);
    }
}
