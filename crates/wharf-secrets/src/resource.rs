//! Secret Manager v1's JSON resources as Wharf answers them (`Secret`, `SecretVersion`,
//! `AccessSecretVersionResponse`), and the strict reading of what a client sends: fields
//! Wharf honours are read, fields it cannot honour are refused by name, output-only fields are
//! ignored as Google ignores them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::SecretsError;

/// `google.cloud.secretmanager.v1.Secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    pub replication: serde_json::Value,
    pub create_time: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub etag: String,
}

/// A version's state (`SecretVersion.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<VersionState> {
        match text {
            "ENABLED" => Some(VersionState::Enabled),
            "DISABLED" => Some(VersionState::Disabled),
            "DESTROYED" => Some(VersionState::Destroyed),
            _ => None,
        }
    }
}

/// `google.cloud.secretmanager.v1.SecretVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersion {
    pub name: String,
    pub create_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destroy_time: Option<String>,
    pub state: VersionState,
    pub etag: String,
    pub client_specified_payload_checksum: bool,
    pub replication_status: serde_json::Value,
}

/// `AccessSecretVersionResponse`: the only answer that carries a payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessResponse {
    pub name: String,
    pub payload: PayloadJson,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadJson {
    /// base64, as protobuf's JSON writes bytes.
    pub data: String,
    /// int64 as protobuf's JSON writes it: a decimal string.
    pub data_crc32c: String,
}

/// The writable fields of a secret as a client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretInput {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The etag the client read, for an update that must not overwrite another's.
    pub etag: Option<String>,
    /// Which top-level fields the body carried.
    pub present: Vec<String>,
}

/// Fields of `Secret` Wharf cannot honour, with the reason given when one is sent.
const UNSUPPORTED_SECRET_FIELDS: &[(&str, &str)] = &[
    ("topics", "Wharf has no Pub/Sub to notify"),
    ("expireTime", "secrets do not expire in Wharf; delete the secret instead"),
    ("ttl", "secrets do not expire in Wharf; delete the secret instead"),
    ("rotation", "Wharf sends no rotation notifications"),
    ("versionAliases", "Wharf has only the alias 'latest'"),
    ("versionDestroyTtl", "destroying a version in Wharf is immediate"),
    ("customerManagedEncryption", "Wharf encrypts every payload under its own key-encryption key (--secrets-key-file)"),
    ("tags", "Wharf has no resource manager tags"),
];

/// Output-only fields: a client may echo them back (an update sends what it read).
const OUTPUT_ONLY_SECRET_FIELDS: &[&str] = &["name", "createTime"];

impl SecretInput {
    /// Reads a `Secret` body strictly.
    pub fn from_json(body: &serde_json::Value) -> Result<SecretInput, SecretsError> {
        let object = match body {
            serde_json::Value::Null => return Ok(SecretInput::default()),
            serde_json::Value::Object(object) => object,
            _ => return Err(invalid("secret", "the body must be a JSON object (a Secret)")),
        };
        let mut input = SecretInput::default();
        for (field, value) in object {
            input.present.push(field.clone());
            match field.as_str() {
                "replication" => check_replication(value)?,
                "labels" => input.labels = string_map("labels", value)?,
                "annotations" => input.annotations = string_map("annotations", value)?,
                "etag" => {
                    input.etag = Some(value.as_str().ok_or_else(|| invalid("etag", "must be a string"))?.to_owned())
                }
                known if OUTPUT_ONLY_SECRET_FIELDS.contains(&known) => {}
                other => {
                    return Err(match UNSUPPORTED_SECRET_FIELDS.iter().find(|(name, _)| *name == other) {
                        Some((name, why)) => invalid(name, &format!("is not supported by Wharf: {why}; remove it")),
                        None => invalid(other, "is not a field of Secret"),
                    });
                }
            }
        }
        validate_labels(&input.labels)?;
        validate_annotations(&input.annotations)?;
        Ok(input)
    }
}

/// `replication` may only be `{"automatic": {}}`: one machine has one replica, which is what
/// automatic replication promises a client.
fn check_replication(value: &serde_json::Value) -> Result<(), SecretsError> {
    let object = value.as_object().ok_or_else(|| invalid("replication", "must be an object"))?;
    for (field, inner) in object {
        match field.as_str() {
            "automatic" => {
                let automatic =
                    inner.as_object().ok_or_else(|| invalid("replication.automatic", "must be an object"))?;
                if let Some(field) = automatic.keys().next() {
                    return Err(invalid(
                        &format!("replication.automatic.{field}"),
                        "is not supported by Wharf: payloads are encrypted under Wharf's own key-encryption key; remove it",
                    ));
                }
            }
            "userManaged" => {
                return Err(invalid(
                    "replication.userManaged",
                    "is not supported by Wharf: a secret lives on this one machine; use {\"automatic\": {}}",
                ));
            }
            other => return Err(invalid(&format!("replication.{other}"), "is not a field of Replication")),
        }
    }
    Ok(())
}

fn string_map(field: &str, value: &serde_json::Value) -> Result<BTreeMap<String, String>, SecretsError> {
    let object = value.as_object().ok_or_else(|| invalid(field, "must be an object of strings"))?;
    object
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(v) => Ok((k.clone(), v.to_owned())),
            None => Err(invalid(&format!("{field}.{k}"), "must be a string")),
        })
        .collect()
}

/// Google's label rules: at most 64; keys 1-63 characters of lowercase letters, digits, `_`
/// and `-` starting with a letter; values up to 63 of the same.
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), SecretsError> {
    if labels.len() > 64 {
        return Err(invalid("labels", "a secret has at most 64 labels"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    for (key, value) in labels {
        if key.is_empty()
            || key.len() > 63
            || !key.starts_with(|c: char| c.is_ascii_lowercase())
            || !key.chars().all(allowed)
        {
            return Err(invalid(
                &format!("labels.{key}"),
                "label keys are 1-63 lowercase letters, digits, '_' or '-', starting with a letter",
            ));
        }
        if value.len() > 63 || !value.chars().all(allowed) {
            return Err(invalid(
                &format!("labels.{key}"),
                "label values are up to 63 lowercase letters, digits, '_' or '-'",
            ));
        }
    }
    Ok(())
}

/// Annotations: keys up to 63 characters, all keys and values together at most 16 KiB.
fn validate_annotations(annotations: &BTreeMap<String, String>) -> Result<(), SecretsError> {
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > 16 * 1024 {
        return Err(invalid("annotations", "annotations total at most 16384 bytes of keys and values"));
    }
    for key in annotations.keys() {
        if key.is_empty() || key.len() > 63 {
            return Err(invalid(&format!("annotations.{key}"), "annotation keys are 1-63 characters"));
        }
    }
    Ok(())
}

pub(crate) fn invalid(field: &str, why: &str) -> SecretsError {
    SecretsError::InvalidArgument { field: field.to_owned(), message: format!("{field} {why}") }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_what_wharf_honours_and_refuses_the_rest_by_name() {
        let input = SecretInput::from_json(&json!({
            "replication": {"automatic": {}}, "labels": {"team": "db"}, "annotations": {"Owner": "ann"},
            "name": "ignored", "etag": "\"1\""
        }))
        .unwrap();
        assert_eq!(input.labels["team"], "db");
        assert_eq!(input.etag.as_deref(), Some("\"1\""));
        let refused = |body| SecretInput::from_json(&body).unwrap_err().to_string();
        assert!(refused(json!({"replication": {"userManaged": {"replicas": []}}})).contains("replication.userManaged"));
        assert!(refused(json!({"ttl": "60s"})).contains("ttl is not supported"));
        assert!(refused(json!({"nope": 1})).contains("nope is not a field of Secret"));
        assert!(refused(json!({"labels": {"Bad": "x"}})).contains("labels.Bad"));
        assert!(
            refused(json!({"replication": {"automatic": {"customerManagedEncryption": {}}}}))
                .contains("replication.automatic.customerManagedEncryption")
        );
    }
}
