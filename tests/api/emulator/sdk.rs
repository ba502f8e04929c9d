//! The official Python SDK (box-sdk-gen), unmodified, against a spawned emulator with Box's defaults.
use super::helpers::*;
use crate::python::{python, script};
use box_upload_gateway::emulator::{EmulatorConfig, DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_TOKEN};
use serde_json::Value;
use std::process::Command;

#[tokio::test]
async fn the_python_sdk_round_trips_through_the_emulator() {
    let emu = spawn_with(EmulatorConfig::default()).await;
    let base = emu.handle.base_url();

    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script("sdk_roundtrip.py"))
            .args([base.as_str(), DEV_TOKEN, DEV_CLIENT_ID, DEV_CLIENT_SECRET])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();

    assert!(
        out.status.success(),
        "sdk_roundtrip.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let seen = emu.inspect();
    let big = seen
        .file(report["big_id"].as_str().unwrap())
        .expect("big file stored");
    assert_eq!(big.sha1, report["big_sha1"].as_str().unwrap());
    assert_eq!(big.size, report["big_size"].as_u64().unwrap());
    assert_eq!(big.parent_id, report["folder_id"].as_str().unwrap());
    let session = &seen.sessions[0];
    assert_eq!((session.part_size, session.total_parts), (8 * MIB, 3));
    let sizes: Vec<u64> = session.parts.iter().map(|p| p.size).collect();
    assert_eq!(sizes, [8 * MIB, 8 * MIB, big.size - 16 * MIB]);
    let small = seen
        .file(report["small_id"].as_str().unwrap())
        .expect("small file stored");
    assert_eq!(small.sha1, report["small_sha1"].as_str().unwrap());
    let c = &seen.counters;
    assert_eq!(
        (
            c.commits_created,
            c.direct_uploads,
            c.part_uploads_accepted,
            c.tokens_issued
        ),
        (1, 1, 3, 1)
    );
    assert_eq!(
        c.max_parts_in_flight, 1,
        "the generated SDK uploads one part at a time"
    );
}
