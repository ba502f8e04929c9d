//! The fields that land with a file (issue 25): `description`, `tags`, `shared_link` and Box
//! `metadata`, parsed from the caller's text into types, the metadata checked against its templates'
//! schemas (fetched through `box_api`, cached a few minutes) before any byte is read, and applied
//! after the commit by the pipeline's finish step (`Pipeline::finish_fields`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::box_api::{MetadataTemplate, PaceKey};

/// Box's limit on a file's description (OpenAPI `PUT /files/{id}`, `description.maxLength`), in
/// characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Box's limit on an item's tags (OpenAPI `File--Full.tags`, `maxItems`).
pub const MAX_TAGS: usize = 100;
/// Templates one upload may fill: each costs a schema read (unless cached) and a Box call after the
/// commit, so a request cannot turn into thousands of calls.
pub const MAX_TEMPLATES: usize = 10;

/// The fields as the caller sent them (multipart fields, query parameters, tus metadata): text.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawFields<'a> {
    pub description: Option<&'a str>,
    /// Comma separated; blanks around each tag and empty tags are dropped.
    pub tags: Option<&'a str>,
    /// `open`, `company` or `collaborators`.
    pub shared_link: Option<&'a str>,
    /// JSON: `{"<scope>.<templateKey>": {"field": value, ...}, ...}`.
    pub metadata: Option<&'a str>,
}

/// The fields, typed. Not yet checked against Box's templates: see `Pipeline::check_fields`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileFields {
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub shared_link: Option<SharedLinkAccess>,
    /// In the order the caller gave them.
    pub metadata: Vec<MetadataValues>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedLinkAccess {
    Open,
    Company,
    Collaborators,
}

impl SharedLinkAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Company => "company",
            Self::Collaborators => "collaborators",
        }
    }
}

/// One template's values for the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataValues {
    /// `global`, `enterprise` or `enterprise_{id}`.
    pub scope: String,
    pub template_key: String,
    pub values: Map<String, Value>,
}

impl MetadataValues {
    /// `scope.templateKey`, as the caller named it.
    pub fn name(&self) -> String {
        format!("{}.{}", self.scope, self.template_key)
    }

    fn is_properties(&self) -> bool {
        self.scope == "global" && self.template_key == "properties"
    }
}

/// A field that cannot land as sent. `field` names it as the caller did (`description`,
/// `metadata`, `enterprise.invoiceData`, `enterprise.invoiceData.amount`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A bad `description`, `tags` or `shared_link` (the routes answer 400).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Malformed metadata JSON, an unknown template or field, a value of the wrong type or not an
    /// option (the routes answer 422 `invalid_metadata`).
    #[error("{field}: {reason}")]
    Metadata { field: String, reason: String },
}

impl FieldError {
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } | Self::Metadata { field, .. } => field,
        }
    }

    pub fn is_metadata(&self) -> bool {
        matches!(self, Self::Metadata { .. })
    }

    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    fn metadata(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Metadata {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl FileFields {
    /// Parses the caller's text. Absent or empty fields are not set (`tags=""` sets no tags).
    pub fn parse(raw: RawFields<'_>) -> Result<Self, FieldError> {
        let description = match raw.description {
            Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => {
                return Err(FieldError::invalid(
                    "description",
                    format!(
                        "{} characters; Box allows at most {MAX_DESCRIPTION_CHARS}",
                        d.chars().count()
                    ),
                ))
            }
            Some(d) if !d.is_empty() => Some(d.to_owned()),
            _ => None,
        };
        let tags = match raw.tags.map(parse_tags).transpose()? {
            Some(t) if !t.is_empty() => Some(t),
            _ => None,
        };
        let shared_link = match raw.shared_link.map(str::trim) {
            None | Some("") => None,
            Some("open") => Some(SharedLinkAccess::Open),
            Some("company") => Some(SharedLinkAccess::Company),
            Some("collaborators") => Some(SharedLinkAccess::Collaborators),
            Some(other) => {
                return Err(FieldError::invalid(
                    "shared_link",
                    format!("{other:?} is not open, company or collaborators"),
                ))
            }
        };
        let metadata = match raw.metadata.map(str::trim) {
            None | Some("") => Vec::new(),
            Some(json) => parse_metadata(json)?,
        };
        Ok(Self {
            description,
            tags,
            shared_link,
            metadata,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.description.is_none()
            && self.tags.is_none()
            && self.shared_link.is_none()
            && self.metadata.is_empty()
    }

    /// Whether the file itself changes (one `PUT /files/{id}`).
    pub(super) fn updates_file(&self) -> bool {
        self.description.is_some() || self.tags.is_some() || self.shared_link.is_some()
    }
}

fn parse_tags(text: &str) -> Result<Vec<String>, FieldError> {
    let mut tags: Vec<String> = Vec::new();
    for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(FieldError::invalid(
            "tags",
            format!("{} tags; Box allows at most {MAX_TAGS} on a file", tags.len()),
        ));
    }
    Ok(tags)
}

fn parse_metadata(json: &str) -> Result<Vec<MetadataValues>, FieldError> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| FieldError::metadata("metadata", format!("not JSON: {e}")))?;
    let Value::Object(templates) = value else {
        return Err(FieldError::metadata(
            "metadata",
            "must be an object: {\"<scope>.<templateKey>\": {\"field\": value}}",
        ));
    };
    if templates.len() > MAX_TEMPLATES {
        return Err(FieldError::metadata(
            "metadata",
            format!("{} templates; at most {MAX_TEMPLATES} an upload", templates.len()),
        ));
    }
    templates
        .into_iter()
        .map(|(name, values)| {
            let (scope, template_key) = name
                .split_once('.')
                .filter(|(s, k)| valid_scope(s) && valid_template_key(k))
                .ok_or_else(|| {
                    FieldError::metadata(
                        name.as_str(),
                        "not <scope>.<templateKey> (scope global, enterprise or enterprise_<id>)",
                    )
                })?;
            let Value::Object(values) = values else {
                return Err(FieldError::metadata(
                    name.as_str(),
                    "must be an object of field values",
                ));
            };
            Ok(MetadataValues {
                scope: scope.to_owned(),
                template_key: template_key.to_owned(),
                values,
            })
        })
        .collect()
}

/// The scopes Box's metadata URLs take (OpenAPI: `global`, `enterprise`; `enterprise_{id}` names
/// the enterprise itself).
fn valid_scope(scope: &str) -> bool {
    matches!(scope, "global" | "enterprise")
        || scope
            .strip_prefix("enterprise_")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Box's `templateKey` pattern (OpenAPI `MetadataTemplate.templateKey`): `^[a-zA-Z_][-a-zA-Z0-9_]*$`,
/// at most 64 characters. It also keeps the key a plain URL segment.
fn valid_template_key(key: &str) -> bool {
    let mut chars = key.chars();
    key.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Fields whose metadata fits its templates, as `Pipeline::check_fields` found them: what
/// `Prepared::with_fields` takes. Serializable so a resumable upload can keep them in the state store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckedFields(FileFields);

impl CheckedFields {
    pub fn fields(&self) -> &FileFields {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn new(fields: FileFields) -> Self {
        Self(fields)
    }
}

/// Checks one template's values against its schema: every key a field of it, every value of the
/// field's type. `global.properties` (Box's free-form template) takes any key with text.
pub fn check_values(values: &MetadataValues, schema: Option<&MetadataTemplate>) -> Result<(), FieldError> {
    let name = values.name();
    if values.is_properties() {
        return match values.values.iter().find(|(_, v)| !v.is_string()) {
            Some((k, _)) => Err(FieldError::metadata(
                format!("{name}.{k}"),
                "global.properties takes text",
            )),
            None => Ok(()),
        };
    }
    let schema =
        schema.ok_or_else(|| FieldError::metadata(name.as_str(), "Box has no such metadata template"))?;
    for (key, value) in &values.values {
        let field_name = format!("{name}.{key}");
        let field = schema
            .fields
            .iter()
            .find(|f| &f.key == key)
            .ok_or_else(|| FieldError::metadata(field_name.as_str(), "not a field of the template"))?;
        let option = |s: &str| field.options.iter().any(|o| o.key == s);
        let why = match (field.kind.as_str(), value) {
            ("string", Value::String(_)) => None,
            ("float", Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => None,
            ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => None,
            ("date", Value::String(s)) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => None,
            ("date", _) => Some("a date-time in RFC 3339 (2026-12-31T00:00:00Z)".to_owned()),
            ("enum", Value::String(s)) if option(s) => None,
            ("multiSelect", Value::Array(items)) if items.iter().all(|i| i.as_str().is_some_and(option)) => {
                None
            }
            ("enum" | "multiSelect", _) => Some(format!(
                "{} of: {}",
                if field.kind == "enum" { "one" } else { "a list" },
                field
                    .options
                    .iter()
                    .map(|o| o.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            // A type the gateway does not know (Box adds some, `taxonomy`): Box checks it when the
            // values are applied, and a refusal then removes the file (`FieldsNotApplied`).
            (kind, v) if !matches!(kind, "string" | "float" | "integer") && !v.is_null() => None,
            (kind, _) => Some(format!("a {kind}")),
        };
        if let Some(expected) = why {
            return Err(FieldError::metadata(
                field_name,
                format!("{value} is not {expected}"),
            ));
        }
    }
    Ok(())
}

/// Whose view of which template: (principal, scope, template key).
type SchemaKey = (PaceKey, String, String);

/// Templates' schemas as Box answered them, per principal (a template is visible to some users
/// only), for `ttl`. At most `max_entries`: when full, expired entries go, then the oldest.
pub(super) struct SchemaCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<SchemaKey, (Instant, Arc<MetadataTemplate>)>>,
}

impl SchemaCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, who: &PaceKey, scope: &str, key: &str, now: Instant) -> Option<Arc<MetadataTemplate>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(who.clone(), scope.to_owned(), key.to_owned()))
            .filter(|(at, _)| now.duration_since(*at) < self.ttl)
            .map(|(_, t)| t.clone())
    }

    pub fn put(&self, who: &PaceKey, scope: &str, key: &str, schema: Arc<MetadataTemplate>, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        make_room(&mut entries, self.max_entries, self.ttl, now);
        entries.insert((who.clone(), scope.to_owned(), key.to_owned()), (now, schema));
    }
}

/// Keeps a cache below `max` entries before one more goes in: the expired go first, then the oldest.
pub(super) fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    entries: &mut HashMap<K, (Instant, V)>,
    max: usize,
    ttl: Duration,
    now: Instant,
) {
    if entries.len() < max {
        return;
    }
    entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
    while entries.len() >= max {
        let Some(oldest) = entries
            .iter()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        entries.remove(&oldest);
    }
}

/// What the finish step applied, as Box answered it.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct AppliedFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_link: Option<SharedLink>,
    /// By `scope.templateKey` as the caller named it: the values Box holds (its `$` keys left out).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// A file's shared link: its URL lets anyone it admits in (with `open`, anyone at all), so it is
/// kept out of `Debug` (and so out of logs); the client gets it in the answer.
#[derive(Clone, PartialEq, Serialize)]
pub struct SharedLink {
    pub access: String,
    pub url: String,
}

impl std::fmt::Debug for SharedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLink")
            .field("access", &self.access)
            .field("url", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for AppliedFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedFields")
            .field("description", &self.description)
            .field("tags", &self.tags)
            .field("shared_link", &self.shared_link)
            .field("metadata", &self.metadata.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::box_api::{MetadataField, MetadataOption};
    use serde_json::json;

    fn raw(metadata: &str) -> RawFields<'_> {
        RawFields {
            metadata: Some(metadata),
            ..RawFields::default()
        }
    }

    fn invoice() -> MetadataTemplate {
        let field = |kind: &str, key: &str, options: &[&str]| MetadataField {
            kind: kind.into(),
            key: key.into(),
            options: options
                .iter()
                .map(|o| MetadataOption { key: (*o).into() })
                .collect(),
        };
        MetadataTemplate {
            scope: "enterprise_12345".into(),
            template_key: "invoiceData".into(),
            fields: vec![
                field("float", "amount", &[]),
                field("string", "vendor", &[]),
                field("date", "dueDate", &[]),
                field("enum", "status", &["open", "paid"]),
                field("multiSelect", "regions", &["EU", "US"]),
                field("integer", "count", &[]),
                field("taxonomy", "office", &[]),
            ],
        }
    }

    fn check(values: Value) -> Result<(), FieldError> {
        let parsed = FileFields::parse(raw(&json!({"enterprise.invoiceData": values}).to_string()))?;
        check_values(&parsed.metadata[0], Some(&invoice()))
    }

    #[test]
    fn text_fields_are_parsed_into_types() {
        let f = FileFields::parse(RawFields {
            description: Some("December invoice"),
            tags: Some(" invoice, 2026,,invoice ,  "),
            shared_link: Some("company"),
            metadata: Some(
                r#"{"enterprise.invoiceData": {"amount": 1250.5}, "global.properties": {"a": "b"}}"#,
            ),
        })
        .unwrap();
        assert_eq!(f.description.as_deref(), Some("December invoice"));
        assert_eq!(f.tags, Some(vec!["invoice".to_owned(), "2026".to_owned()]));
        assert_eq!(f.shared_link, Some(SharedLinkAccess::Company));
        let names: Vec<String> = f.metadata.iter().map(MetadataValues::name).collect();
        assert_eq!(names, ["enterprise.invoiceData", "global.properties"]);
        assert!(FileFields::parse(RawFields::default()).unwrap().is_empty());
        let blank = FileFields::parse(RawFields {
            description: Some(""),
            tags: Some(" , "),
            shared_link: Some(""),
            metadata: Some("  "),
        })
        .unwrap();
        assert!(blank.is_empty());
    }

    #[test]
    fn bad_text_fields_name_the_field() {
        let long = "é".repeat(257);
        let cases = [
            (
                RawFields {
                    description: Some(&long),
                    ..RawFields::default()
                },
                "description",
                false,
            ),
            (
                RawFields {
                    shared_link: Some("public"),
                    ..RawFields::default()
                },
                "shared_link",
                false,
            ),
            (raw("{"), "metadata", true),
            (raw("[1]"), "metadata", true),
            (raw(r#"{"invoiceData": {}}"#), "invoiceData", true),
            (raw(r#"{"team.invoiceData": {}}"#), "team.invoiceData", true),
            (raw(r#"{"enterprise.in/../x": {}}"#), "enterprise.in/../x", true),
            (raw(r#"{"enterprise_12a.k": {}}"#), "enterprise_12a.k", true),
            (raw(r#"{"enterprise.k": 3}"#), "enterprise.k", true),
        ];
        for (input, field, metadata) in cases {
            let err = FileFields::parse(input).unwrap_err();
            assert_eq!((err.field(), err.is_metadata()), (field, metadata), "{err}");
        }
        assert!(FileFields::parse(RawFields {
            description: Some(&"é".repeat(256)),
            ..RawFields::default()
        })
        .is_ok());
        let many_tags = (0..101).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",");
        let err = FileFields::parse(RawFields {
            tags: Some(&many_tags),
            ..RawFields::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), "tags");
        let many: Map<String, Value> = (0..11).map(|i| (format!("enterprise.t{i}"), json!({}))).collect();
        assert_eq!(
            FileFields::parse(raw(&Value::Object(many).to_string()))
                .unwrap_err()
                .field(),
            "metadata"
        );
    }

    #[test]
    fn values_are_checked_against_the_schema() {
        check(json!({
            "amount": 1250.5, "vendor": "ACME", "dueDate": "2026-12-31T00:00:00+01:00",
            "status": "open", "regions": ["EU", "US"], "count": 3, "office": ["node-1"]
        }))
        .unwrap();
        check(json!({"amount": 7})).unwrap();
        let cases = [
            (json!({"amount": "1250.5"}), "amount"),
            (json!({"amount": null}), "amount"),
            (json!({"vendor": 3}), "vendor"),
            (json!({"dueDate": "2026-12-31"}), "dueDate"),
            (json!({"dueDate": 20261231}), "dueDate"),
            (json!({"status": "overdue"}), "status"),
            (json!({"status": ["open"]}), "status"),
            (json!({"regions": ["EU", "Mars"]}), "regions"),
            (json!({"regions": "EU"}), "regions"),
            (json!({"count": 1.5}), "count"),
            (json!({"office": null}), "office"),
            (json!({"colour": "red"}), "colour"),
        ];
        for (values, field) in cases {
            let err = check(values.clone()).unwrap_err();
            assert_eq!(
                err.field(),
                format!("enterprise.invoiceData.{field}"),
                "{values}: {err}"
            );
            assert!(err.is_metadata());
        }
        let parsed = FileFields::parse(raw(r#"{"enterprise.missing": {"a": 1}}"#)).unwrap();
        assert_eq!(
            check_values(&parsed.metadata[0], None).unwrap_err().field(),
            "enterprise.missing"
        );
        let props = FileFields::parse(raw(r#"{"global.properties": {"a": "x", "b": 2}}"#)).unwrap();
        assert_eq!(
            check_values(&props.metadata[0], None).unwrap_err().field(),
            "global.properties.b"
        );
    }

    #[test]
    fn the_schema_cache_expires_and_stays_bounded() {
        let cache = SchemaCache::new(Duration::from_secs(300), 2);
        let who = PaceKey::of("app", None);
        let other = PaceKey::of("app", Some("42"));
        let t0 = Instant::now();
        let schema = Arc::new(invoice());
        cache.put(&who, "enterprise", "a", schema.clone(), t0);
        assert!(cache
            .get(&who, "enterprise", "a", t0 + Duration::from_secs(299))
            .is_some());
        assert!(cache
            .get(&who, "enterprise", "a", t0 + Duration::from_secs(300))
            .is_none());
        assert!(
            cache.get(&other, "enterprise", "a", t0).is_none(),
            "each principal has its own"
        );
        cache.put(
            &who,
            "enterprise",
            "b",
            schema.clone(),
            t0 + Duration::from_secs(1),
        );
        cache.put(&who, "enterprise", "c", schema, t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(3);
        assert!(
            cache.get(&who, "enterprise", "a", now).is_none(),
            "the oldest made room"
        );
        assert!(
            cache.get(&who, "enterprise", "b", now).is_some()
                && cache.get(&who, "enterprise", "c", now).is_some()
        );
    }

    #[test]
    fn a_shared_links_url_stays_out_of_debug() {
        let applied = AppliedFields {
            shared_link: Some(SharedLink {
                access: "open".into(),
                url: "https://app.box.com/s/secrettoken".into(),
            }),
            ..AppliedFields::default()
        };
        let shown = format!("{applied:?}");
        assert!(
            !shown.contains("secrettoken") && shown.contains("open"),
            "{shown}"
        );
        assert!(serde_json::to_string(&applied).unwrap().contains("secrettoken"));
    }
}
