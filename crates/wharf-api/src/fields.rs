//! Reading a request body strictly, as Google's endpoint does: a field the API does not have is
//! refused by name (`Unknown name "bogusField"`), and a field Cloud Run has but Wharf does not
//! implement yet is refused as unsupported, never dropped. Output-only fields a client may send
//! back from a read (`satisfiesPzs`, `expireTime`, ...) are ignored, as Google ignores them.
//!
//! The resource types deny unknown fields; [`parse`] turns serde's complaint into a
//! [`FieldError`] that names the field by its JSON path.

use std::fmt;

/// Fields of `google.cloud.run.v2` messages (services, revisions, jobs, executions, tasks and
/// the Kubernetes-style container types) that Wharf does not act on. A body carrying one of
/// them, where Wharf's type lacks it, is refused as unsupported.
const CLOUD_RUN_FIELDS: &[&str] = &[
    // Service and Job
    "binaryAuthorization",
    "scaling",
    "defaultUriDisabled",
    "customAudiences",
    "buildConfig",
    "iapEnabled",
    "multiRegionSettings",
    "threatDetectionEnabled",
    "startExecutionToken",
    "runExecutionToken",
    "annotations",
    "client",
    "clientVersion",
    "launchStage",
    // RevisionTemplate and TaskTemplate
    "encryptionKey",
    "serviceMesh",
    "encryptionKeyRevocationAction",
    "encryptionKeyShutdownDuration",
    "healthCheckDisabled",
    "nodeSelector",
    "gpuZonalRedundancyDisabled",
    "executionEnvironment",
    "sessionAffinity",
    "serviceAccount",
    // Container
    "baseImageUri",
    // Volume kinds other than secret and emptyDir, and VolumeMount's subPath
    "gcs",
    "nfs",
    "cloudSqlInstance",
    "subPath",
    "readinessProbe",
    "dependsOn",
    "buildInfo",
    "sourceCode",
    // Probe
    "httpHeaders",
];

/// What a user of an unsupported field should know, where there is more to say.
const WHY_UNSUPPORTED: &[(&str, &str)] = &[
    ("gcs", "Wharf's volumes are Secret Manager secrets and in-memory emptyDir volumes"),
    ("nfs", "Wharf's volumes are Secret Manager secrets and in-memory emptyDir volumes"),
    ("cloudSqlInstance", "Wharf's volumes are Secret Manager secrets and in-memory emptyDir volumes"),
];

/// Output-only fields of Cloud Run resources that Wharf does not produce. A client that reads
/// a resource and writes it back may carry them; they are ignored, as Google ignores them.
const OUTPUT_ONLY: &[&str] = &["satisfiesPzs", "expireTime", "logUri", "urls"];

/// Maps whose keys are user data, not field names: never treated as fields.
const USER_MAPS: &[&str] = &["labels", "annotations", "limits", "nodeSelector"];

/// Why a request body was refused, with the field's JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `template.containers[0].volumeMounts`.
    pub field: String,
    pub kind: FieldErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// Not a field of this message at all.
    Unknown,
    /// A Cloud Run field Wharf does not implement.
    Unsupported,
    /// A field of the right name with a value of the wrong type or form.
    Invalid(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.field.rsplit('.').next().unwrap_or(&self.field);
        match &self.kind {
            FieldErrorKind::Unknown => {
                write!(
                    f,
                    "Invalid JSON payload received. Unknown name {name:?} at '{}': Cannot find field.",
                    self.field
                )
            }
            FieldErrorKind::Unsupported => {
                write!(f, "{} is a Cloud Run field that Wharf does not support yet", self.field)?;
                if let Some((_, why)) = WHY_UNSUPPORTED.iter().find(|(field, _)| *field == name) {
                    write!(f, " ({why})")?;
                }
                write!(f, "; remove it from the request")
            }
            FieldErrorKind::Invalid(why) => write!(f, "Invalid value at '{}': {why}", self.field),
        }
    }
}

impl std::error::Error for FieldError {}

/// Removes output-only fields Wharf does not model, at any depth but inside user maps.
fn strip_output_only(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !OUTPUT_ONLY.contains(&k.as_str()));
            for (key, child) in map.iter_mut() {
                if !USER_MAPS.contains(&key.as_str()) {
                    strip_output_only(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_output_only),
        _ => {}
    }
}

/// Reads `value` as a `T`, refusing unknown and unsupported fields by their path.
pub fn parse<T: serde::de::DeserializeOwned>(mut value: serde_json::Value) -> Result<T, FieldError> {
    strip_output_only(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde's wording for a field the type does not have: "unknown field `x`, expected ...".
        // The path already ends with the unknown field's name.
        if let Some(name) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
            let field = if path == "." { name.to_owned() } else { path };
            let kind =
                if CLOUD_RUN_FIELDS.contains(&name) { FieldErrorKind::Unsupported } else { FieldErrorKind::Unknown };
            return FieldError { field, kind };
        }
        let field = if path == "." { String::new() } else { path };
        FieldError { field, kind: FieldErrorKind::Invalid(message) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Service;
    use crate::jobs::{Job, RunJobRequest};

    fn refuse<T: serde::de::DeserializeOwned + fmt::Debug>(body: serde_json::Value) -> FieldError {
        parse::<T>(body).expect_err("must be refused")
    }

    #[test]
    fn unknown_fields_are_refused_by_name_and_path() {
        let e = refuse::<Service>(serde_json::json!({"bogusField": 1}));
        assert_eq!((e.field.as_str(), &e.kind), ("bogusField", &FieldErrorKind::Unknown));
        assert!(e.to_string().contains("Unknown name \"bogusField\""), "{e}");
        let e =
            refuse::<Service>(serde_json::json!({"template": {"containers": [{"image": "x", "imagePullPolicy": 1}]}}));
        assert_eq!(e.field, "template.containers[0].imagePullPolicy");
        assert_eq!(e.kind, FieldErrorKind::Unknown);
    }

    #[test]
    fn cloud_run_fields_wharf_lacks_are_refused_as_unsupported() {
        for (body, field) in [
            (
                serde_json::json!({"template": {"volumes": [{"name": "c", "gcs": {"bucket": "b"}}]}}),
                "template.volumes[0].gcs",
            ),
            (serde_json::json!({"scaling": {"minInstanceCount": 1}}), "scaling"),
            (serde_json::json!({"template": {"encryptionKey": "k"}}), "template.encryptionKey"),
            (serde_json::json!({"template": {"nodeSelector": {"accelerator": "x"}}}), "template.nodeSelector"),
            (
                serde_json::json!({"template": {"containers": [{"readinessProbe": {}}]}}),
                "template.containers[0].readinessProbe",
            ),
            (
                serde_json::json!({"template": {"containers": [{"dependsOn": ["a"]}]}}),
                "template.containers[0].dependsOn",
            ),
            (
                serde_json::json!({"template": {"containers": [{"baseImageUri": "x"}]}}),
                "template.containers[0].baseImageUri",
            ),
            (
                serde_json::json!({"template": {"containers": [{"startupProbe": {"httpGet": {"httpHeaders": []}}}]}}),
                "template.containers[0].startupProbe.httpGet.httpHeaders",
            ),
        ] {
            let e = refuse::<Service>(body);
            assert_eq!((e.field.as_str(), &e.kind), (field, &FieldErrorKind::Unsupported));
            assert!(e.to_string().contains("does not support yet"), "{e}");
        }
        let e = refuse::<Job>(serde_json::json!({"template": {"template": {"volumes": [{"name": "c", "nfs": {}}]}}}));
        assert_eq!((e.field.as_str(), &e.kind), ("template.template.volumes[0].nfs", &FieldErrorKind::Unsupported));
        let job: Job = parse(serde_json::json!({"template": {"template": {"volumes": [
            {"name": "c", "emptyDir": {"medium": "MEMORY", "sizeLimit": "64Mi"}}
        ]}}}))
        .unwrap();
        let empty_dir = job.template.template.volumes[0].empty_dir.clone().unwrap();
        assert_eq!((empty_dir.medium.as_str(), empty_dir.size_limit.as_str()), ("MEMORY", "64Mi"));
    }

    #[test]
    fn vpc_access_is_read_and_its_unknown_fields_are_refused() {
        let body = serde_json::json!({"template": {"vpcAccess": {
            "egress": "ALL_TRAFFIC",
            "networkInterfaces": [{"network": "n", "subnetwork": "s", "tags": ["t"]}],
        }}});
        let service: Service = parse(body).unwrap();
        let vpc = service.template.vpc_access.unwrap();
        assert_eq!((vpc.egress.as_deref(), vpc.network_interfaces[0].network.as_str()), (Some("ALL_TRAFFIC"), "n"));
        let e = refuse::<Job>(serde_json::json!({"template": {"template": {"vpcAccess": {"bogus": 1}}}}));
        assert_eq!((e.field.as_str(), &e.kind), ("template.template.vpcAccess.bogus", &FieldErrorKind::Unknown));
    }

    #[test]
    fn output_only_fields_are_ignored_but_user_maps_are_kept() {
        let s: Service = parse(serde_json::json!({
            "satisfiesPzs": true, "urls": ["x"], "labels": {"urls": "kept"},
            "template": {"containers": [{"image": "x"}]}
        }))
        .unwrap();
        assert_eq!(s.labels.get("urls").map(String::as_str), Some("kept"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = refuse::<Service>(serde_json::json!({"template": {"maxInstanceRequestConcurrency": "many"}}));
        assert_eq!(e.field, "template.maxInstanceRequestConcurrency");
        assert!(matches!(e.kind, FieldErrorKind::Invalid(_)));
        let e = refuse::<RunJobRequest>(serde_json::json!({"overrides": {"taskCount": "x"}}));
        assert_eq!(e.field, "overrides.taskCount");
    }
}
