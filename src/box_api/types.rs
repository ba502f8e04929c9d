//! Box's wire types, only the fields the gateway relies on (box-api.md).
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadSession {
    pub id: String,
    pub part_size: u64,
    pub total_parts: u64,
    pub session_endpoints: SessionEndpoints,
    #[serde(default)]
    pub session_expires_at: Option<String>,
}

/// Session URLs are always taken from here, never built by hand: Box may answer on another host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEndpoints {
    pub upload_part: String,
    pub commit: String,
    pub abort: String,
    pub list_parts: String,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPart {
    pub part_id: String,
    pub offset: u64,
    pub size: u64,
    /// Hex, although the part went up with a base64 digest.
    #[serde(default)]
    pub sha1: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PartEcho {
    pub part: UploadPart,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PartsPage {
    #[serde(default)]
    pub total_count: Option<u64>,
    #[serde(default)]
    pub entries: Vec<UploadPart>,
}

/// One page of `GET /folders/{id}/items`; entries are kept as Box sent them.
#[derive(Debug, Deserialize)]
pub(crate) struct ItemsPage {
    #[serde(default)]
    pub total_count: Option<u64>,
    #[serde(default)]
    pub entries: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FileCollection {
    pub entries: Vec<Value>,
}

/// A Box file object, kept as Box sent it (the gateway answers it verbatim), with typed accessors.
#[derive(Debug, Clone, PartialEq)]
pub struct FileObject(pub Value);

impl FileObject {
    pub fn id(&self) -> Option<&str> {
        self.0.get("id").and_then(Value::as_str)
    }
    pub fn sha1(&self) -> Option<&str> {
        self.0.get("sha1").and_then(Value::as_str)
    }
    pub fn size(&self) -> Option<u64> {
        self.0.get("size").and_then(Value::as_u64)
    }
}

/// `POST {api}/folders`: what Box said about the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderCreated {
    /// 201: the folder is new.
    Created { id: String },
    /// 409 `item_name_in_use` naming a folder: it was there already (or another request, on this
    /// replica or another, made it first).
    Existing { id: String },
}

/// A folder creation that failed.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// 409 `item_name_in_use` naming a file (or web link): no folder can have this name here.
    #[error("a {kind} (id {id}) holds the name {name:?}")]
    ItemInTheWay { name: String, id: String, kind: String },
    #[error(transparent)]
    Box(#[from] super::BoxError),
}

/// A metadata template's schema (`GET {api}/metadata_templates/{scope}/{key}/schema`), the parts
/// values are checked against. Field types stay text: Box adds types (`taxonomy`) now and then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataTemplate {
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub template_key: String,
    #[serde(default)]
    pub fields: Vec<MetadataField>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataField {
    /// `string`, `float`, `date`, `enum`, `multiSelect`, `integer` (deprecated), `taxonomy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    #[serde(default)]
    pub options: Vec<MetadataOption>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataOption {
    pub key: String,
}

/// What `PUT {api}/files/{id}` changes; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FileUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// `{"access": "open" | "company" | "collaborators"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_link: Option<SharedLinkUpdate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedLinkUpdate {
    pub access: String,
}

/// Box's error body. Every field is optional: a proxy in front of Box may answer anything.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BoxErrorBody {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub context_info: Option<Value>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// The existing item named by a 409 `item_name_in_use`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: String,
    pub kind: String,
    pub sha1: Option<String>,
}

impl BoxErrorBody {
    /// Box's error body from any bytes: each field taken when it has the right type, so a proxy's
    /// body, or a Box body with one odd field (`"status": "503"`), loses only that field.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
            return Self::default();
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        Self {
            status: map
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            code: text("code"),
            message: text("message"),
            context_info: map.get("context_info").cloned(),
            request_id: text("request_id"),
        }
    }

    /// `context_info.conflicts` is documented as an array, but Box's own web uploader
    /// (box-ui-elements MultiputUpload.js) reads it as one object: accept both.
    pub fn conflict(&self) -> Option<Conflict> {
        let conflicts = self.context_info.as_ref()?.get("conflicts")?;
        let item = match conflicts {
            Value::Array(items) => items.first()?,
            other => other,
        };
        Some(Conflict {
            id: item.get("id")?.as_str()?.to_owned(),
            kind: item
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("file")
                .to_owned(),
            sha1: item
                .get("sha1")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conflict_is_read_as_object_or_array() {
        let object: BoxErrorBody = serde_json::from_value(json!({
            "code": "item_name_in_use",
            "context_info": {"conflicts": {"type": "file", "id": "12", "name": "a", "sha1": "AB"}}
        }))
        .unwrap();
        let array: BoxErrorBody = serde_json::from_value(json!({
            "code": "item_name_in_use",
            "context_info": {"conflicts": [{"type": "folder", "id": "34", "name": "a"}]}
        }))
        .unwrap();
        assert_eq!(
            object.conflict(),
            Some(Conflict {
                id: "12".into(),
                kind: "file".into(),
                sha1: Some("ab".into())
            })
        );
        assert_eq!(
            array.conflict(),
            Some(Conflict {
                id: "34".into(),
                kind: "folder".into(),
                sha1: None
            })
        );
        assert_eq!(BoxErrorBody::default().conflict(), None);
    }
}
