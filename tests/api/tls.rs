//! The gateway against an emulator that serves TLS as Box's hosts do (h2 and http/1.1 by ALPN),
//! trusted through `box_ca_file`: which HTTP version carries the parts, on how many connections, and
//! what that does to a capped connection's throughput. Loopback only.
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use box_upload_gateway::emulator::{EmulatorConfig, EmulatorHandle, LinkShape, TlsSource, WireConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::process::{anonymous_env, env_refs, Gateway};
use crate::support::{curl, make_file, spawn_app_with, spawn_replica, Options, TestApp};

const MIB: u64 = 1 << 20;

fn tls(link: LinkShape) -> Box<dyn FnOnce(&mut EmulatorConfig)> {
    Box::new(move |config: &mut EmulatorConfig| {
        config.wire = WireConfig {
            tls: Some(TlsSource::Generated),
            link,
            ..WireConfig::default()
        };
    })
}

fn ca_file(emulator: &EmulatorHandle) -> String {
    let file = emulator
        .ca_file()
        .expect("a generated certificate has its CA written out");
    file.display().to_string()
}

/// A gateway trusting the emulator's CA, with `box_http_version` when given (else the default).
fn trusting(version: Option<&'static str>) -> Options {
    Options {
        gateway: Some(Box::new(move |settings, emulator| {
            settings.box_ca_file = Some(ca_file(emulator));
            if let Some(version) = version {
                settings.box_http_version = version.into();
            }
        })),
        ..Options::default()
    }
}

async fn upload(app: &TestApp, url: &str, path: &Path) -> serde_json::Value {
    let name = format!("tls-{}.bin", uuid::Uuid::new_v4().simple());
    let (status, answer) = app.curl_upload(url, path, &name, &[]).await;
    assert_eq!(status, 201, "{answer}");
    answer
}

/// Uploads a chunked file (12 parts of 256 KiB) through a gateway with `version`, checks that it
/// landed whole, and returns the emulator's counters.
async fn lands_with(version: Option<&'static str>) -> box_upload_gateway::emulator::Counters {
    let app = spawn_app_with(Options {
        emulator: Some(tls(LinkShape::default())),
        ..trusting(version)
    })
    .await;
    assert!(app.emulator.upload_url().starts_with("https://"));
    let (file, sha1) = make_file(3 * MIB);

    let answer = upload(&app, &app.folder_url("0"), file.path()).await;

    app.assert_stored(&answer, &sha1, 3 * MIB);
    let counters = app.emulator.inspect().counters;
    assert_eq!(counters.part_uploads_accepted, 12, "{counters:?}");
    // Every part had a connection of its own while it went up.
    assert_eq!(counters.max_parts_in_flight_per_connection, 1, "{counters:?}");
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_over_tls_with_http1_forced() {
    let counters = lands_with(Some("http1")).await;
    assert_eq!(
        (counters.http2_connections, counters.part_uploads_http2),
        (0, 0),
        "{counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_over_tls_with_http2_forced() {
    let counters = lands_with(Some("http2")).await;
    assert_eq!(counters.part_uploads_http2, 12, "{counters:?}");
    assert_eq!(counters.http2_connections, counters.connections, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_over_tls_with_auto_where_the_host_picks_http2() {
    let counters = lands_with(Some("auto")).await;
    assert_eq!(counters.part_uploads_http2, 12, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_over_tls_with_the_default_over_http1() {
    let counters = lands_with(None).await;
    assert_eq!(
        (counters.http2_connections, counters.part_uploads_http2),
        (0, 0),
        "{counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_box_ca_file_the_emulators_certificate_is_refused_and_nothing_lands() {
    let app = spawn_app_with(Options {
        emulator: Some(tls(LinkShape::default())),
        box_retry_max_attempts: 1,
        ..Options::default()
    })
    .await;
    let (file, _) = make_file(3 * MIB);

    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "untrusted.bin", &[])
        .await;

    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("box_unavailable")),
        "{answer}"
    );
    let held = app.emulator.inspect();
    assert!(held.sessions.is_empty() && held.files.is_empty(), "{held:?}");
}

/// With every connection capped, the default policy at 8 parts in flight goes at least 5 times as
/// fast as at 1: each part has a connection (and so a cap) of its own. A ratio in one run, set by the
/// cap rather than the CPU: 2 MiB at 500 KB/s per connection is 4.2 s at 1 part in flight and 0.5 s
/// at 8. The gateway fills the 8 parts one after the other as the body comes (a debug build reads a
/// raw `curl -T` at about 40 MB/s), which costs the 8 their lead: at 10 MB/s the ratio would still
/// be 5.7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_capped_connections_8_parts_in_flight_go_at_least_5x_one() {
    const SIZE: u64 = 2 * MIB;
    let capped = LinkShape {
        rtt: Duration::ZERO,
        bytes_per_sec: Some(500_000),
    };
    let at = |part_concurrency| Options {
        emulator: Some(tls(capped)),
        part_size: SIZE / 8,
        part_concurrency,
        ..trusting(None)
    };
    let app = spawn_app_with(at(1)).await;
    let eight = spawn_replica(&app, at(8)).await;
    let (file, sha1) = make_file(SIZE);
    let path = file.path().to_str().unwrap();
    let put = |base: &str| format!("{base}/v1/folders/0/files/{}.bin", uuid::Uuid::new_v4().simple());

    let started = Instant::now();
    let (status, one_answer) = curl(&["-T", path, &put(&app.address)]).await;
    let one_wall = started.elapsed();
    assert_eq!(status, 201, "{one_answer}");
    let one = app.emulator.inspect().counters;
    app.emulator.reset_max_parts_in_flight();
    let started = Instant::now();
    let (status, eight_answer) = curl(&["-T", path, &put(&eight.address)]).await;
    let eight_wall = started.elapsed();
    assert_eq!(status, 201, "{eight_answer}");
    let both = app.emulator.inspect().counters;

    app.assert_stored(&one_answer, &sha1, SIZE);
    app.assert_stored(&eight_answer, &sha1, SIZE);
    assert_eq!(one.max_parts_in_flight, 1, "{one:?}");
    assert_eq!(both.max_parts_in_flight, 8, "{both:?}");
    assert_eq!(both.max_parts_in_flight_per_connection, 1, "{both:?}");
    assert_eq!(both.part_uploads_http2, 0, "{both:?}");
    let speedup = one_wall.as_secs_f64() / eight_wall.as_secs_f64();
    println!(
        "2 MiB, 500 KB/s per connection: 1 in flight {one_wall:?}, 8 in flight {eight_wall:?}, {speedup:.1} x"
    );
    assert!(
        speedup >= 5.0,
        "8 parts in flight are only {speedup:.1} x one ({one_wall:?} / {eight_wall:?})"
    );
}

/// A CONNECT proxy on loopback that remembers where each tunnel went.
async fn connect_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tunnels = Arc::new(Mutex::new(Vec::new()));
    let seen = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0; 1];
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()) else {
                    let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await;
                    return;
                };
                seen.lock().unwrap().push(target.to_owned());
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, tunnels)
}

/// `HTTPS_PROXY` takes the gateway's Box calls through the proxy (a CONNECT tunnel, TLS inside it,
/// the emulator's CA trusted through `BOX_CA_FILE`); `NO_PROXY` naming Box's host goes around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_carries_box_calls_and_no_proxy_bypasses_it() {
    let emulator = box_upload_gateway::emulator::Emulator::spawn(EmulatorConfig {
        min_chunked_size: 1 << 20,
        part_size: Some(256 << 10),
        wire: WireConfig {
            tls: Some(TlsSource::Generated),
            ..WireConfig::default()
        },
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let (proxy, tunnels) = connect_proxy().await;
    let box_host = emulator.addr().to_string();
    let mut env = anonymous_env(&emulator);
    env.extend([("BOX_CA_FILE", ca_file(&emulator)), ("HTTPS_PROXY", proxy)]);
    let (file, sha1) = make_file(3 * MIB);
    let body = std::fs::read(file.path()).unwrap();
    // Before the first client: under nextest this test is a process of its own, and no earlier test
    // installed the provider reqwest needs (`rustls-no-provider`).
    box_upload_gateway::http_client::install_tls_provider();
    let http = reqwest::Client::new();
    let put = |gateway: &Gateway, name: &str| {
        http.put(gateway.url(&format!("/v1/folders/0/files/{name}")))
            .body(body.clone())
            .send()
    };

    let proxied = Gateway::start(&env_refs(&env)).await;
    let answer: serde_json::Value = put(&proxied, "proxied.bin").await.unwrap().json().await.unwrap();
    proxied.finish().await;
    let through_proxy = tunnels.lock().unwrap().len();

    env.push(("NO_PROXY", "127.0.0.1".to_owned()));
    let direct = Gateway::start(&env_refs(&env)).await;
    let bypassed: serde_json::Value = put(&direct, "direct.bin").await.unwrap().json().await.unwrap();
    direct.finish().await;

    assert_eq!(answer["upload"]["sha1"], sha1, "{answer}");
    assert_eq!(bypassed["upload"]["sha1"], sha1, "{bypassed}");
    let tunnels = tunnels.lock().unwrap().clone();
    assert!(through_proxy > 0, "no Box call went through HTTPS_PROXY");
    assert!(
        tunnels.iter().all(|t| *t == box_host),
        "{tunnels:?} are not all to {box_host}"
    );
    assert_eq!(
        tunnels.len(),
        through_proxy,
        "a call went through the proxy despite NO_PROXY"
    );
    let files = emulator.inspect().files;
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.sha1 == sha1), "{files:?}");
}
