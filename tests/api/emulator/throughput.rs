//! How fast the emulator takes parts (ignored by default: run it with `--ignored --nocapture`,
//! ideally with `--release`, and `EMULATOR_BENCH_DATA_DIR` on a tmpfs). The gateway's benchmark needs the emulator well above ~1 GB/s.
use super::helpers::*;
use box_upload_gateway::emulator::EmulatorConfig;
use bytes::Bytes;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn part_uploads_throughput() {
    let size: u64 = 512 * MIB;
    // EMULATOR_BENCH_DATA_DIR=/dev/shm/x keeps disk writeback out of the measurement.
    let data_dir = std::env::var_os("EMULATOR_BENCH_DATA_DIR").map(std::path::PathBuf::from);
    let emu = spawn_with(EmulatorConfig {
        part_size: Some(8 * MIB),
        data_dir,
        // EMULATOR_BENCH_TRUST_DIGESTS=1 measures the emulator without its two SHA-1s per byte.
        trust_digests: std::env::var_os("EMULATOR_BENCH_TRUST_DIGESTS").is_some(),
        ..EmulatorConfig::default()
    })
    .await;
    let data = Bytes::from(seeded_bytes(8 * MIB, 60));
    let digest = format!("sha={}", sha1_b64(&data));
    let s = emu.create_session("bench.bin", size).await;
    let url = s["session_endpoints"]["upload_part"].as_str().unwrap().to_owned();

    let t = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..4u64 {
        let (client, url, data, digest) = (emu.client.clone(), url.clone(), data.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            for i in (lane..size / (8 * MIB)).step_by(4) {
                let first = i * 8 * MIB;
                let res = client
                    .put(&url)
                    .bearer_auth(box_upload_gateway::emulator::DEV_TOKEN)
                    .header(
                        "content-range",
                        format!("bytes {first}-{}/{size}", first + 8 * MIB - 1),
                    )
                    .header("digest", &digest)
                    .body(data.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} MiB of parts in {secs:.2} s: {:.0} MB/s (client and server on the same cores)",
        size / MIB,
        size as f64 / secs / 1e6
    );
}
