//! Flags several `wharf run` verbs share, parsed one way: the container flags of `deploy`,
//! `services update` and `jobs create|update` ([`ContainerFlags`]), gcloud's `KEY=VALUE,...`
//! and `A,B,...` lists, and durations. Values are taken as typed, never trimmed, as gcloud
//! does (`--set-env-vars=A=" x"` keeps the space).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use wharf_api::types::{SecretVolumeSource, VersionToPath, Volume, VolumeMount};
use wharf_api::{Container, EnvVar, ResourceRequirements};

/// The container's image, entrypoint, env and resources.
///
/// The env flags follow gcloud's groups: `--set-env-vars`, `--env-vars-file` and
/// `--clear-env-vars` replace the whole env and exclude each other and the others;
/// `--update-env-vars` and `--remove-env-vars` change it and may be combined (removals first).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ContainerFlags {
    /// The container image, e.g. 127.0.0.1:5000/hello:v1
    #[arg(long)]
    pub image: Option<String>,
    /// Entrypoint override, comma-separated.
    #[arg(long)]
    pub command: Option<String>,
    /// Arguments, comma-separated.
    #[arg(long)]
    pub args: Option<String>,
    /// Replace all env vars: KEY=VALUE,...
    #[arg(
        long,
        value_name = "KEY=VALUE,...",
        conflicts_with_all = ["env_vars_file", "clear_env_vars", "update_env_vars", "remove_env_vars"]
    )]
    pub set_env_vars: Option<String>,
    /// Replace all env vars with those of a YAML file of KEY: VALUE.
    #[arg(long, conflicts_with_all = ["clear_env_vars", "update_env_vars", "remove_env_vars"])]
    pub env_vars_file: Option<PathBuf>,
    /// Remove all env vars.
    #[arg(long, conflicts_with_all = ["update_env_vars", "remove_env_vars"])]
    pub clear_env_vars: bool,
    /// Add or change env vars: KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub update_env_vars: Option<String>,
    /// Remove env vars: KEY,...
    #[arg(long, value_name = "KEY,...")]
    pub remove_env_vars: Option<String>,
    /// CPU limit, e.g. 1, 0.5, 500m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory limit, e.g. 512Mi, 2Gi.
    #[arg(long)]
    pub memory: Option<String>,
    /// Replace all secrets: ENV=SECRET:VERSION (an env var) or /DIR/FILE=SECRET:VERSION (a
    /// file on a read-only in-memory mount), comma-separated; VERSION is a number or latest.
    #[arg(long, value_name = "ENV=SECRET:VERSION,...", conflicts_with_all = ["clear_secrets", "update_secrets", "remove_secrets"])]
    pub set_secrets: Option<String>,
    /// Add or change secrets, as --set-secrets.
    #[arg(long, value_name = "ENV=SECRET:VERSION,...")]
    pub update_secrets: Option<String>,
    /// Remove secrets: ENV or /DIR/FILE, comma-separated.
    #[arg(long, value_name = "ENV,...")]
    pub remove_secrets: Option<String>,
    /// Remove all secrets.
    #[arg(long, conflicts_with_all = ["update_secrets", "remove_secrets"])]
    pub clear_secrets: bool,
    #[command(flatten)]
    pub volumes: crate::cli::volumes::VolumeFlags,
}

/// A secret the container uses: as an env var, or as a file (`/dir/file`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretUse {
    /// The env var's name, or the file's absolute path.
    target: String,
    secret: String,
    version: String,
}

impl SecretUse {
    fn is_file(&self) -> bool {
        self.target.starts_with('/')
    }
}

/// gcloud's `TARGET=SECRET:VERSION,...`.
fn parse_secret_uses(flag: &str, text: &str) -> anyhow::Result<Vec<SecretUse>> {
    split_pairs(flag, text)?
        .into_iter()
        .map(|(target, reference)| {
            let (secret, version) = reference.rsplit_once(':').with_context(|| {
                format!("{flag}: {target}={reference} needs a version: {target}={reference}:latest")
            })?;
            if secret.is_empty() || version.is_empty() {
                bail!("{flag}: {target}={reference} is not SECRET:VERSION");
            }
            if target.starts_with('/') && (target.ends_with('/') || target.matches('/').count() < 2) {
                bail!("{flag}: {target} must be a file below a directory, e.g. /secrets/{secret}");
            }
            Ok(SecretUse { target, secret: secret.to_owned(), version: version.to_owned() })
        })
        .collect()
}

impl ContainerFlags {
    /// Applies the flags given to `c` (the current container when updating); flags not given
    /// leave `c` as it is. Reads `--env-vars-file`.
    pub fn apply(&self, c: &mut Container, volumes: &mut Vec<Volume>) -> anyhow::Result<()> {
        if let Some(image) = &self.image {
            c.image = image.clone();
        }
        if let Some(command) = &self.command {
            c.command = split_list(command);
        }
        if let Some(args) = &self.args {
            c.args = split_list(args);
        }
        if self.memory.is_some() || self.cpu.is_some() {
            let resources = c.resources.get_or_insert_with(ResourceRequirements::default);
            if let Some(memory) = &self.memory {
                resources.limits.insert("memory".into(), memory.clone());
            }
            if let Some(cpu) = &self.cpu {
                resources.limits.insert("cpu".into(), cpu.clone());
            }
        }
        let secret_env: Vec<EnvVar> = c.env.iter().filter(|e| e.value_source.is_some()).cloned().collect();
        let mut env: Vec<(String, String)> = c
            .env
            .iter()
            .filter(|e| e.value_source.is_none())
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        if self.clear_env_vars {
            env.clear();
        }
        if let Some(path) = &self.env_vars_file {
            env = read_env_vars_file(path)?;
        }
        if let Some(set) = &self.set_env_vars {
            env = split_pairs("--set-env-vars", set)?;
        }
        if let Some(remove) = &self.remove_env_vars {
            let remove = split_list(remove);
            env.retain(|(name, _)| !remove.contains(name));
        }
        if let Some(update) = &self.update_env_vars {
            for (k, v) in split_pairs("--update-env-vars", update)? {
                env.retain(|(name, _)| *name != k);
                env.push((k, v));
            }
        }
        c.env = env.into_iter().map(|(name, value)| EnvVar { name, value: Some(value), value_source: None }).collect();
        c.env.extend(secret_env);
        self.apply_secrets(c, volumes)?;
        self.volumes.apply(c, volumes)
    }

    /// `--set-secrets`, `--update-secrets`, `--remove-secrets`, `--clear-secrets`: env vars
    /// with a `secretKeyRef`, and secret volumes (one per directory) with their mounts.
    fn apply_secrets(&self, c: &mut Container, volumes: &mut Vec<Volume>) -> anyhow::Result<()> {
        if self.set_secrets.is_none()
            && self.update_secrets.is_none()
            && self.remove_secrets.is_none()
            && !self.clear_secrets
        {
            return Ok(());
        }
        let mut uses = current_secret_uses(c, volumes);
        if self.clear_secrets {
            uses.clear();
        }
        if let Some(set) = &self.set_secrets {
            uses = parse_secret_uses("--set-secrets", set)?;
        }
        if let Some(remove) = &self.remove_secrets {
            let remove = split_list(remove);
            uses.retain(|u| !remove.contains(&u.target));
        }
        if let Some(update) = &self.update_secrets {
            for new in parse_secret_uses("--update-secrets", update)? {
                uses.retain(|u| u.target != new.target);
                uses.push(new);
            }
        }
        // Rewrite: plain env stays; secret env vars, secret volumes and their mounts are
        // replaced by `uses`.
        let secret_volumes: Vec<String> =
            volumes.iter().filter(|v| v.secret.is_some()).map(|v| v.name.clone()).collect();
        c.env.retain(|e| e.value_source.is_none());
        c.volume_mounts.retain(|m| !secret_volumes.contains(&m.name));
        volumes.retain(|v| v.secret.is_none());
        let mut dirs: Vec<(String, String, Vec<VersionToPath>)> = Vec::new();
        for u in uses {
            if !u.is_file() {
                c.env.push(EnvVar {
                    name: u.target,
                    value: None,
                    value_source: Some(serde_json::json!({"secretKeyRef": {"secret": u.secret, "version": u.version}})),
                });
                continue;
            }
            let (dir, file) = u.target.rsplit_once('/').unwrap_or(("/", &u.target));
            let item = VersionToPath { path: file.to_owned(), version: u.version.clone(), mode: None };
            match dirs.iter_mut().find(|(d, _, _)| d == dir) {
                Some((_, secret, items)) if *secret == u.secret => items.push(item),
                Some((_, secret, _)) => bail!(
                    "{dir} holds files of secret {secret} and of {}: each directory mounts one secret; use another directory",
                    u.secret
                ),
                None => dirs.push((dir.to_owned(), u.secret.clone(), vec![item])),
            }
        }
        for (i, (dir, secret, items)) in dirs.into_iter().enumerate() {
            let name = format!("secret-{}-{i}", secret.rsplit('/').next().unwrap_or(&secret));
            volumes.push(Volume {
                name: name.clone(),
                secret: Some(SecretVolumeSource { secret, items, default_mode: None }),
                empty_dir: None,
            });
            c.volume_mounts.push(VolumeMount { name, mount_path: dir });
        }
        Ok(())
    }
}

/// The secrets a container uses now, as the flags name them.
fn current_secret_uses(c: &Container, volumes: &[Volume]) -> Vec<SecretUse> {
    let mut uses = Vec::new();
    for var in &c.env {
        if let Some(reference) = var.value_source.as_ref().and_then(|s| s.get("secretKeyRef")) {
            uses.push(SecretUse {
                target: var.name.clone(),
                secret: reference["secret"].as_str().unwrap_or_default().to_owned(),
                version: reference["version"].as_str().unwrap_or("latest").to_owned(),
            });
        }
    }
    for mount in &c.volume_mounts {
        let Some(source) = volumes.iter().find(|v| v.name == mount.name).and_then(|v| v.secret.as_ref()) else {
            continue;
        };
        let dir = mount.mount_path.trim_end_matches('/');
        for item in &source.items {
            let version = if item.version.is_empty() { "latest".to_owned() } else { item.version.clone() };
            uses.push(SecretUse { target: format!("{dir}/{}", item.path), secret: source.secret.clone(), version });
        }
    }
    uses
}

fn read_env_vars_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let map: BTreeMap<String, serde_norway::Value> =
        serde_norway::from_str(&text).with_context(|| format!("{} is not a YAML map of KEY: VALUE", path.display()))?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_norway::Value::String(s) => Ok((k, s)),
            serde_norway::Value::Number(n) => Ok((k, n.to_string())),
            serde_norway::Value::Bool(b) => Ok((k, b.to_string())),
            _ => bail!("{}: the value of {k} must be a string, number or boolean", path.display()),
        })
        .collect()
}

/// gcloud's `KEY=VALUE,...`: split at commas, then at each pair's first `=`; nothing trimmed.
pub fn split_pairs(flag: &str, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{flag}: {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

/// gcloud's `A,B,...`, empty items dropped.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A duration flag (`--timeout`, `--task-timeout`) in the API's form: `"5m"` -> `"300s"`.
pub fn api_duration(flag: &str, text: &str) -> anyhow::Result<String> {
    let duration = wharf_api::duration::parse(text).with_context(|| flag.to_owned())?;
    Ok(wharf_api::duration::to_proto(duration))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        container: ContainerFlags,
    }

    fn parse(args: &[&str]) -> Result<ContainerFlags, clap::Error> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|f| f.container)
    }

    fn env(c: &Container) -> Vec<(&str, &str)> {
        c.env.iter().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or(""))).collect()
    }

    #[test]
    fn parses_every_container_flag() {
        let flags = parse(&[
            "--image=127.0.0.1:5000/hello:v1",
            "--command=/bin/app,serve",
            "--args=-v,--port=1",
            "--update-env-vars=A=1",
            "--remove-env-vars=B,C",
            "--cpu=0.5",
            "--memory",
            "512Mi",
        ])
        .unwrap();
        let mut c = Container::default();
        flags.apply(&mut c, &mut Vec::new()).unwrap();
        assert_eq!(c.image, "127.0.0.1:5000/hello:v1");
        assert_eq!(c.command, ["/bin/app", "serve"]);
        assert_eq!(c.args, ["-v", "--port=1"]);
        let limits = c.resources.unwrap().limits;
        assert_eq!((limits["cpu"].as_str(), limits["memory"].as_str()), ("0.5", "512Mi"));
        assert_eq!(parse(&[]).unwrap(), ContainerFlags::default());
    }

    #[test]
    fn env_flags_compose_and_keep_values_as_typed() {
        let mut c = Container::default();
        parse(&["--set-env-vars=A=1,B= two ,C=x=y"]).unwrap().apply(&mut c, &mut Vec::new()).unwrap();
        assert_eq!(env(&c), [("A", "1"), ("B", " two "), ("C", "x=y")]);
        parse(&["--update-env-vars=B=3,D=4", "--remove-env-vars=A"]).unwrap().apply(&mut c, &mut Vec::new()).unwrap();
        assert_eq!(env(&c), [("C", "x=y"), ("B", "3"), ("D", "4")]);
        parse(&["--image=x"]).unwrap().apply(&mut c, &mut Vec::new()).unwrap();
        assert_eq!(env(&c).len(), 3, "flags not given leave the env alone");
        parse(&["--clear-env-vars"]).unwrap().apply(&mut c, &mut Vec::new()).unwrap();
        assert_eq!(env(&c), Vec::<(&str, &str)>::new());
        let err = parse(&["--set-env-vars=oops"]).unwrap().apply(&mut c, &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "--set-env-vars: \"oops\" is not KEY=VALUE");
    }

    #[test]
    fn secret_flags_follow_gclouds_syntax_and_compose() {
        let mut c = Container::default();
        let mut volumes = Vec::new();
        parse(&["--set-env-vars=PLAIN=1", "--set-secrets=DB=db-password:latest,/secrets/api/key=api-key:2"])
            .unwrap()
            .apply(&mut c, &mut volumes)
            .unwrap();
        assert_eq!(env(&c), [("PLAIN", "1"), ("DB", "")]);
        assert_eq!(
            c.env[1].value_source,
            Some(serde_json::json!({"secretKeyRef": {"secret": "db-password", "version": "latest"}}))
        );
        assert_eq!(
            c.volume_mounts,
            [VolumeMount { name: "secret-api-key-0".into(), mount_path: "/secrets/api".into() }]
        );
        let source = volumes[0].secret.as_ref().unwrap();
        assert_eq!(
            (source.secret.as_str(), source.items[0].path.as_str(), source.items[0].version.as_str()),
            ("api-key", "key", "2")
        );

        // Env flags leave secret env vars alone; the secret flags change them.
        parse(&["--update-env-vars=X=2"]).unwrap().apply(&mut c, &mut volumes).unwrap();
        assert_eq!(env(&c), [("PLAIN", "1"), ("X", "2"), ("DB", "")]);
        parse(&["--remove-secrets=/secrets/api/key", "--update-secrets=TOKEN=tok:1"])
            .unwrap()
            .apply(&mut c, &mut volumes)
            .unwrap();
        assert_eq!(env(&c), [("PLAIN", "1"), ("X", "2"), ("DB", ""), ("TOKEN", "")]);
        assert!(volumes.is_empty() && c.volume_mounts.is_empty());
        parse(&["--clear-secrets"]).unwrap().apply(&mut c, &mut volumes).unwrap();
        assert_eq!(env(&c), [("PLAIN", "1"), ("X", "2")]);

        let mut bad = |flag: &str| parse(&[flag]).unwrap().apply(&mut c, &mut volumes).unwrap_err().to_string();
        assert!(bad("--set-secrets=DB=db-password").contains("needs a version"));
        assert!(bad("--set-secrets=/key=k:1").contains("below a directory"));
        assert!(bad("--set-secrets=/s/a=one:1,/s/b=two:1").contains("each directory mounts one secret"));
    }

    #[test]
    fn env_vars_file_reads_a_yaml_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.yaml");
        std::fs::write(&path, "NAME: hello\nCOUNT: 3\nDEBUG: true\n").unwrap();
        let mut c = Container::default();
        parse(&["--env-vars-file", path.to_str().unwrap()]).unwrap().apply(&mut c, &mut Vec::new()).unwrap();
        assert_eq!(env(&c), [("COUNT", "3"), ("DEBUG", "true"), ("NAME", "hello")]);
        std::fs::write(&path, "NAME: [1, 2]\n").unwrap();
        parse(&["--env-vars-file", path.to_str().unwrap()]).unwrap().apply(&mut c, &mut Vec::new()).unwrap_err();
    }

    #[test]
    fn replacing_env_flags_exclude_the_others() {
        for args in [
            &["--set-env-vars=A=1", "--update-env-vars=B=2"][..],
            &["--set-env-vars=A=1", "--clear-env-vars"],
            &["--clear-env-vars", "--remove-env-vars=A"],
            &["--env-vars-file=x.yaml", "--set-env-vars=A=1"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{args:?}");
        }
    }

    #[test]
    fn durations_take_the_api_form() {
        assert_eq!(api_duration("--timeout", "300").unwrap(), "300s");
        assert_eq!(api_duration("--timeout", "5m").unwrap(), "300s");
        assert_eq!(api_duration("--timeout", "1.5s").unwrap(), "1.5s");
        let err = api_duration("--timeout", "soon").unwrap_err();
        assert!(format!("{err:#}").starts_with("--timeout: \"soon\" is not a duration"), "{err:#}");
    }
}

/// Cloud Run's VPC egress flags, mapped to `vpcAccess`: Direct VPC egress (`--network`,
/// `--subnet`, `--network-tags`) or a connector (`--vpc-connector`), and `--vpc-egress`.
/// Names are networks of the server's `--vpc-network`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VpcFlags {
    /// Direct VPC egress: the network instances may reach (a name of the server's --vpc-network).
    #[arg(long)]
    pub network: Option<String>,
    /// Direct VPC egress: the subnet (also names a network of the server's --vpc-network when
    /// --network is not given).
    #[arg(long)]
    pub subnet: Option<String>,
    /// Network tags of the Direct VPC egress interface: TAG,... (kept; Wharf has no firewall
    /// rules by tag).
    #[arg(long)]
    pub network_tags: Option<String>,
    /// Drop Direct VPC egress.
    #[arg(long)]
    pub clear_network: bool,
    /// A Serverless VPC Access connector (a name of the server's --vpc-network).
    #[arg(long)]
    pub vpc_connector: Option<String>,
    /// Drop the VPC connector.
    #[arg(long)]
    pub clear_vpc_connector: bool,
    /// Which traffic goes to the VPC: private-ranges-only (default) or all-traffic.
    #[arg(long, value_parser = ["private-ranges-only", "all-traffic"])]
    pub vpc_egress: Option<String>,
}

impl VpcFlags {
    /// Applies the flags to a template's `vpcAccess` (the current one when updating).
    pub fn apply(&self, vpc: &mut Option<wharf_api::VpcAccess>) -> anyhow::Result<()> {
        let direct = self.network.is_some() || self.subnet.is_some() || self.network_tags.is_some();
        if direct && self.vpc_connector.is_some() {
            anyhow::bail!("give --network/--subnet or --vpc-connector, not both");
        }
        if (direct && self.clear_network) || (self.vpc_connector.is_some() && self.clear_vpc_connector) {
            anyhow::bail!("a VPC flag and its --clear-... flag contradict each other: give one");
        }
        let mut access = vpc.take().unwrap_or_default();
        if self.clear_network {
            access.network_interfaces.clear();
        }
        if self.clear_vpc_connector {
            access.connector.clear();
        }
        if let Some(connector) = &self.vpc_connector {
            access.connector.clone_from(connector);
            access.network_interfaces.clear();
        }
        if direct {
            access.connector.clear();
            if access.network_interfaces.is_empty() {
                access.network_interfaces.push(wharf_api::NetworkInterface::default());
            }
            let interface = &mut access.network_interfaces[0];
            if let Some(network) = &self.network {
                interface.network.clone_from(network);
            }
            if let Some(subnet) = &self.subnet {
                interface.subnetwork.clone_from(subnet);
            }
            if let Some(tags) = &self.network_tags {
                interface.tags = tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
            }
        }
        if let Some(egress) = &self.vpc_egress {
            access.egress = Some(
                if egress == "all-traffic" {
                    wharf_api::VPC_EGRESS_ALL_TRAFFIC
                } else {
                    wharf_api::VPC_EGRESS_PRIVATE_RANGES_ONLY
                }
                .to_owned(),
            );
        }
        let none_left = access.connector.is_empty() && access.network_interfaces.is_empty();
        if none_left && (self.clear_network || self.clear_vpc_connector) {
            // Nothing to send traffic to: the egress setting goes too.
            access.egress = None;
        }
        if !(none_left && access.egress.is_none()) {
            *vpc = Some(access);
        }
        Ok(())
    }
}
