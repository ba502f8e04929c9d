//! Box metadata as the emulator keeps it: templates (loaded from `--metadata-templates FILE` or the
//! control API, in the shape of Box's `POST /metadata_templates/schema` body) and the schema check
//! of instances.
//!
//! Wire shapes from Box's OpenAPI description (box/box-openapi, `MetadataTemplate`, `Metadata--Full`,
//! `MetadataError`) and the developer guides (guides/metadata/fields/*).
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Box's built-in free-form template: any keys, string values.
pub const PROPERTIES: (&str, &str) = ("global", "properties");

/// The enterprise an `enterprise` scope stands for when `EmulatorConfig::enterprise_id` is not set.
pub const DEFAULT_ENTERPRISE_ID: &str = "12345";

/// A template in Box's shape (camelCase), as a template file or the control API gives it. Fields Box
/// answers but a file need not carry (`id`, `type`) are ignored on input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataTemplate {
    /// `global`, `enterprise` or `enterprise_{id}`; kept as `global` or `enterprise_{id}`.
    pub scope: String,
    pub template_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default)]
    pub hidden: bool,
    #[serde(default)]
    pub fields: Vec<TemplateField>,
    #[serde(default)]
    pub copy_instance_on_item_copy: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateField {
    #[serde(rename = "type")]
    pub kind: FieldKind,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub hidden: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<TemplateOption>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateOption {
    pub key: String,
}

/// Box's field types; `integer` is deprecated (answered, never accepted in a new template by Box,
/// accepted here so a template read from Box can be loaded as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FieldKind {
    String,
    Float,
    Date,
    Enum,
    MultiSelect,
    Integer,
}

/// Templates from JSON text (a file or a control-API body), checked: a list of templates, Box's list
/// answer (`{"entries": [...]}`), or one template.
pub fn parse_templates(text: &[u8], enterprise_id: &str) -> Result<Vec<MetadataTemplate>, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) if map.get("entries").is_some_and(Value::is_array) => {
            match map.remove("entries") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        }
        one => vec![one],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let t = serde_json::from_value(item).map_err(|e| format!("template {i}: {e}"))?;
            checked(t, enterprise_id)
        })
        .collect()
}

/// A template as Box would accept it (key pattern, scope, fields), its scope made explicit.
pub fn checked(mut t: MetadataTemplate, enterprise_id: &str) -> Result<MetadataTemplate, String> {
    t.scope = scope_id(&t.scope, enterprise_id).ok_or_else(|| {
        format!(
            "template {}: scope {:?} is not global or enterprise",
            t.template_key, t.scope
        )
    })?;
    if !valid_template_key(&t.template_key) {
        return Err(format!(
            "templateKey {:?}: 1 to 64 characters, a letter or _ first, then letters, digits, - or _",
            t.template_key
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for f in &t.fields {
        if f.key.is_empty() || f.key.len() > 256 || f.key.starts_with('$') || !seen.insert(f.key.as_str()) {
            return Err(format!(
                "template {}: field key {:?} is empty, too long, reserved or repeated",
                t.template_key, f.key
            ));
        }
        let listed = matches!(f.kind, FieldKind::Enum | FieldKind::MultiSelect);
        if listed == f.options.is_empty() {
            return Err(format!(
                "template {}: field {}: enum and multiSelect fields need options, other types have none",
                t.template_key, f.key
            ));
        }
    }
    Ok(t)
}

/// Box's `templateKey` pattern (OpenAPI `MetadataTemplate.templateKey`): `^[a-zA-Z_][-a-zA-Z0-9_]*$`,
/// at most 64 characters.
pub fn valid_template_key(key: &str) -> bool {
    let mut chars = key.chars();
    key.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A scope as a URL or template names it, as Box answers it: `global`, or `enterprise_{id}` for
/// `enterprise` and the enterprise's own id. None: not a scope (400), or another enterprise's.
pub fn scope_id(scope: &str, enterprise_id: &str) -> Option<String> {
    match scope {
        "global" => Some("global".to_owned()),
        "enterprise" => Some(format!("enterprise_{enterprise_id}")),
        s if s.strip_prefix("enterprise_") == Some(enterprise_id) => Some(s.to_owned()),
        _ => None,
    }
}

/// A template as it lives in the emulator: its spec plus the ids Box gives it and its fields.
#[derive(Clone, Debug)]
pub struct StoredTemplate {
    pub spec: MetadataTemplate,
    pub id: String,
    /// One per field, then one per option of each field, in order.
    pub field_ids: Vec<String>,
}

impl StoredTemplate {
    pub fn new(spec: MetadataTemplate) -> Self {
        let ids = spec.fields.len() + spec.fields.iter().map(|f| f.options.len()).sum::<usize>();
        Self {
            spec,
            id: uuid::Uuid::new_v4().to_string(),
            field_ids: (0..ids).map(|_| uuid::Uuid::new_v4().to_string()).collect(),
        }
    }

    /// The built-in `global.properties`.
    pub fn properties() -> Self {
        Self::new(MetadataTemplate {
            scope: PROPERTIES.0.to_owned(),
            template_key: PROPERTIES.1.to_owned(),
            display_name: Some("Properties".to_owned()),
            hidden: false,
            fields: Vec::new(),
            copy_instance_on_item_copy: false,
        })
    }

    pub fn is_properties(&self) -> bool {
        (self.spec.scope.as_str(), self.spec.template_key.as_str()) == PROPERTIES
    }

    /// `GET /metadata_templates/{scope}/{key}/schema`'s answer.
    pub fn json(&self) -> Value {
        let mut ids = self.field_ids.iter();
        let fields: Vec<Value> = self
            .spec
            .fields
            .iter()
            .map(|f| {
                let mut v = serde_json::to_value(f).unwrap_or_default();
                v["id"] = json!(ids.next());
                v["displayName"] = json!(f.display_name.clone().unwrap_or_else(|| f.key.clone()));
                if !f.options.is_empty() {
                    v["options"] = f
                        .options
                        .iter()
                        .map(|o| json!({"key": o.key, "id": ids.next()}))
                        .collect();
                }
                v
            })
            .collect();
        json!({
            "id": self.id,
            "type": "metadata_template",
            "scope": self.spec.scope,
            "templateKey": self.spec.template_key,
            "displayName": self.spec.display_name.clone().unwrap_or_else(|| self.spec.template_key.clone()),
            "hidden": self.spec.hidden,
            "fields": fields,
            "copyInstanceOnItemCopy": self.spec.copy_instance_on_item_copy,
        })
    }

    /// Checks an instance's user values against the template (Box's `schema_validation_failed`):
    /// every key a field of the template, every value of its field's type. Dates are kept as Box
    /// keeps them: the UTC date at midnight, with milliseconds (guides/metadata/fields/date).
    pub fn check(&self, values: &Map<String, Value>) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        for (key, value) in values {
            if key.starts_with('$') {
                return Err(format!("{key} is a reserved key"));
            }
            let kept = if self.is_properties() {
                // Box's own message for this (OpenAPI `MetadataError` example) names the type
                // `properties`: its values are text.
                value.as_str().map(|_| value.clone()).ok_or_else(|| {
                    format!("Encountered invalid value for template field key={key} field type=properties")
                })?
            } else {
                let field =
                    self.spec.fields.iter().find(|f| &f.key == key).ok_or_else(|| {
                        format!("{key} is not a field of template {}", self.spec.template_key)
                    })?;
                check_value(field, value).map_err(|why| {
                    format!(
                        "Encountered invalid value for template field key={key} field type={}: {why}",
                        kind_name(field.kind)
                    )
                })?
            };
            out.insert(key.clone(), kept);
        }
        Ok(out)
    }
}

fn kind_name(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::String => "string",
        FieldKind::Float => "float",
        FieldKind::Date => "date",
        FieldKind::Enum => "enum",
        FieldKind::MultiSelect => "multiSelect",
        FieldKind::Integer => "integer",
    }
}

fn check_value(field: &TemplateField, value: &Value) -> Result<Value, String> {
    let option = |s: &str| field.options.iter().any(|o| o.key == s);
    match (field.kind, value) {
        (FieldKind::String, Value::String(_)) => Ok(value.clone()),
        (FieldKind::Float, Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => Ok(value.clone()),
        (FieldKind::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        (FieldKind::Date, Value::String(s)) => {
            let at = DateTime::parse_from_rfc3339(s).map_err(|_| "not an RFC 3339 date-time".to_owned())?;
            let day = at
                .with_timezone(&Utc)
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .unwrap_or_default();
            Ok(json!(day.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)))
        }
        (FieldKind::Enum, Value::String(s)) if option(s) => Ok(value.clone()),
        (FieldKind::Enum, Value::String(s)) => Err(format!("{s:?} is not an option")),
        (FieldKind::MultiSelect, Value::Array(items)) => {
            for item in items {
                match item.as_str() {
                    Some(s) if option(s) => {}
                    _ => return Err(format!("{item} is not an option")),
                }
            }
            Ok(value.clone())
        }
        _ => Err(format!("{value} is not a {}", kind_name(field.kind))),
    }
}

/// One template applied to one file.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    /// Starts at 0 and counts updates (OpenAPI `Metadata--Base.$version`).
    pub version: u64,
    pub values: Map<String, Value>,
}

impl Instance {
    /// `Metadata--Full`: the system keys (`$...`) then the user's values.
    pub fn json(&self, template: &StoredTemplate, file_id: &str) -> Value {
        let mut out = Map::new();
        out.insert("$canEdit".into(), json!(true));
        out.insert("$id".into(), json!(self.id));
        out.insert("$parent".into(), json!(format!("file_{file_id}")));
        out.insert("$scope".into(), json!(template.spec.scope));
        out.insert("$template".into(), json!(template.spec.template_key));
        out.insert(
            "$type".into(),
            json!(format!("{}-{}", template.spec.template_key, template.id)),
        );
        out.insert("$typeVersion".into(), json!(0));
        out.insert("$version".into(), json!(self.version));
        out.extend(self.values.clone());
        Value::Object(out)
    }
}

/// Applies a JSON Patch (RFC 6902, as Box's `PUT /files/{id}/metadata/{scope}/{key}` takes it) to an
/// instance's values. Paths are one level (`/key`, with `~1` and `~0` escapes): a template's fields
/// are flat. `add` overwrites an existing value; `replace` needs one (Box's OpenAPI, `value`).
pub fn apply_patch(values: &Map<String, Value>, ops: &Value) -> Result<Map<String, Value>, String> {
    let ops = ops
        .as_array()
        .ok_or("the body must be an array of JSON Patch operations")?;
    let mut out = values.clone();
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("an operation has no op")?;
        let key = |name: &str| -> Result<String, String> {
            let path = op
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{kind}: {name} is missing"))?;
            let key = path
                .strip_prefix('/')
                .filter(|k| !k.contains('/'))
                .ok_or_else(|| format!("{kind}: {path:?} is not a /key path"))?;
            Ok(key.replace("~1", "/").replace("~0", "~"))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind}: value is missing"))
        };
        match kind {
            "add" => {
                out.insert(key("path")?, value()?);
            }
            "replace" => {
                let k = key("path")?;
                if !out.contains_key(&k) {
                    return Err(format!("replace: {k} has no value"));
                }
                out.insert(k, value()?);
            }
            "remove" => {
                let k = key("path")?;
                out.remove(&k)
                    .ok_or_else(|| format!("remove: {k} has no value"))?;
            }
            "test" => {
                let k = key("path")?;
                if out.get(&k) != Some(&value()?) {
                    return Err(format!("test: {k} does not hold the value"));
                }
            }
            "move" | "copy" => {
                let from = key("from")?;
                let v = match kind {
                    "move" => out.remove(&from),
                    _ => out.get(&from).cloned(),
                }
                .ok_or_else(|| format!("{kind}: {from} has no value"))?;
                out.insert(key("path")?, v);
            }
            other => return Err(format!("unknown op {other:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice() -> StoredTemplate {
        let text = br#"[{"scope": "enterprise", "templateKey": "invoiceData", "fields": [
            {"type": "float", "key": "amount"},
            {"type": "string", "key": "vendor"},
            {"type": "date", "key": "due"},
            {"type": "enum", "key": "status", "options": [{"key": "open"}, {"key": "paid"}]},
            {"type": "multiSelect", "key": "regions", "options": [{"key": "EU"}, {"key": "US"}]}
        ]}]"#;
        let mut t = parse_templates(text, "77").unwrap();
        StoredTemplate::new(t.remove(0))
    }

    fn values(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn templates_are_checked_when_loaded() {
        assert_eq!(invoice().spec.scope, "enterprise_77");
        let entries = br#"{"entries": [{"scope": "global", "templateKey": "k", "fields": []}]}"#;
        assert_eq!(parse_templates(entries, "1").unwrap()[0].scope, "global");
        for bad in [
            r#"[{"scope": "team", "templateKey": "k"}]"#,
            r#"[{"scope": "enterprise", "templateKey": "1k"}]"#,
            r#"[{"scope": "enterprise", "templateKey": "k/../x"}]"#,
            r#"[{"scope": "enterprise", "templateKey": "k", "fields": [{"type": "enum", "key": "e"}]}]"#,
            r#"[{"scope": "enterprise", "templateKey": "k", "fields": [{"type": "string", "key": "a"}, {"type": "float", "key": "a"}]}]"#,
            r#"[{"scope": "enterprise", "templateKey": "k", "fields": [{"type": "taxonomy", "key": "t"}]}]"#,
        ] {
            assert!(parse_templates(bad.as_bytes(), "1").is_err(), "{bad}");
        }
    }

    #[test]
    fn instances_are_checked_against_their_template() {
        let t = invoice();
        let kept = t
            .check(&values(json!({
                "amount": 1250.5, "vendor": "ACME", "due": "2026-12-31T18:30:00-08:00",
                "status": "open", "regions": ["EU", "US"]
            })))
            .unwrap();
        // 18:30 in California is the next day in UTC; Box keeps the UTC date at midnight.
        assert_eq!(kept["due"], "2027-01-01T00:00:00.000Z");
        assert_eq!(kept["amount"], 1250.5);
        for bad in [
            json!({"amount": "1250.5"}),
            json!({"due": "2026-12-31"}),
            json!({"status": "overdue"}),
            json!({"regions": ["EU", "APAC"]}),
            json!({"regions": "EU"}),
            json!({"vendor": null}),
            json!({"colour": "red"}),
            json!({"$id": "x"}),
        ] {
            assert!(t.check(&values(bad.clone())).is_err(), "{bad}");
        }
        let props = StoredTemplate::properties();
        assert!(props.check(&values(json!({"any": "text"}))).is_ok());
        assert!(props.check(&values(json!({"n": 3}))).is_err());
    }

    #[test]
    fn json_patch_adds_replaces_removes_and_tests() {
        let v = values(json!({"a": 1, "b": 2}));
        let out = apply_patch(
            &v,
            &json!([
                {"op": "add", "path": "/a", "value": 10},
                {"op": "add", "path": "/c~1d", "value": 3},
                {"op": "replace", "path": "/b", "value": 20},
                {"op": "test", "path": "/b", "value": 20},
                {"op": "move", "from": "/b", "path": "/e"},
                {"op": "remove", "path": "/a"}
            ]),
        )
        .unwrap();
        assert_eq!(Value::Object(out), json!({"c/d": 3, "e": 20}));
        for bad in [
            json!({"op": "add"}),
            json!([{"op": "replace", "path": "/zz", "value": 1}]),
            json!([{"op": "test", "path": "/a", "value": 2}]),
            json!([{"op": "add", "path": "/a/b", "value": 2}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
        ] {
            assert!(apply_patch(&v, &bad).is_err(), "{bad}");
        }
    }
}
