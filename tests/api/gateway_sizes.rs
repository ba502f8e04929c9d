//! Every size boundary through curl multipart, checked byte for byte in the emulator.
use crate::support::*;

async fn upload_and_check(size: u64, expect_method: &str) {
    // Arrange
    let app = spawn_app().await;
    let (file, sha1) = make_file(size);
    // Act
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), &format!("f{size}.bin"), &[])
        .await;
    // Assert
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["upload"]["method"], expect_method, "{answer}");
    app.assert_stored(&answer, &sha1, size);
    if expect_method == "chunked" {
        let session = sessions(&app.emulator)
            .into_iter()
            .find(|s| s["state"] == "committed")
            .expect("a committed session");
        let parts = session["parts"].as_array().unwrap();
        assert_eq!(parts.len() as u64, size.div_ceil(PART));
        for part in parts {
            let offset = part["offset"].as_u64().unwrap();
            assert_eq!(offset % PART, 0);
            assert_eq!(
                part["size"].as_u64().unwrap(),
                PART.min(size - offset),
                "every part is exactly the part size but the last"
            );
        }
        assert_eq!(answer["upload"]["part_size"], PART);
        assert_eq!(answer["upload"]["parts"], size.div_ceil(PART));
    }
    app.assert_no_open_session().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file() {
    upload_and_check(0, "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte() {
    upload_and_check(1, "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn just_below_the_threshold() {
    upload_and_check(THRESHOLD - 1, "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_threshold() {
    upload_and_check(THRESHOLD, "chunked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_multiple_of_the_part_size() {
    upload_and_check(PART * 7, "chunked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_of_the_part_size_plus_one() {
    upload_and_check(PART * 7 + 1, "chunked").await;
}

/// At least 300 MB through curl, with Box's common 8 MiB part size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_megabytes_through_curl() {
    let part = 8 * 1024 * 1024;
    let app = spawn_app_with(Options {
        part_size: part,
        threshold: 20_000_000,
        part_concurrency: 4,
        memory_budget_bytes: 64 * 1024 * 1024,
        ..Options::default()
    })
    .await;
    let size = 300 * 1024 * 1024 + 12_345;
    let (file, sha1) = make_file(size);
    let (status, answer) = app
        .curl_upload(&app.folder_url("0"), file.path(), "big.bin", &[])
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["upload"]["method"], "chunked");
    assert_eq!(answer["upload"]["parts"], size.div_ceil(part));
    app.assert_stored(&answer, &sha1, size);
    // Memory did not grow with the file: never more than the budget held at once.
    assert!(app.metric("gateway_buffered_bytes_peak").await <= (64 * 1024 * 1024) as f64);
}
