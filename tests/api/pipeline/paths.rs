//! Upload by path: folders created once (even by a crowd over two replicas), reused from the cache,
//! resolved again when Box says a cached one is gone, and a file in the way refused.
use super::helpers::*;
use box_upload_gateway::emulator::ROOT_FOLDER_ID;
use box_upload_gateway::pipeline::{FolderPath, PathError, UploadError};

fn path(p: &str) -> FolderPath {
    FolderPath::new(p.split('/').map(str::to_owned).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_three_level_path_is_created_once_then_reused() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let p = &replica.pipeline;
    let dest = path("Finance/Invoices/2026-12");

    let small = data(1000, 1);
    let (first, landed) = upload_at(p, &dest, "inv-001.pdf", &small).await.unwrap();
    let big = data(CHUNKED_FROM + 5, 2);
    let (second, chunked) = upload_at(p, &dest, "inv-002.pdf", &big).await.unwrap();

    let made: Vec<&str> = first.created.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(made, ["Finance", "Finance/Invoices", "Finance/Invoices/2026-12"]);
    assert_eq!(first.created[2].id, first.folder_id);
    assert!(second.created.is_empty() && second.cached);
    assert_eq!(second.folder_id, first.folder_id);
    assert_eq!(
        replica.box_calls("create_folder"),
        3,
        "the second upload asked Box nothing about folders"
    );
    let seen = emu.inspect();
    let finance = seen.child_folder(ROOT_FOLDER_ID, "Finance").unwrap();
    let invoices = seen.child_folder(&finance.id, "Invoices").unwrap();
    let month = seen.child_folder(&invoices.id, "2026-12").unwrap();
    assert_eq!(month.id, first.folder_id);
    assert_eq!(seen.folders.len(), 4, "All Files and the three levels");
    let one = seen.file(landed.file.id().unwrap()).unwrap();
    let two = seen.file(chunked.file.id().unwrap()).unwrap();
    assert_eq!(
        (one.parent_id.as_str(), one.sha1.as_str()),
        (month.id.as_str(), sha1_hex(&small).as_str())
    );
    assert_eq!(
        (two.parent_id.as_str(), two.sha1.as_str()),
        (month.id.as_str(), sha1_hex(&big).as_str())
    );
    assert_eq!(replica.metrics.folders_created.get(), 3);

    // Another replica (its cache empty) meets the folders with one call a level, creating none, and
    // a path given in other case leads to the same folder (Box compares names regardless of case).
    let other = Replica::new(&emu);
    let again = other
        .pipeline
        .resolve_folder(ROOT_FOLDER_ID, &path("FINANCE/invoices/2026-12"), true)
        .await
        .unwrap();
    assert_eq!(
        (again.folder_id.as_str(), again.created.len()),
        (first.folder_id.as_str(), 0)
    );
    assert_eq!(other.box_calls("create_folder"), 3);
    assert_eq!(emu.inspect().folders.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_uploads_into_one_new_path_over_two_replicas_create_each_folder_once() {
    let emu = emulator().await;
    let replicas = [Replica::new(&emu), Replica::new(&emu)];
    let dest = path("Crowd/2026/Uploads");
    let uploads = (0..20u64).map(|i| {
        let replica = &replicas[(i % 2) as usize];
        let dest = dest.clone();
        async move { upload_at(&replica.pipeline, &dest, &format!("f{i:02}.bin"), &data(2000, i)).await }
    });
    let results = futures_util::future::join_all(uploads).await;

    let mut created = Vec::new();
    let mut leaves = std::collections::BTreeSet::new();
    for result in results {
        let (folder, _) = result.unwrap();
        leaves.insert(folder.folder_id);
        created.extend(folder.created.into_iter().map(|c| c.path));
    }
    created.sort();
    assert_eq!(
        created,
        ["Crowd", "Crowd/2026", "Crowd/2026/Uploads"],
        "each level reported created once"
    );
    assert_eq!(leaves.len(), 1);
    let seen = emu.inspect();
    assert_eq!(
        seen.folders.len(),
        4,
        "All Files and three levels: {:?}",
        seen.folders
    );
    let leaf = leaves.into_iter().next().unwrap();
    assert_eq!(seen.files.iter().filter(|f| f.parent_id == leaf).count(), 20);
    // In each replica, one resolution per path at a time: at most one call a level per replica.
    for r in &replicas {
        assert!(
            r.box_calls("create_folder") <= 3,
            "{}",
            r.box_calls("create_folder")
        );
    }
    let made: u64 = replicas.iter().map(|r| r.metrics.folders_created.get()).sum();
    assert_eq!(made, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_the_way_is_a_path_conflict_naming_the_segment() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let reports = emu.create_folder(ROOT_FOLDER_ID, "Reports");
    let (_, file) = upload_at(&replica.pipeline, &path("Reports"), "2026", b"abc")
        .await
        .unwrap();

    let err = replica
        .pipeline
        .resolve_folder(ROOT_FOLDER_ID, &path("Reports/2026/Q4"), true)
        .await
        .unwrap_err();
    let UploadError::Path(PathError::Conflict {
        segment,
        path: at,
        id,
        kind,
    }) = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (segment.as_str(), at.as_str(), kind.as_str()),
        ("2026", "Reports/2026", "file")
    );
    assert_eq!(Some(id.as_str()), file.file.id());
    let seen = emu.inspect();
    assert_eq!(seen.folders.len(), 2, "no folder created: {:?}", seen.folders);
    assert!(seen.child_folder(&reports, "Q4").is_none());
    let code = box_upload_gateway::error::ApiError::from(UploadError::Path(PathError::Conflict {
        segment,
        path: at,
        id,
        kind,
    }));
    assert_eq!((code.status.as_u16(), code.code), (409, "path_conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_creating_folders_a_missing_level_is_not_found() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let a = emu.create_folder(ROOT_FOLDER_ID, "A");
    let b = emu.create_folder(&a, "B");

    let found = replica
        .pipeline
        .resolve_folder(ROOT_FOLDER_ID, &path("a/b"), false)
        .await
        .unwrap();
    assert_eq!((found.folder_id.as_str(), found.created.len()), (b.as_str(), 0));
    let err = replica
        .pipeline
        .resolve_folder(ROOT_FOLDER_ID, &path("A/B/C/D"), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, UploadError::Path(PathError::NotFound { segment, path }) if segment == "C" && path == "A/B/C"),
        "{err:?}"
    );
    assert_eq!(replica.box_calls("create_folder"), 0);
    assert_eq!(emu.inspect().folders.len(), 3);
    let mapped = box_upload_gateway::error::ApiError::from(err);
    assert_eq!((mapped.status.as_u16(), mapped.code), (404, "folder_not_found"));
    // A path below a root that is not All Files: the root is the top, and resolving stays under it.
    let under_b = replica
        .pipeline
        .resolve_folder(&b, &path("X/Y"), true)
        .await
        .unwrap();
    let seen = emu.inspect();
    let x = seen.child_folder(&b, "X").unwrap();
    assert_eq!(seen.child_folder(&x.id, "Y").unwrap().id, under_b.folder_id);
}

/// Deletes a folder of All Files in Box, behind the gateway's back.
fn delete_top_folder(emu: &box_upload_gateway::emulator::EmulatorHandle, name: &str) {
    let id = emu
        .inspect()
        .child_folder(ROOT_FOLDER_ID, name)
        .unwrap()
        .id
        .clone();
    emu.delete_folder(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_folder_deleted_in_box_is_resolved_again_once() {
    let emu = emulator().await;
    let replica = Replica::new(&emu);
    let p = &replica.pipeline;
    let dest = path("Inbox/Scans");
    let first = p.resolve_folder(ROOT_FOLDER_ID, &dest, true).await.unwrap();
    let scans = first.folder_id.clone();
    delete_top_folder(&emu, "Inbox");

    // The upload's session creation meets the cached (deleted) folder: 404, then the path is
    // resolved again and the upload prepared once more.
    let body = data(CHUNKED_FROM, 9);
    let (folder, landed) = upload_at(p, &dest, "scan.pdf", &body).await.unwrap();
    assert_ne!(folder.folder_id, scans);
    assert_eq!(folder.created.len(), 2, "both levels made again");
    let seen = emu.inspect();
    assert_eq!(
        seen.file(landed.file.id().unwrap()).unwrap().parent_id,
        folder.folder_id
    );
    assert_eq!(
        replica.counter_sum("gateway_path_resolutions_total", "result", "stale"),
        1
    );

    // A deeper path below the cached levels: creating under a gone folder is 404, and the walk
    // starts again from the root.
    delete_top_folder(&emu, "Inbox");
    let deeper = p
        .resolve_folder(ROOT_FOLDER_ID, &path("Inbox/Scans/2026"), true)
        .await
        .unwrap();
    assert_eq!(deeper.created.len(), 3);
    assert_eq!(
        replica.counter_sum("gateway_path_resolutions_total", "result", "stale"),
        2
    );
    // A root that does not exist is Box's 404, not a loop.
    let err = p.resolve_folder("999999", &path("A"), true).await.unwrap_err();
    assert!(
        matches!(&err, UploadError::Box(e) if e.status() == Some(404)),
        "{err:?}"
    );
}
