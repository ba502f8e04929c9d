//! `on_conflict=error|version|rename`, for direct and chunked uploads, with Box's conflict as an
//! object (Box's web uploader's reading) and as an array (the documented form).
use crate::support::*;

async fn conflicts(conflicts_as_array: bool, size: u64) {
    let app = spawn_app_with(Options {
        conflicts_as_array,
        ..Options::default()
    })
    .await;
    let (file, sha1) = make_file(size);
    let url = app.folder_url("0");
    let (status, first) = app.curl_upload(&url, file.path(), "report.pdf", &[]).await;
    assert_eq!(status, 201, "{first}");
    let id = first["file"]["id"].as_str().unwrap().to_owned();

    // error (the default): 409 naming the existing file, before the body is read.
    let (status, answer) = app.curl_upload(&url, file.path(), "report.pdf", &[]).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "name_conflict");
    assert_eq!(answer["error"]["existing_file_id"], id.as_str());

    // version: a new version of the same file.
    let (status, answer) = app
        .curl_upload(&url, file.path(), "report.pdf", &[("on_conflict", "version")])
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["file"]["id"], id.as_str());
    app.assert_stored(&answer, &sha1, size);

    // rename: the next free name, twice.
    for n in 1..=2 {
        let (status, answer) = app
            .curl_upload(&url, file.path(), "report.pdf", &[("on_conflict", "rename")])
            .await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["file"]["name"], format!("report ({n}).pdf"));
        assert_ne!(answer["file"]["id"], id.as_str());
        app.assert_stored(&answer, &sha1, size);
    }
    app.assert_no_open_session().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_direct_uploads() {
    conflicts(false, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_chunked_uploads() {
    conflicts(false, THRESHOLD + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_reported_as_an_array() {
    conflicts(true, THRESHOLD + 1).await;
    conflicts(true, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policy_is_refused() {
    let app = spawn_app().await;
    let (file, _) = make_file(10);
    let (status, answer) = app
        .curl_upload(
            &app.folder_url("0"),
            file.path(),
            "x",
            &[("on_conflict", "overwrite")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "invalid_on_conflict");
}
