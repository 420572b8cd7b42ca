//! Checking what users ask to run, once, when a revision or execution is created: every
//! rule Cloud Run applies to these fields is here, with messages that say what to fix. The
//! result is stored ([`RevisionConfig`] with the revision, an [`InstanceTemplate`] with an
//! execution) and used as is by every start.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_api::types::{Volume, VolumeMount};
use wharf_api::{Container, RevisionTemplate, VpcAccess};

use crate::ControlError;
use crate::backend::template::{GRACE_PERIOD, validate_user_env};
use crate::backend::{InstanceTemplate, MemoryVolume, Probe, ProbeAction, Resources, SecretEnv, SecretFile, VpcEgress};

/// Cloud Run's default and maximum request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_CONCURRENCY: u32 = 80;
pub const DEFAULT_MAX_INSTANCES: u32 = 100;
pub const DEFAULT_PORT: u16 = 8080;

/// The bounds every string, list and number of the API is held to. Cloud Run's documented
/// limits where it has them (env values, labels, probes, counts); elsewhere bounds that keep
/// one request from costing the server more than a request should (the sizes of commands and
/// the environment together stay far below the kernel's `execve` limit).
pub mod limits {
    /// Largest value of one environment variable (Cloud Run: 32 KiB).
    pub const ENV_VALUE_BYTES: usize = 32 * 1024;
    /// Longest environment variable name.
    pub const ENV_NAME_BYTES: usize = 256;
    /// Most environment variables in one container (Cloud Run: 1000).
    pub const ENV_VARS: usize = 1000;
    /// Most bytes of env, command and args of one container together.
    pub const CONTAINER_STRINGS_BYTES: usize = 512 * 1024;
    /// Most entries in `command` and in `args`.
    pub const ARGV_ENTRIES: usize = 1000;
    /// Longest image reference.
    pub const IMAGE_BYTES: usize = 1024;
    /// Longest `workingDir`, probe path, service account.
    pub const PATH_BYTES: usize = 1024;
    /// Most labels on one resource (Cloud Run: 64).
    pub const LABELS: usize = 64;
    /// Longest label value and name part of a label or annotation key (Kubernetes: 63).
    pub const LABEL_PART_BYTES: usize = 63;
    /// Longest key prefix of a label or annotation (a DNS subdomain: 253).
    pub const KEY_PREFIX_BYTES: usize = 253;
    /// Most bytes of all annotations of one resource (Kubernetes: 256 KiB).
    pub const ANNOTATIONS_BYTES: usize = 256 * 1024;
    /// Longest description (Cloud Run: 512 characters).
    pub const DESCRIPTION_CHARS: usize = 512;
    /// Longest `client`, `clientVersion` and container name.
    pub const SHORT_TEXT_BYTES: usize = 256;
    /// Probe ranges (Cloud Run): initial delay 0..=240 s, period 1..=240 s for startup and
    /// 1..=3600 s for liveness, timeout 1 s up to the period, failure threshold 1..=1000.
    pub const PROBE_INITIAL_DELAY_SECS: i32 = 240;
    pub const STARTUP_PERIOD_SECS: i32 = 240;
    pub const LIVENESS_PERIOD_SECS: i32 = 3600;
    pub const PROBE_FAILURE_THRESHOLD: i32 = 1000;
    /// Instance counts (Cloud Run: max instances up to 1000 per revision by default).
    pub const INSTANCES: i32 = 1000;
}

/// A validated revision template: how to run an instance, and how to serve with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionConfig {
    /// The image as the user wrote it (the revision pins its digest separately).
    pub image: String,
    pub instance: InstanceTemplate,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub timeout: Duration,
    pub session_affinity: bool,
    /// The port is named `h2c` (`--use-http2`): the ingress speaks HTTP/2 cleartext to the
    /// instances. Absent in revisions stored before it existed: HTTP/1.1.
    #[serde(default)]
    pub use_http2: bool,
}

fn invalid(message: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(message.into())
}

/// Parses a duration the way every Wharf surface does (`"300s"`, `"1.5s"`, `"5m"`, ...: see
/// `wharf_api::duration`), naming `field` in the error.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, ControlError> {
    wharf_api::duration::parse(value).map_err(|e| invalid(format!("{field}: {e}")))
}

/// Parses a duration and checks it lies within `min..=max`, naming `field` and the range in
/// the error.
pub fn duration_in(field: &str, value: &str, min: Duration, max: Duration) -> Result<Duration, ControlError> {
    if value.len() > 64 {
        return Err(invalid(format!("{field} is {} characters long: a duration is at most 64", value.len())));
    }
    let out_of_range =
        || invalid(format!("{field} {value:?} is out of range: it must be between {} and {}", human(min), human(max)));
    let duration = match wharf_api::duration::parse(value) {
        Ok(d) => d,
        Err(wharf_api::duration::DurationError::TooLong { .. }) => return Err(out_of_range()),
        Err(e) => return Err(invalid(format!("{field}: {e}"))),
    };
    if duration < min || duration > max {
        return Err(out_of_range());
    }
    Ok(duration)
}

/// `3600s`, `168h`, `500ms`: the shortest exact form, for range messages.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if secs > 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

/// Checks a string's length in bytes.
fn max_len(field: &str, value: &str, max: usize) -> Result<(), ControlError> {
    if value.len() > max {
        return Err(invalid(format!("{field} is {} bytes long: at most {max} bytes are allowed", value.len())));
    }
    Ok(())
}

/// Checks a string the kernel will see (`execve`, paths): no NUL, at most `max` bytes.
fn c_string(field: &str, value: &str, max: usize) -> Result<(), ControlError> {
    max_len(field, value, max)?;
    if value.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL character, which cannot be passed to a process")));
    }
    Ok(())
}

/// A Kubernetes name part (label value or the name of a key): at most 63 of `[A-Za-z0-9._-]`,
/// beginning and ending with a letter or digit.
fn k8s_name_part(text: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !text.is_empty()
        && text.len() <= limits::LABEL_PART_BYTES
        && text.starts_with(alnum)
        && text.ends_with(alnum)
        && text.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// A label or annotation key as Kubernetes (and so Knative and Cloud Run) writes them: an
/// optional DNS-subdomain prefix and `/`, then a name part.
fn check_key(field: &str, key: &str) -> Result<(), ControlError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= limits::KEY_PREFIX_BYTES
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if !prefix_ok || !k8s_name_part(name) {
        let shown: String = key.chars().take(80).collect();
        return Err(invalid(format!(
            "{field} key {shown:?} is invalid: a key is an optional DNS-subdomain prefix and '/', then at most 63 \
             letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Labels (`field` is e.g. `labels` or `template.labels`): at most 64, keys as Kubernetes
/// writes them, values empty or a Kubernetes name part.
pub fn labels(field: &str, labels: &wharf_api::Labels) -> Result<(), ControlError> {
    if labels.len() > limits::LABELS {
        return Err(invalid(format!("{field} has {} entries: at most {} are allowed", labels.len(), limits::LABELS)));
    }
    for (key, value) in labels {
        check_key(field, key)?;
        if !value.is_empty() && !k8s_name_part(value) {
            let shown: String = value.chars().take(80).collect();
            return Err(invalid(format!(
                "{field}.{key} value {shown:?} is invalid: a label value is empty or at most 63 letters, digits, \
                 '-', '_' or '.', starting and ending with a letter or digit"
            )));
        }
    }
    Ok(())
}

/// Annotations: keys as Kubernetes writes them, at most 256 KiB of keys and values in all.
pub fn annotations(field: &str, annotations: &wharf_api::Labels) -> Result<(), ControlError> {
    let mut total = 0usize;
    for (key, value) in annotations {
        check_key(field, key)?;
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > limits::ANNOTATIONS_BYTES {
        return Err(invalid(format!(
            "{field} take {total} bytes: at most {} bytes (256 KiB) of keys and values are allowed",
            limits::ANNOTATIONS_BYTES
        )));
    }
    Ok(())
}

/// The fields of a service (besides its template) that users set.
pub fn service_fields(service: &wharf_api::Service) -> Result<(), ControlError> {
    if service.description.chars().count() > limits::DESCRIPTION_CHARS {
        return Err(invalid(format!(
            "description has {} characters: at most {} are allowed",
            service.description.chars().count(),
            limits::DESCRIPTION_CHARS
        )));
    }
    labels("labels", &service.labels)?;
    annotations("annotations", &service.annotations)?;
    max_len("client", &service.client, limits::SHORT_TEXT_BYTES)?;
    max_len("clientVersion", &service.client_version, limits::SHORT_TEXT_BYTES)?;
    if let Some(ingress) = &service.ingress
        && !ingress.is_empty()
        && !INGRESS_VALUES.contains(&ingress.as_str())
    {
        return Err(invalid(format!("ingress {ingress:?} is not one of {}", INGRESS_VALUES.join(", "))));
    }
    // The ingress enforces ALL and the two internal settings (`wharf_router::access`); NONE
    // (no ingress at all) it does not: refused rather than kept inert.
    if service.ingress.as_deref() == Some("INGRESS_TRAFFIC_NONE") {
        return Err(invalid(
            "ingress INGRESS_TRAFFIC_NONE is not supported by Wharf: use INGRESS_TRAFFIC_INTERNAL_ONLY to keep a service \
             off the outside, or INGRESS_TRAFFIC_ALL"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The values of Cloud Run's `IngressTraffic` enum.
const INGRESS_VALUES: &[&str] = &[
    "INGRESS_TRAFFIC_UNSPECIFIED",
    "INGRESS_TRAFFIC_ALL",
    "INGRESS_TRAFFIC_INTERNAL_ONLY",
    "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
    "INGRESS_TRAFFIC_NONE",
];

/// The values of Cloud Run's `ExecutionEnvironment` enum.
const EXECUTION_ENVIRONMENTS: &[&str] =
    &["EXECUTION_ENVIRONMENT_UNSPECIFIED", "EXECUTION_ENVIRONMENT_GEN1", "EXECUTION_ENVIRONMENT_GEN2"];

/// A container's environment: at most 1000 variables, names valid and unique, each value at
/// most 32 KiB.
type ValidatedEnv = (Vec<(String, String)>, Vec<SecretEnv>);

fn env_vars(field: &str, vars: &[wharf_api::EnvVar]) -> Result<ValidatedEnv, ControlError> {
    if vars.len() > limits::ENV_VARS {
        return Err(invalid(format!("{field} has {} variables: at most {} are allowed", vars.len(), limits::ENV_VARS)));
    }
    let mut env: Vec<(String, String)> = Vec::with_capacity(vars.len());
    let mut secret_env = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, var) in vars.iter().enumerate() {
        let at = format!("{field}[{i}]");
        c_string(&format!("{at}.name"), &var.name, limits::ENV_NAME_BYTES)?;
        if var.name.chars().any(char::is_control) {
            return Err(invalid(format!("{at}.name contains a control character")));
        }
        if !seen.insert(var.name.as_str()) {
            return Err(invalid(format!("{at}.name {:?} is given more than once", var.name)));
        }
        if let Some(source) = &var.value_source {
            if var.value.as_deref().is_some_and(|v| !v.is_empty()) {
                return Err(invalid(format!("{at} ({}) has both value and valueSource: give one", var.name)));
            }
            let (secret, version) = secret_key_ref(&format!("{at}.valueSource"), source)?;
            secret_env.push(SecretEnv { name: var.name.clone(), secret, version });
            continue;
        }
        let value = var.value.clone().unwrap_or_default();
        if value.len() > limits::ENV_VALUE_BYTES {
            return Err(invalid(format!(
                "{at}.value ({}) is {} bytes long: at most {} bytes (32 KiB) are allowed",
                var.name,
                value.len(),
                limits::ENV_VALUE_BYTES
            )));
        }
        c_string(&format!("{at}.value"), &value, limits::ENV_VALUE_BYTES)?;
        env.push((var.name.clone(), value));
    }
    validate_user_env(env.iter().map(|(k, _)| k.as_str()).chain(secret_env.iter().map(|s| s.name.as_str())))
        .map_err(|e| invalid(e.to_string()))?;
    Ok((env, secret_env))
}

/// `{"secretKeyRef": {"secret": NAME, "version": V}}`; the version defaults to `latest`.
fn secret_key_ref(at: &str, source: &serde_json::Value) -> Result<(String, String), ControlError> {
    let object = source.as_object().ok_or_else(|| invalid(format!("{at} must be an object")))?;
    if let Some(other) = object.keys().find(|k| k.as_str() != "secretKeyRef") {
        return Err(invalid(format!(
            "{at}.{other} is not supported by Wharf: an environment variable's valueSource is a secretKeyRef"
        )));
    }
    let reference = object.get("secretKeyRef").and_then(|r| r.as_object()).ok_or_else(|| {
        invalid(format!("{at}.secretKeyRef is required: {{\"secret\": NAME, \"version\": \"latest\"}}"))
    })?;
    if let Some(other) = reference.keys().find(|k| !matches!(k.as_str(), "secret" | "version")) {
        return Err(invalid(format!("{at}.secretKeyRef.{other} is not a field of SecretKeySelector")));
    }
    let secret = reference.get("secret").and_then(|s| s.as_str()).unwrap_or_default();
    secret_reference(&format!("{at}.secretKeyRef.secret"), secret)?;
    let version = reference.get("version").and_then(|v| v.as_str()).unwrap_or_default();
    Ok((secret.to_owned(), secret_version(&format!("{at}.secretKeyRef.version"), version)?))
}

/// A secret named as `NAME` or `projects/PROJECT/secrets/NAME`.
fn secret_reference(at: &str, secret: &str) -> Result<(), ControlError> {
    let name = match secret.strip_prefix("projects/").and_then(|rest| rest.split_once("/secrets/")) {
        Some((project, name)) if !project.is_empty() && !project.contains('/') => name,
        _ => secret,
    };
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(invalid(format!(
            "{at} {secret:?} is not a secret: write NAME or projects/PROJECT/secrets/NAME (NAME: letters, digits, '_', '-')"
        )));
    }
    Ok(())
}

/// A version number or `latest` (the default when empty).
fn secret_version(at: &str, version: &str) -> Result<String, ControlError> {
    match version {
        "" | "latest" => Ok("latest".to_owned()),
        n if n.parse::<u64>().is_ok_and(|n| n > 0) => Ok(n.to_owned()),
        other => Err(invalid(format!("{at} {other:?} is not a version: use a number from 1, or latest"))),
    }
}

/// Container paths a secret volume may not be mounted over.
const RESERVED_MOUNT_PATHS: &[&str] = &["/", "/dev", "/proc", "/sys", "/etc/resolv.conf", "/etc/hosts"];

/// An `emptyDir` volume where the container mounts it, its size not yet checked against the
/// memory limit (which is read after the volumes).
struct MountedEmptyDir {
    /// `template.volumes[i].emptyDir`, for messages.
    at: String,
    mount_path: String,
    size_limit: String,
}

/// The template's volumes as mounted by the container: one [`SecretFile`] per item of a
/// secret volume (a volume without items mounts the latest version as a file named after the
/// secret), and the `emptyDir` volumes.
fn mounted_volumes(
    volumes: &[Volume],
    mounts: &[VolumeMount],
) -> Result<(Vec<SecretFile>, Vec<MountedEmptyDir>), ControlError> {
    let mut names = std::collections::HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        if volume.name.is_empty() || !names.insert(volume.name.as_str()) {
            return Err(invalid(format!("template.volumes[{i}].name {:?} is empty or given twice", volume.name)));
        }
        match (&volume.secret, &volume.empty_dir) {
            (None, None) => {
                return Err(invalid(format!(
                    "template.volumes[{i}] ({}) has no kind: Wharf supports secret volumes ({{\"secret\": {{\"secret\": NAME}}}}) \
                     and in-memory volumes ({{\"emptyDir\": {{\"medium\": \"MEMORY\", \"sizeLimit\": \"64Mi\"}}}})",
                    volume.name
                )));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "template.volumes[{i}] ({}) is both a secret and an emptyDir volume: give one kind",
                    volume.name
                )));
            }
            _ => {}
        }
    }
    let mut files = Vec::new();
    let mut empty_dirs: Vec<MountedEmptyDir> = Vec::new();
    let mut paths = std::collections::HashSet::new();
    for (i, mount) in mounts.iter().enumerate() {
        let at = format!("template.containers[0].volumeMounts[{i}]");
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| invalid(format!("{at}.name {:?} names no volume of template.volumes", mount.name)))?;
        let path = mount.mount_path.trim_end_matches('/');
        c_string(&format!("{at}.mountPath"), path, limits::PATH_BYTES)?;
        if !mount.mount_path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(invalid(format!(
                "{at}.mountPath {:?} must be an absolute path without '..'",
                mount.mount_path
            )));
        }
        if RESERVED_MOUNT_PATHS
            .iter()
            .any(|r| path.is_empty() || path == *r || (*r != "/" && path.starts_with(&format!("{r}/"))))
        {
            return Err(invalid(format!(
                "{at}.mountPath {:?} is reserved by the platform: mount elsewhere",
                mount.mount_path
            )));
        }
        if !paths.insert(path.to_owned()) {
            return Err(invalid(format!("{at}.mountPath {path:?} is used by two mounts")));
        }
        let index = volumes.iter().position(|v| v.name == volume.name).unwrap_or(0);
        if let Some(empty_dir) = &volume.empty_dir {
            let vat = format!("template.volumes[{index}].emptyDir");
            if !matches!(
                empty_dir.medium.as_str(),
                "" | "MEDIUM_UNSPECIFIED" | wharf_api::types::EMPTY_DIR_MEDIUM_MEMORY
            ) {
                let shown: String = empty_dir.medium.chars().take(64).collect();
                return Err(invalid(format!(
                    "{vat}.medium {shown:?} is not a medium: Wharf's emptyDir volumes are MEMORY"
                )));
            }
            if empty_dirs.iter().any(|e| e.at == vat) {
                return Err(invalid(format!(
                    "{at}: the emptyDir volume {} is mounted twice; mount it once (each mount would be a volume of its own)",
                    volume.name
                )));
            }
            max_len(&format!("{vat}.sizeLimit"), &empty_dir.size_limit, 64)?;
            empty_dirs.push(MountedEmptyDir {
                at: vat,
                mount_path: path.to_owned(),
                size_limit: empty_dir.size_limit.clone(),
            });
            continue;
        }
        let Some(source) = &volume.secret else { continue };
        let vat = format!("template.volumes[{index}].secret");
        secret_reference(&format!("{vat}.secret"), &source.secret)?;
        let default_mode = file_mode(&format!("{vat}.defaultMode"), source.default_mode, 0o444)?;
        let short = source.secret.rsplit('/').next().unwrap_or(&source.secret).to_owned();
        let items = if source.items.is_empty() {
            vec![wharf_api::types::VersionToPath { path: short, version: "latest".into(), mode: None }]
        } else {
            source.items.clone()
        };
        let mut item_paths = std::collections::HashSet::new();
        for (j, item) in items.iter().enumerate() {
            let iat = format!("{vat}.items[{j}]");
            c_string(&format!("{iat}.path"), &item.path, limits::PATH_BYTES)?;
            if item.path.is_empty()
                || item.path.starts_with('/')
                || item.path.split('/').any(|c| c == ".." || c.is_empty())
            {
                return Err(invalid(format!("{iat}.path {:?} must be a relative path without '..'", item.path)));
            }
            if !item_paths.insert(item.path.as_str()) {
                return Err(invalid(format!("{iat}.path {:?} is given twice", item.path)));
            }
            files.push(SecretFile {
                mount_path: path.to_owned(),
                path: item.path.clone(),
                secret: source.secret.clone(),
                version: secret_version(&format!("{iat}.version"), &item.version)?,
                mode: file_mode(&format!("{iat}.mode"), item.mode, default_mode)?,
            });
        }
    }
    Ok((files, empty_dirs))
}

/// The in-memory volumes' sizes: the `sizeLimit` given, else half the memory limit (Cloud
/// Run's default). A volume larger than the memory limit is refused: its pages are charged to
/// the instance's memory, so it could never be filled.
fn memory_volumes(empty_dirs: Vec<MountedEmptyDir>, memory_bytes: u64) -> Result<Vec<MemoryVolume>, ControlError> {
    use crate::backend::resources::{HumanBytes, parse_memory};
    empty_dirs
        .into_iter()
        .map(|e| {
            let size_bytes = if e.size_limit.is_empty() {
                memory_bytes / 2
            } else {
                parse_memory(&e.size_limit).map_err(|why| invalid(format!("{}.sizeLimit: {why}", e.at)))?
            };
            if size_bytes > memory_bytes {
                return Err(invalid(format!(
                    "{}.sizeLimit {} ({}) is above the container's memory limit ({}): an in-memory volume's \
                     files count against the instance's memory; lower sizeLimit or raise --memory",
                    e.at,
                    e.size_limit,
                    HumanBytes(size_bytes),
                    HumanBytes(memory_bytes)
                )));
            }
            Ok(MemoryVolume { mount_path: e.mount_path, size_bytes })
        })
        .collect()
}

fn file_mode(at: &str, mode: Option<i32>, default: u32) -> Result<u32, ControlError> {
    match mode {
        None | Some(0) => Ok(default),
        Some(m) => u32::try_from(m)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| invalid(format!("{at} {m} is not a file mode: use 0 to 511 (0777)"))),
    }
}

/// `command` or `args`: at most 1000 entries, no NUL.
fn argv(field: &str, list: &[String]) -> Result<(), ControlError> {
    if list.len() > limits::ARGV_ENTRIES {
        return Err(invalid(format!(
            "{field} has {} entries: at most {} are allowed",
            list.len(),
            limits::ARGV_ENTRIES
        )));
    }
    for (i, arg) in list.iter().enumerate() {
        c_string(&format!("{field}[{i}]"), arg, limits::CONTAINER_STRINGS_BYTES)?;
    }
    Ok(())
}

/// Whether a container serves requests (and so gets a startup probe) or runs to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Service,
    Task,
}

/// Checks the one container of a revision or task template; returns its image reference as
/// written and the instance template.
pub fn container(
    containers: &[Container],
    volumes: &[Volume],
    workload: Workload,
) -> Result<(String, InstanceTemplate), ControlError> {
    let container = match containers {
        [c] => c,
        [] => return Err(invalid("template.containers is empty: give exactly one container with an image")),
        _ => return Err(invalid("Wharf runs one container per revision; sidecar containers are not supported yet")),
    };
    if container.image.trim().is_empty() {
        return Err(invalid("template.containers[0].image is required"));
    }
    max_len("template.containers[0].image", &container.image, limits::IMAGE_BYTES)?;
    container
        .image
        .parse::<wharf_image::ImageReference>()
        .map_err(|e| invalid(format!("template.containers[0].image: {e}")))?;
    let port = container_port(container)?;
    let (env, secret_env) = env_vars("template.containers[0].env", &container.env)?;
    let (secret_files, empty_dirs) = mounted_volumes(volumes, &container.volume_mounts)?;
    argv("template.containers[0].command", &container.command)?;
    argv("template.containers[0].args", &container.args)?;
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()
        + container.command.iter().chain(&container.args).map(|a| a.len() + 1).sum::<usize>();
    if total > limits::CONTAINER_STRINGS_BYTES {
        return Err(invalid(format!(
            "template.containers[0]: env, command and args take {total} bytes together: at most {} bytes \
             (512 KiB) are allowed",
            limits::CONTAINER_STRINGS_BYTES
        )));
    }
    c_string("template.containers[0].workingDir", &container.working_dir, limits::PATH_BYTES)?;
    max_len("template.containers[0].name", &container.name, limits::SHORT_TEXT_BYTES)?;
    let quantities = container.resources.as_ref().map(|r| r.limits.clone()).unwrap_or_default();
    if let Some(unknown) = quantities.keys().find(|k| *k != "cpu" && *k != "memory") {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid(format!("resources.limits.{shown} is not supported: use cpu and memory")));
    }
    for (key, value) in &quantities {
        max_len(&format!("template.containers[0].resources.limits.{key}"), value, 64)?;
    }
    let resources =
        Resources::from_user(quantities.get("memory").map(String::as_str), quantities.get("cpu").map(String::as_str))
            .map_err(|e| invalid(format!("template.containers[0].resources.limits: {}", e.0)))?;
    let memory_volumes = memory_volumes(empty_dirs, resources.memory_bytes)?;
    let (startup_probe, liveness_probe) = match workload {
        Workload::Task => {
            if container.startup_probe.is_some() || container.liveness_probe.is_some() {
                return Err(invalid("job tasks do not take startup or liveness probes: remove them"));
            }
            (None, None)
        }
        Workload::Service => {
            let startup = match &container.startup_probe {
                None => Probe::default_startup(port),
                Some(p) => probe("startupProbe", p, port, limits::STARTUP_PERIOD_SECS, Duration::from_secs(10), 3)?,
            };
            let liveness = container
                .liveness_probe
                .as_ref()
                .map(|p| probe("livenessProbe", p, port, limits::LIVENESS_PERIOD_SECS, Duration::from_secs(10), 3))
                .transpose()?;
            (Some(startup), liveness)
        }
    };
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let template = InstanceTemplate {
        command: list(&container.command),
        args: list(&container.args),
        working_dir: working_dir(&container.working_dir)?,
        env,
        port,
        resources,
        startup_probe,
        liveness_probe,
        grace_period: GRACE_PERIOD,
        vpc: None,
        secret_env,
        secret_files,
        memory_volumes,
    };
    Ok((container.image.trim().to_owned(), template))
}

/// Checks a revision template.
pub fn validate(template: &RevisionTemplate) -> Result<RevisionConfig, ControlError> {
    let (image, mut instance) = container(&template.containers, &template.volumes, Workload::Service)?;
    instance.vpc = vpc_access("template.vpcAccess", template.vpc_access.as_ref())?;
    let use_http2 = template.containers.first().is_some_and(|c| c.ports.first().is_some_and(|p| p.name == "h2c"));
    let concurrency = match template.max_instance_request_concurrency {
        0 => DEFAULT_CONCURRENCY,
        n @ 1..=1000 => n.unsigned_abs(),
        n => {
            return Err(invalid(format!(
                "template.maxInstanceRequestConcurrency (concurrency) {n} is out of range: it must be between 1 and 1000"
            )));
        }
    };
    let scaling = template.scaling.clone().unwrap_or_default();
    if scaling.min_instance_count < 0 || scaling.max_instance_count < 0 {
        return Err(invalid("min and max instances may not be negative"));
    }
    if scaling.min_instance_count > limits::INSTANCES {
        return Err(invalid(format!(
            "min instances {} is out of range: it must be between 0 and {}",
            scaling.min_instance_count,
            limits::INSTANCES
        )));
    }
    let min_instances = scaling.min_instance_count.unsigned_abs();
    let max_instances = match scaling.max_instance_count {
        0 => DEFAULT_MAX_INSTANCES,
        n => n.unsigned_abs(),
    };
    if max_instances > 1000 {
        return Err(invalid(format!("max instances {max_instances} is out of range: it must be between 1 and 1000")));
    }
    if min_instances > max_instances {
        return Err(invalid(format!("min instances ({min_instances}) may not exceed max instances ({max_instances})")));
    }
    let timeout = match &template.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => duration_in("template.timeout", t, Duration::from_secs(1), MAX_TIMEOUT)?,
    };
    labels("template.labels", &template.labels)?;
    annotations("template.annotations", &template.annotations)?;
    c_string("template.serviceAccount", &template.service_account, limits::PATH_BYTES)?;
    if let Some(env) = &template.execution_environment
        && !env.is_empty()
        && !EXECUTION_ENVIRONMENTS.contains(&env.as_str())
    {
        let shown: String = env.chars().take(64).collect();
        return Err(invalid(format!(
            "template.executionEnvironment {shown:?} is not one of {}",
            EXECUTION_ENVIRONMENTS.join(", ")
        )));
    }
    Ok(RevisionConfig {
        image,
        instance,
        concurrency,
        min_instances,
        max_instances,
        timeout,
        session_affinity: template.session_affinity,
        use_http2,
    })
}

/// `vpcAccess`: a connector or one network interface (not both), and the egress setting.
/// The network's name is the last segment of the connector, network or subnetwork (a full
/// resource name or a bare one); whether the server knows it is checked by the control plane.
pub fn vpc_access(field: &str, vpc: Option<&VpcAccess>) -> Result<Option<VpcEgress>, ControlError> {
    let Some(vpc) = vpc else { return Ok(None) };
    let all_traffic = match vpc.egress.as_deref() {
        None | Some("" | "VPC_EGRESS_UNSPECIFIED") | Some(wharf_api::VPC_EGRESS_PRIVATE_RANGES_ONLY) => false,
        Some(wharf_api::VPC_EGRESS_ALL_TRAFFIC) => true,
        Some(other) => {
            let shown: String = other.chars().take(64).collect();
            return Err(invalid(format!(
                "{field}.egress {shown:?} is not ALL_TRAFFIC or PRIVATE_RANGES_ONLY (--vpc-egress all-traffic or \
                 private-ranges-only)"
            )));
        }
    };
    let (what, path) = match (vpc.connector.as_str(), vpc.network_interfaces.as_slice()) {
        ("", []) if vpc.egress.is_some() => {
            return Err(invalid(format!(
                "{field}.egress needs a connector or a network interface to send traffic to (--vpc-connector or \
                 --network)"
            )));
        }
        ("", []) => return Ok(None),
        (_, [_, ..]) if !vpc.connector.is_empty() => {
            return Err(invalid(format!(
                "{field}: give a connector or networkInterfaces, not both (--vpc-connector or --network/--subnet)"
            )));
        }
        (connector, []) => (format!("{field}.connector"), connector),
        ("", [interface]) => {
            for (i, tag) in interface.tags.iter().enumerate() {
                max_len(&format!("{field}.networkInterfaces[0].tags[{i}]"), tag, limits::SHORT_TEXT_BYTES)?;
            }
            if interface.network.is_empty() {
                (format!("{field}.networkInterfaces[0].subnetwork"), interface.subnetwork.as_str())
            } else {
                (format!("{field}.networkInterfaces[0].network"), interface.network.as_str())
            }
        }
        (_, _) => return Err(invalid(format!("{field}.networkInterfaces: Cloud Run takes one network interface"))),
    };
    let name = path.rsplit('/').next().unwrap_or(path);
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        let shown: String = path.chars().take(128).collect();
        return Err(invalid(format!(
            "{what} {shown:?} does not name a network: use a name of at most 63 lowercase letters, digits, - or _ \
             (or a full resource name ending in one)"
        )));
    }
    Ok(Some(VpcEgress { network: name.to_owned(), all_traffic }))
}

/// `workingDir`: empty (the image's), or an absolute path.
fn working_dir(dir: &str) -> Result<Option<String>, ControlError> {
    if dir.is_empty() {
        return Ok(None);
    }
    if !dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0') || dir.split('/').any(|part| part == "..") {
        return Err(invalid(format!(
            "template.containers[0].workingDir {dir:?} must be an absolute path without \"..\" (e.g. /app)"
        )));
    }
    Ok(Some(dir.to_owned()))
}

fn container_port(container: &Container) -> Result<u16, ControlError> {
    if let Some(p) = container.ports.iter().find(|p| !p.name.is_empty() && p.name != "http1" && p.name != "h2c") {
        let shown: String = p.name.chars().take(64).collect();
        return Err(invalid(format!(
            "template.containers[0].ports[0].name {shown:?} is not a protocol: use http1 (HTTP/1.1, the default) \
             or h2c (end-to-end HTTP/2, for gRPC: --use-http2)"
        )));
    }
    match container.ports.as_slice() {
        [] => Ok(DEFAULT_PORT),
        [p] => u16::try_from(p.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("port {} is out of range: 1 to 65535", p.container_port))),
        _ => Err(invalid("give at most one container port")),
    }
}

fn probe(
    field: &str,
    p: &wharf_api::Probe,
    port: u16,
    max_period: i32,
    default_period: Duration,
    default_threshold: u32,
) -> Result<Probe, ControlError> {
    // 0 means "not set" in the API's JSON (proto3 scalars), so each range starts at 1 except
    // the initial delay's.
    let seconds = |n: i32, what: &str, max: i32| -> Result<Option<Duration>, ControlError> {
        match n {
            0 => Ok(None),
            n if (1..=max).contains(&n) => Ok(Some(Duration::from_secs(n.unsigned_abs().into()))),
            n => Err(invalid(format!("{field}.{what} {n} is out of range: it must be between 1 and {max} seconds"))),
        }
    };
    let probe_port = |n: i32| -> Result<u16, ControlError> {
        if n == 0 {
            return Ok(port);
        }
        u16::try_from(n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("{field} port {n} is out of range: it must be between 1 and 65535")))
    };
    let action = match (&p.http_get, &p.tcp_socket, &p.grpc) {
        (Some(h), None, None) => {
            c_string(&format!("{field}.httpGet.path"), &h.path, limits::PATH_BYTES)?;
            if !h.path.is_empty() && (!h.path.starts_with('/') || h.path.chars().any(|c| c.is_control() || c == ' ')) {
                return Err(invalid(format!(
                    "{field}.httpGet.path {:?} is invalid: give an absolute path such as /healthz, without spaces \
                     or control characters",
                    h.path.chars().take(80).collect::<String>()
                )));
            }
            ProbeAction::HttpGet {
                port: probe_port(h.port)?,
                path: if h.path.is_empty() { "/".to_owned() } else { h.path.clone() },
            }
        }
        (None, Some(t), None) => ProbeAction::Tcp { port: probe_port(t.port)? },
        (None, None, Some(g)) => {
            // gRPC service names are dotted identifiers (`package.Service`).
            if g.service.len() > 256 || g.service.chars().any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c))) {
                return Err(invalid(format!(
                    "{field}.grpc.service {:?} is not a gRPC service name: give a name such as \
                     \"mypackage.MyService\" (letters, digits, '.', '_', '-'; at most 256), or leave it out to ask \
                     about the whole server",
                    g.service.chars().take(80).collect::<String>()
                )));
            }
            ProbeAction::Grpc { port: probe_port(g.port)?, service: g.service.clone() }
        }
        (None, None, None) => return Err(invalid(format!("{field} needs one of httpGet, tcpSocket or grpc"))),
        _ => return Err(invalid(format!("{field} may have only one of httpGet, tcpSocket and grpc"))),
    };
    let initial_delay = match p.initial_delay_seconds {
        n @ 0..=limits::PROBE_INITIAL_DELAY_SECS => Duration::from_secs(n.unsigned_abs().into()),
        n => {
            return Err(invalid(format!(
                "{field}.initialDelaySeconds {n} is out of range: it must be between 0 and {} seconds",
                limits::PROBE_INITIAL_DELAY_SECS
            )));
        }
    };
    let period = seconds(p.period_seconds, "periodSeconds", max_period)?.unwrap_or(default_period);
    let timeout = seconds(p.timeout_seconds, "timeoutSeconds", max_period)?;
    if let Some(timeout) = timeout
        && timeout > period
    {
        return Err(invalid(format!(
            "{field}.timeoutSeconds {} may not exceed periodSeconds {}",
            timeout.as_secs(),
            period.as_secs()
        )));
    }
    let failure_threshold = match p.failure_threshold {
        0 => default_threshold,
        n @ 1..=limits::PROBE_FAILURE_THRESHOLD => n.unsigned_abs(),
        n => {
            return Err(invalid(format!(
                "{field}.failureThreshold {n} is out of range: it must be between 1 and {}",
                limits::PROBE_FAILURE_THRESHOLD
            )));
        }
    };
    Ok(Probe {
        action,
        initial_delay,
        timeout: timeout.unwrap_or(Duration::from_secs(1)).min(period),
        period,
        failure_threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_api::{EnvVar, ResourceRequirements, RevisionScaling};

    fn template(container: Container) -> RevisionTemplate {
        RevisionTemplate { containers: vec![container], ..RevisionTemplate::default() }
    }

    fn image() -> Container {
        Container { image: "127.0.0.1:5000/hello:v1".into(), ..Container::default() }
    }

    fn err(t: &RevisionTemplate) -> String {
        match validate(t) {
            Err(ControlError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn vpc_access_names_one_network_and_an_egress() {
        let vpc = |json: serde_json::Value| serde_json::from_value::<VpcAccess>(json).unwrap();
        let field = "template.vpcAccess";
        let ok = |json| vpc_access(field, Some(&vpc(json))).unwrap();
        assert_eq!(vpc_access(field, None).unwrap(), None);
        assert_eq!(ok(serde_json::json!({})), None);
        let office = |all_traffic| Some(VpcEgress { network: "office".into(), all_traffic });
        assert_eq!(ok(serde_json::json!({"connector": "projects/p/locations/l/connectors/office"})), office(false));
        assert_eq!(
            ok(serde_json::json!({"networkInterfaces": [{"network": "office"}], "egress": "ALL_TRAFFIC"})),
            office(true)
        );
        assert_eq!(ok(serde_json::json!({"networkInterfaces": [{"subnetwork": "office"}]})), office(false));
        for (json, why) in [
            (serde_json::json!({"connector": "a", "networkInterfaces": [{"network": "b"}]}), "not both"),
            (serde_json::json!({"egress": "ALL_TRAFFIC"}), "needs a connector"),
            (serde_json::json!({"connector": "a", "egress": "SOME"}), "ALL_TRAFFIC or PRIVATE_RANGES_ONLY"),
            (serde_json::json!({"networkInterfaces": [{"network": "a"}, {"network": "b"}]}), "one network interface"),
            (serde_json::json!({"connector": "Bad Name"}), "does not name a network"),
            (serde_json::json!({"networkInterfaces": [{}]}), "does not name a network"),
        ] {
            let e = vpc_access(field, Some(&vpc(json.clone()))).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn in_memory_volumes_are_sized_within_the_memory_limit() {
        use wharf_api::types::{EmptyDirVolumeSource, Volume, VolumeMount};
        let with = |volumes: Vec<(&str, &str, &str)>, mounts: Vec<(&str, &str)>, memory: &str| {
            let mut c = image();
            c.resources =
                Some(ResourceRequirements { limits: [("memory".into(), memory.into())].into(), ..Default::default() });
            c.volume_mounts = mounts
                .into_iter()
                .map(|(name, path)| VolumeMount { name: name.into(), mount_path: path.into() })
                .collect();
            let mut t = template(c);
            t.volumes = volumes
                .into_iter()
                .map(|(name, medium, size)| Volume {
                    name: name.into(),
                    secret: None,
                    empty_dir: Some(EmptyDirVolumeSource { medium: medium.into(), size_limit: size.into() }),
                })
                .collect();
            t
        };
        let ok = validate(&with(
            vec![("cache", "MEMORY", "64Mi"), ("tmp", "", ""), ("unused", "MEMORY", "")],
            vec![("cache", "/cache/"), ("tmp", "/tmp/scratch")],
            "256Mi",
        ))
        .unwrap();
        assert_eq!(
            ok.instance.memory_volumes,
            [
                MemoryVolume { mount_path: "/cache".into(), size_bytes: 64 << 20 },
                MemoryVolume { mount_path: "/tmp/scratch".into(), size_bytes: 128 << 20 },
            ],
            "sizeLimit as given, else half the memory; unmounted volumes mount nothing"
        );
        let refused = err(&with(vec![("cache", "MEMORY", "1Gi")], vec![("cache", "/cache")], "512Mi"));
        assert!(
            refused.contains("template.volumes[0].emptyDir.sizeLimit 1Gi")
                && refused.contains("memory limit (512 MiB)"),
            "{refused}"
        );
        let refused = err(&with(vec![("cache", "DISK", "")], vec![("cache", "/cache")], "512Mi"));
        assert!(refused.contains("emptyDir.medium \"DISK\""), "{refused}");
        let refused = err(&with(vec![("cache", "MEMORY", "lots")], vec![("cache", "/cache")], "512Mi"));
        assert!(refused.contains("emptyDir.sizeLimit: invalid memory \"lots\""), "{refused}");
        let refused = err(&with(vec![("cache", "MEMORY", "")], vec![("cache", "/a"), ("cache", "/b")], "512Mi"));
        assert!(refused.contains("mounted twice"), "{refused}");
        let refused = err(&with(vec![("cache", "MEMORY", "")], vec![("cache", "/proc/x")], "512Mi"));
        assert!(refused.contains("reserved"), "{refused}");
        let mut both = with(vec![("v", "MEMORY", "")], vec![], "512Mi");
        both.volumes[0].secret = Some(Default::default());
        assert!(err(&both).contains("both a secret and an emptyDir"));
    }

    #[test]
    fn defaults_are_cloud_runs() {
        let c = validate(&template(image())).unwrap();
        assert_eq!((c.instance.port, c.concurrency, c.min_instances, c.max_instances), (8080, 80, 0, 100));
        assert_eq!(c.timeout, Duration::from_secs(300));
        assert_eq!(c.instance.resources, Resources::default());
        assert_eq!(c.instance.startup_probe, Some(Probe::default_startup(8080)));
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut t = template(image());
        t.max_instance_request_concurrency = 1001;
        assert!(err(&t).contains("between 1 and 1000"));
        let mut t = template(image());
        t.timeout = Some("3601s".into());
        assert!(err(&t).contains("between 1s and 3600s"));
        let mut t = template(image());
        t.scaling = Some(RevisionScaling { min_instance_count: 5, max_instance_count: 2 });
        assert!(err(&t).contains("may not exceed"));
        let mut c = image();
        c.resources =
            Some(ResourceRequirements { limits: [("memory".into(), "64Mi".into())].into(), ..Default::default() });
        assert!(err(&template(c)).contains("between 128Mi and 32Gi"));
        let mut c = image();
        c.env = vec![EnvVar { name: "PORT".into(), value: Some("1".into()), value_source: None }];
        assert!(err(&template(c)).contains("PORT is reserved"));
        let mut c = image();
        c.image = "Not An Image".into();
        assert!(err(&template(c)).contains("image"));
    }

    #[test]
    fn limits_name_the_field_and_the_range() {
        let mut t = template(image());
        t.timeout = Some("1e20s".into());
        assert!(err(&t).contains("template.timeout"), "{}", err(&t));
        t.timeout = Some("100000000000000000000s".into());
        assert!(err(&t).contains("between 1s and 3600s"), "{}", err(&t));
        let mut c = image();
        c.env = vec![EnvVar { name: "BIG".into(), value: Some("x".repeat(32 * 1024 + 1)), value_source: None }];
        assert!(err(&template(c)).contains("env[0].value (BIG) is 32769 bytes long"));
        let mut c = image();
        c.env = (0..2).map(|_| EnvVar { name: "A".into(), value: None, value_source: None }).collect();
        assert!(err(&template(c)).contains("more than once"));
        let mut c = image();
        c.startup_probe = Some(wharf_api::Probe {
            period_seconds: 241,
            tcp_socket: Some(wharf_api::TcpSocketAction::default()),
            ..Default::default()
        });
        assert!(err(&template(c)).contains("startupProbe.periodSeconds 241 is out of range"));
        let mut c = image();
        c.liveness_probe = Some(wharf_api::Probe {
            failure_threshold: -1,
            http_get: Some(wharf_api::HttpGetAction { path: "/ok".into(), port: 0 }),
            ..Default::default()
        });
        assert!(err(&template(c)).contains("livenessProbe.failureThreshold -1"));
        let mut c = image();
        c.startup_probe = Some(wharf_api::Probe {
            grpc: Some(wharf_api::GrpcAction { port: 0, service: "a b".into() }),
            ..Default::default()
        });
        assert!(err(&template(c)).contains("startupProbe.grpc.service \"a b\" is not a gRPC service name"));
        let mut c = image();
        c.startup_probe = Some(wharf_api::Probe {
            grpc: Some(wharf_api::GrpcAction::default()),
            tcp_socket: Some(wharf_api::TcpSocketAction::default()),
            ..Default::default()
        });
        assert!(err(&template(c)).contains("only one of httpGet, tcpSocket and grpc"));
        let mut c = image();
        c.ports = vec![wharf_api::ContainerPort { name: "h2c".into(), container_port: 9000 }];
        c.startup_probe = Some(wharf_api::Probe { grpc: Some(wharf_api::GrpcAction::default()), ..Default::default() });
        let config = validate(&template(c)).unwrap();
        assert!(config.use_http2);
        assert_eq!(
            config.instance.startup_probe.map(|p| p.action),
            Some(ProbeAction::Grpc { port: 9000, service: String::new() })
        );
        let mut c = image();
        c.resources =
            Some(ResourceRequirements { limits: [("cpu".into(), "50m".into())].into(), ..Default::default() });
        assert!(err(&template(c)).contains("between 0.08 (80m) and 8 CPUs"));
        let mut t = template(image());
        t.labels = [("Bad Key".into(), "v".into())].into();
        assert!(err(&t).contains("template.labels key \"Bad Key\" is invalid"));
        let mut t = template(image());
        t.labels = [("run.googleapis.com/x".into(), "ok-1".into())].into();
        validate(&t).unwrap();
        let mut c = image();
        c.args = vec!["a\0b".into()];
        assert!(err(&template(c)).contains("NUL"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Short strings drawn mostly from what the parsers look for, so that both accepted
        /// and refused values come up.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof!["[0-9.eE+-]{0,12}(ms|s|m|h|d|Mi|Gi|M|G|Ki|k|m)?", "[0-9]{1,25}(s|m)?", ".{0,20}",]
        }

        fn number() -> impl Strategy<Value = i32> {
            prop_oneof![any::<i32>(), -2..3000i32]
        }

        fn probe() -> impl Strategy<Value = Option<wharf_api::Probe>> {
            (number(), number(), number(), number(), number(), ".{0,8}", any::<bool>()).prop_map(
                |(delay, timeout, period, threshold, port, path, http)| {
                    Some(wharf_api::Probe {
                        initial_delay_seconds: delay,
                        timeout_seconds: timeout,
                        period_seconds: period,
                        failure_threshold: threshold,
                        http_get: http.then_some(wharf_api::HttpGetAction { path, port }),
                        tcp_socket: (!http).then_some(wharf_api::TcpSocketAction { port }),
                        grpc: None,
                    })
                },
            )
        }

        prop_compose! {
            fn any_template()(
                timeout in proptest::option::of(text()),
                memory in proptest::option::of(text()),
                cpu in proptest::option::of(text()),
                concurrency in number(),
                min in number(),
                max in number(),
                port in number(),
                env in proptest::collection::vec((".{0,6}", proptest::option::of(".{0,6}")), 0..4),
                startup in proptest::option::of(probe()),
                liveness in proptest::option::of(probe()),
                labels in proptest::collection::btree_map(".{0,10}", ".{0,10}", 0..3),
            ) -> RevisionTemplate {
                let mut limits = wharf_api::Labels::new();
                if let Some(m) = memory { limits.insert("memory".into(), m); }
                if let Some(c) = cpu { limits.insert("cpu".into(), c); }
                let container = Container {
                    image: "127.0.0.1:5000/hello:v1".into(),
                    env: env.into_iter().map(|(name, value)| EnvVar { name, value, value_source: None }).collect(),
                    resources: Some(ResourceRequirements { limits, ..Default::default() }),
                    ports: vec![wharf_api::ContainerPort { name: String::new(), container_port: port }],
                    startup_probe: startup.flatten(),
                    liveness_probe: liveness.flatten(),
                    ..Container::default()
                };
                RevisionTemplate {
                    containers: vec![container],
                    timeout,
                    max_instance_request_concurrency: concurrency,
                    scaling: Some(RevisionScaling { min_instance_count: min, max_instance_count: max }),
                    labels,
                    ..RevisionTemplate::default()
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Whatever a client sends, validation answers (never panics), and what it
            /// accepts lies within Cloud Run's ranges.
            #[test]
            fn accepted_templates_are_within_range(t in any_template()) {
                if let Ok(c) = validate(&t) {
                    prop_assert!((1..=1000).contains(&c.concurrency));
                    prop_assert!(c.min_instances <= c.max_instances && c.max_instances <= 1000);
                    prop_assert!(c.timeout >= Duration::from_secs(1) && c.timeout <= MAX_TIMEOUT);
                    let r = c.instance.resources;
                    prop_assert!((crate::backend::resources::MIN_MEMORY..=crate::backend::resources::MAX_MEMORY)
                        .contains(&r.memory_bytes));
                    prop_assert!((80..=8000).contains(&r.cpu_millis));
                    prop_assert!(c.instance.port > 0);
                    for probe in c.instance.startup_probe.iter().chain(&c.instance.liveness_probe) {
                        prop_assert!(probe.period >= Duration::from_secs(1));
                        prop_assert!(probe.period <= Duration::from_secs(3600));
                        prop_assert!(probe.timeout <= probe.period);
                        prop_assert!(probe.initial_delay <= Duration::from_secs(240));
                        prop_assert!((1..=1000).contains(&probe.failure_threshold));
                    }
                    for (name, value) in &c.instance.env {
                        prop_assert!(!name.is_empty() && !name.contains('=') && value.len() <= 32 * 1024);
                    }
                }
            }

            #[test]
            fn bounded_durations_stay_in_bounds(text in text()) {
                let (min, max) = (Duration::from_secs(1), Duration::from_secs(168 * 3600));
                if let Ok(d) = duration_in("timeout", &text, min, max) {
                    prop_assert!(d >= min && d <= max);
                }
            }
        }
    }
}
