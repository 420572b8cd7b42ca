//! Checking what users ask to run, once, when a revision or execution is created: every
//! rule Cloud Run applies to these fields is here, with messages that say what to fix. The
//! result is stored ([`RevisionConfig`] with the revision, an [`InstanceTemplate`] with an
//! execution) and used as is by every start.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_api::{Container, RevisionTemplate};

use crate::ControlError;
use crate::backend::template::{GRACE_PERIOD, validate_user_env};
use crate::backend::{InstanceTemplate, Probe, ProbeAction, Resources};

/// Cloud Run's default and maximum request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_CONCURRENCY: u32 = 80;
pub const DEFAULT_MAX_INSTANCES: u32 = 100;
pub const DEFAULT_PORT: u16 = 8080;

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
}

fn invalid(message: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(message.into())
}

/// Parses a duration the way every Wharf surface does (`"300s"`, `"1.5s"`, `"5m"`, ...: see
/// `wharf_api::duration`), naming `field` in the error.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, ControlError> {
    wharf_api::duration::parse(value).map_err(|e| invalid(format!("{field}: {e}")))
}

/// Whether a container serves requests (and so gets a startup probe) or runs to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Service,
    Task,
}

/// Checks the one container of a revision or task template; returns its image reference as
/// written and the instance template.
pub fn container(containers: &[Container], workload: Workload) -> Result<(String, InstanceTemplate), ControlError> {
    let container = match containers {
        [c] => c,
        [] => return Err(invalid("template.containers is empty: give exactly one container with an image")),
        _ => return Err(invalid("Wharf runs one container per revision; sidecar containers are not supported yet")),
    };
    if container.image.trim().is_empty() {
        return Err(invalid("template.containers[0].image is required"));
    }
    container
        .image
        .parse::<wharf_image::ImageReference>()
        .map_err(|e| invalid(format!("template.containers[0].image: {e}")))?;
    let port = container_port(container)?;
    let mut env = Vec::new();
    for var in &container.env {
        if var.value_source.is_some() {
            return Err(invalid(format!("env {}: valueSource (secrets) is not supported yet; give a value", var.name)));
        }
        env.push((var.name.clone(), var.value.clone().unwrap_or_default()));
    }
    validate_user_env(env.iter().map(|(k, _)| k.as_str())).map_err(|e| invalid(e.to_string()))?;
    let limits = container.resources.as_ref().map(|r| r.limits.clone()).unwrap_or_default();
    if let Some(unknown) = limits.keys().find(|k| *k != "cpu" && *k != "memory") {
        return Err(invalid(format!("resources.limits.{unknown} is not supported: use cpu and memory")));
    }
    let resources =
        Resources::from_user(limits.get("memory").map(String::as_str), limits.get("cpu").map(String::as_str))
            .map_err(|e| invalid(e.0))?;
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
                Some(p) => probe("startupProbe", p, port, Duration::from_secs(10), 3)?,
            };
            let liveness = container
                .liveness_probe
                .as_ref()
                .map(|p| probe("livenessProbe", p, port, Duration::from_secs(10), 3))
                .transpose()?;
            (Some(startup), liveness)
        }
    };
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let template = InstanceTemplate {
        command: list(&container.command),
        args: list(&container.args),
        env,
        port,
        resources,
        startup_probe,
        liveness_probe,
        grace_period: GRACE_PERIOD,
    };
    Ok((container.image.trim().to_owned(), template))
}

/// Refuses Cloud Run's VPC access, which Wharf does not offer yet: instances reach the public
/// internet only, never private ranges.
pub fn no_vpc_access(vpc_access: Option<&serde_json::Value>) -> Result<(), ControlError> {
    match vpc_access {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(_) => Err(invalid(
            "vpcAccess (--network, --subnet, --vpc-connector, --vpc-egress) is not supported yet: Wharf instances \
             reach the public internet only, never private ranges; remove vpcAccess",
        )),
    }
}

/// Checks a revision template.
pub fn validate(template: &RevisionTemplate) -> Result<RevisionConfig, ControlError> {
    no_vpc_access(template.vpc_access.as_ref())?;
    let (image, instance) = container(&template.containers, Workload::Service)?;
    let concurrency = match template.max_instance_request_concurrency {
        0 => DEFAULT_CONCURRENCY,
        n @ 1..=1000 => n.unsigned_abs(),
        n => return Err(invalid(format!("concurrency {n} is out of range: it must be between 1 and 1000"))),
    };
    let scaling = template.scaling.clone().unwrap_or_default();
    if scaling.min_instance_count < 0 || scaling.max_instance_count < 0 {
        return Err(invalid("min and max instances may not be negative"));
    }
    let min_instances = scaling.min_instance_count.unsigned_abs();
    let max_instances = match scaling.max_instance_count {
        0 => DEFAULT_MAX_INSTANCES,
        n => n.unsigned_abs(),
    };
    if max_instances > 1000 {
        return Err(invalid(format!("max instances {max_instances} is out of range: at most 1000")));
    }
    if min_instances > max_instances {
        return Err(invalid(format!("min instances ({min_instances}) may not exceed max instances ({max_instances})")));
    }
    let timeout = match &template.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => parse_duration("timeout", t)?,
    };
    if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
        return Err(invalid(format!(
            "timeout {}s is out of range: it must be between 1s and 3600s",
            timeout.as_secs_f64()
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
    })
}

fn container_port(container: &Container) -> Result<u16, ControlError> {
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
    default_period: Duration,
    default_threshold: u32,
) -> Result<Probe, ControlError> {
    let secs = |n: i32, what: &str| -> Result<Option<Duration>, ControlError> {
        match n {
            0 => Ok(None),
            n if n > 0 => Ok(Some(Duration::from_secs(n.unsigned_abs().into()))),
            n => Err(invalid(format!("{field}.{what} {n} may not be negative"))),
        }
    };
    let probe_port = |n: i32| -> Result<u16, ControlError> {
        if n == 0 {
            return Ok(port);
        }
        u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| invalid(format!("{field} port {n} is out of range")))
    };
    let action = match (&p.http_get, &p.tcp_socket) {
        (Some(h), None) => ProbeAction::HttpGet {
            port: probe_port(h.port)?,
            path: if h.path.is_empty() { "/".to_owned() } else { h.path.clone() },
        },
        (None, Some(t)) => ProbeAction::Tcp { port: probe_port(t.port)? },
        (None, None) => return Err(invalid(format!("{field} needs httpGet or tcpSocket"))),
        (Some(_), Some(_)) => return Err(invalid(format!("{field} may have only one of httpGet and tcpSocket"))),
    };
    let period = secs(p.period_seconds, "periodSeconds")?.unwrap_or(default_period);
    Ok(Probe {
        action,
        initial_delay: secs(p.initial_delay_seconds, "initialDelaySeconds")?.unwrap_or_default(),
        timeout: secs(p.timeout_seconds, "timeoutSeconds")?.unwrap_or(Duration::from_secs(1)).min(period),
        period,
        failure_threshold: u32::try_from(p.failure_threshold).ok().filter(|n| *n > 0).unwrap_or(default_threshold),
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
    fn vpc_access_is_refused_by_name_not_dropped() {
        let mut t = template(image());
        t.vpc_access =
            Some(serde_json::json!({"networkInterfaces": [{"network": "default"}], "egress": "ALL_TRAFFIC"}));
        assert!(err(&t).starts_with("vpcAccess (--network"), "{}", err(&t));
        let parsed: RevisionTemplate =
            serde_json::from_str(r#"{"containers":[{"image":"x"}],"vpcAccess":{"connector":"c"}}"#).unwrap();
        assert!(err(&parsed).contains("vpcAccess"), "{}", err(&parsed));
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
}
