//! Item JSON and the checks every create path shares: names, parents, conflicts, quota.
use super::super::errors::BoxApiError;
use super::super::state::{FileRec, FolderRec, Item, SharedLink, State};
use super::super::Shared;
use serde_json::{json, Value};

/// Box's name rules (developer.box.com, "Files" guide): 1..=255 chars, no `/` or `\`, no leading or
/// trailing spaces, not `.` or `..`, no non-printable characters.
pub fn validate_name(name: &str) -> Result<(), BoxApiError> {
    let invalid = |why: &str| {
        Err(BoxApiError::new(
            400,
            "item_name_invalid",
            format!("Item name invalid: {why}"),
        ))
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.chars().count() > 255 {
        return Err(BoxApiError::new(400, "item_name_too_long", "Item name too long"));
    }
    if name.contains(['/', '\\']) {
        return invalid("contains a slash");
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return invalid("leading or trailing spaces");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    if name.chars().any(char::is_control) {
        return invalid("non-printable characters");
    }
    Ok(())
}

pub fn file_json(state: &State, f: &FileRec) -> Value {
    let v = f.current();
    let parent = state.folders.get(&f.parent_id);
    json!({
        "type": "file",
        "id": f.id,
        "etag": f.etag(),
        "sequence_id": f.etag(),
        "name": f.name,
        "size": v.size,
        "sha1": v.sha1,
        "file_version": {"type": "file_version", "id": v.id, "sha1": v.sha1},
        "parent": parent.map(folder_mini),
        "path_collection": {"total_count": 0, "entries": []},
        "created_at": f.created_at.to_rfc3339(),
        "modified_at": f.modified_at.to_rfc3339(),
        "content_created_at": f.content_created_at.clone().unwrap_or_else(|| f.created_at.to_rfc3339()),
        "content_modified_at": f.content_modified_at.clone().unwrap_or_else(|| f.modified_at.to_rfc3339()),
        "description": f.description,
        "item_status": "active",
        "trashed_at": null,
        "purged_at": null,
        "shared_link": f.shared_link.as_ref().map(shared_link_json),
    })
}

/// A shared link as Box answers it in a file object (OpenAPI `File.shared_link`).
fn shared_link_json(l: &SharedLink) -> Value {
    let vanity_url = l.vanity_name.as_ref().map(|n| {
        let base = l.url.rsplit_once("/s/").map_or(l.url.as_str(), |(b, _)| b);
        format!("{base}/v/{n}")
    });
    json!({
        "url": l.url,
        "download_url": l.can_download.then_some(&l.download_url),
        "vanity_url": vanity_url,
        "vanity_name": l.vanity_name,
        "access": l.access,
        "effective_access": l.access,
        "effective_permission": if l.can_download { "can_download" } else { "can_preview" },
        "unshared_at": l.unshared_at,
        "is_password_enabled": l.password_set,
        "permissions": {"can_download": l.can_download, "can_preview": true, "can_edit": false},
        "download_count": 0,
        "preview_count": 0,
    })
}

pub fn file_mini(f: &FileRec) -> Value {
    let v = f.current();
    json!({
        "type": "file", "id": f.id, "etag": f.etag(), "sequence_id": f.etag(), "name": f.name,
        "sha1": v.sha1, "file_version": {"type": "file_version", "id": v.id, "sha1": v.sha1},
    })
}

pub fn folder_mini(d: &FolderRec) -> Value {
    json!({"type": "folder", "id": d.id, "etag": "0", "sequence_id": "0", "name": d.name})
}

pub fn folder_exists(state: &State, id: &str) -> bool {
    state.folders.contains_key(id)
}

/// 404 `invalid_parameter` is what Box answers for a parent folder that is missing or hidden.
pub fn missing_parent(id: &str) -> BoxApiError {
    BoxApiError::new(404, "invalid_parameter", format!("Parent folder {id} not found"))
}

/// 409 `item_name_in_use` naming the existing item; Box's web uploader reads `conflicts` as one
/// object although the OpenAPI documents an array, so the form is configurable.
pub fn check_conflict(
    shared: &Shared,
    state: &State,
    folder_id: &str,
    name: &str,
    except_file: Option<&str>,
) -> Result<(), BoxApiError> {
    let conflict = match state.item_named(folder_id, name) {
        Some(Item::File(f)) if Some(f.id.as_str()) != except_file => file_mini(f),
        Some(Item::Folder(d)) => folder_mini(d),
        _ => return Ok(()),
    };
    let conflicts = if shared.config.conflicts_as_array {
        json!([conflict])
    } else {
        conflict
    };
    Err(
        BoxApiError::new(409, "item_name_in_use", "Item with the same name already exists")
            .with_context(json!({ "conflicts": conflicts })),
    )
}

/// `replacing`: bytes of the version about to be replaced, which stop counting.
pub fn check_quota(shared: &Shared, state: &State, adding: u64, replacing: u64) -> Result<(), BoxApiError> {
    let Some(limit) = shared.config.storage_limit_bytes else {
        return Ok(());
    };
    if state.used_bytes() - replacing + adding > limit {
        return Err(BoxApiError::new(
            403,
            "storage_limit_exceeded",
            "Account storage limit reached",
        ));
    }
    Ok(())
}
