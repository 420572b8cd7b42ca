//! gcloud's volume flags for `deploy`, `services update` and `jobs create|update`:
//! `--add-volume name=NAME,type=in-memory[,size-limit=SIZE]`, `--add-volume-mount
//! volume=NAME,mount-path=PATH`, `--remove-volume NAME,...`, `--remove-volume-mount PATH,...`,
//! `--clear-volumes`, `--clear-volume-mounts`. Removals and clears apply first, then additions,
//! as gcloud orders them. Only the `in-memory` type is added this way; secret volumes come
//! from `--set-secrets` (gcloud's `type=secret` volumes are refused with that advice).

use anyhow::{Context as _, bail};
use wharf_api::Container;
use wharf_api::types::{EMPTY_DIR_MEDIUM_MEMORY, EmptyDirVolumeSource, Volume, VolumeMount};

use crate::cli::flags::split_list;

#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct VolumeFlags {
    /// Add a volume: name=NAME,type=in-memory[,size-limit=SIZE] (an in-memory volume; its
    /// size counts against --memory; default half of it). Repeatable.
    #[arg(long, value_name = "name=NAME,type=in-memory,size-limit=SIZE")]
    pub add_volume: Vec<String>,
    /// Mount a volume in the container: volume=NAME,mount-path=PATH. Repeatable.
    #[arg(long, value_name = "volume=NAME,mount-path=PATH")]
    pub add_volume_mount: Vec<String>,
    /// Remove volumes by name (and their mounts): NAME,...
    #[arg(long, value_name = "NAME,...")]
    pub remove_volume: Option<String>,
    /// Remove volume mounts by mount path: PATH,...
    #[arg(long, value_name = "PATH,...")]
    pub remove_volume_mount: Option<String>,
    /// Remove every volume that is not a secret's (secrets: --clear-secrets), with its mounts.
    #[arg(long)]
    pub clear_volumes: bool,
    /// Remove every volume mount that is not a secret's.
    #[arg(long)]
    pub clear_volume_mounts: bool,
}

/// `key=value,...` of one `--add-volume` or `--add-volume-mount`, keys checked against `known`.
fn options<'a>(flag: &str, text: &'a str, known: &[&str]) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').with_context(|| format!("{flag}: {pair:?} is not KEY=VALUE"))?;
        if !known.contains(&key) {
            bail!("{flag}: {key:?} is not a key of {flag}: use {}", known.join(", "));
        }
        if out.iter().any(|(k, _)| *k == key) {
            bail!("{flag}: {key} is given twice");
        }
        out.push((key, value));
    }
    Ok(out)
}

fn get<'a>(pairs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

impl VolumeFlags {
    fn any(&self) -> bool {
        !self.add_volume.is_empty()
            || !self.add_volume_mount.is_empty()
            || self.remove_volume.is_some()
            || self.remove_volume_mount.is_some()
            || self.clear_volumes
            || self.clear_volume_mounts
    }

    /// Applies the flags to the container's mounts and the template's volumes. Secret
    /// volumes (managed by the secret flags) are left alone by the clears.
    pub fn apply(&self, c: &mut Container, volumes: &mut Vec<Volume>) -> anyhow::Result<()> {
        if !self.any() {
            return Ok(());
        }
        let is_secret = |volumes: &[Volume], name: &str| volumes.iter().any(|v| v.name == name && v.secret.is_some());
        if self.clear_volume_mounts {
            c.volume_mounts.retain(|m| is_secret(volumes, &m.name));
        }
        if let Some(paths) = &self.remove_volume_mount {
            let paths = split_list(paths);
            for path in &paths {
                if !c.volume_mounts.iter().any(|m| m.mount_path.trim_end_matches('/') == path.trim_end_matches('/')) {
                    bail!("--remove-volume-mount: no volume is mounted at {path}");
                }
            }
            c.volume_mounts
                .retain(|m| !paths.iter().any(|p| p.trim_end_matches('/') == m.mount_path.trim_end_matches('/')));
        }
        let mut removed: Vec<String> = Vec::new();
        if self.clear_volumes {
            removed.extend(volumes.iter().filter(|v| v.secret.is_none()).map(|v| v.name.clone()));
        }
        if let Some(names) = &self.remove_volume {
            for name in split_list(names) {
                if !volumes.iter().any(|v| v.name == name) {
                    bail!("--remove-volume: there is no volume named {name}");
                }
                removed.push(name);
            }
        }
        volumes.retain(|v| !removed.contains(&v.name));
        c.volume_mounts.retain(|m| !removed.contains(&m.name));

        for text in &self.add_volume {
            let pairs = options("--add-volume", text, &["name", "type", "size-limit"])?;
            let name = get(&pairs, "name").filter(|n| !n.is_empty()).with_context(|| {
                format!("--add-volume {text:?} has no name: name=NAME,type=in-memory,size-limit=64Mi")
            })?;
            match get(&pairs, "type") {
                Some("in-memory") => {}
                Some("secret") => bail!(
                    "--add-volume {name}: mount secrets with --set-secrets=/DIR/FILE=SECRET:VERSION (or --update-secrets)"
                ),
                Some(other @ ("cloud-storage" | "nfs" | "cloudsql")) => {
                    bail!("--add-volume {name}: type={other} volumes are not supported by Wharf; use type=in-memory")
                }
                Some(other) => bail!("--add-volume {name}: type={other:?} is not a volume type: use type=in-memory"),
                None => bail!("--add-volume {name} needs a type: type=in-memory"),
            }
            if volumes.iter().any(|v| v.name == name) {
                bail!("--add-volume: a volume named {name} exists; remove it first with --remove-volume {name}");
            }
            volumes.push(Volume {
                name: name.to_owned(),
                secret: None,
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: EMPTY_DIR_MEDIUM_MEMORY.to_owned(),
                    size_limit: get(&pairs, "size-limit").unwrap_or_default().to_owned(),
                }),
            });
        }
        for text in &self.add_volume_mount {
            let pairs = options("--add-volume-mount", text, &["volume", "mount-path"])?;
            let (Some(volume), Some(path)) = (get(&pairs, "volume"), get(&pairs, "mount-path")) else {
                bail!("--add-volume-mount {text:?} needs both: volume=NAME,mount-path=PATH");
            };
            if !volumes.iter().any(|v| v.name == volume) {
                bail!(
                    "--add-volume-mount: there is no volume named {volume}; add it with --add-volume name={volume},..."
                );
            }
            c.volume_mounts.retain(|m| m.mount_path.trim_end_matches('/') != path.trim_end_matches('/'));
            c.volume_mounts.push(VolumeMount { name: volume.to_owned(), mount_path: path.to_owned() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        volumes: VolumeFlags,
    }

    fn apply(args: &[&str], c: &mut Container, volumes: &mut Vec<Volume>) -> anyhow::Result<()> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied())).unwrap().volumes.apply(c, volumes)
    }

    #[test]
    fn volumes_are_added_mounted_and_removed_as_gcloud_does() {
        let (mut c, mut volumes) = (Container::default(), Vec::new());
        apply(
            &[
                "--add-volume=name=cache,type=in-memory,size-limit=64Mi",
                "--add-volume",
                "name=tmp,type=in-memory",
                "--add-volume-mount=volume=cache,mount-path=/cache",
                "--add-volume-mount=volume=tmp,mount-path=/scratch",
            ],
            &mut c,
            &mut volumes,
        )
        .unwrap();
        let cache = volumes[0].empty_dir.as_ref().unwrap();
        assert_eq!(
            (volumes[0].name.as_str(), cache.medium.as_str(), cache.size_limit.as_str()),
            ("cache", "MEMORY", "64Mi")
        );
        assert_eq!(volumes[1].empty_dir.as_ref().unwrap().size_limit, "");
        assert_eq!(c.volume_mounts.iter().map(|m| m.mount_path.as_str()).collect::<Vec<_>>(), ["/cache", "/scratch"]);

        apply(&["--remove-volume-mount=/scratch"], &mut c, &mut volumes).unwrap();
        assert_eq!(c.volume_mounts.len(), 1);
        apply(&["--remove-volume=cache"], &mut c, &mut volumes).unwrap();
        assert_eq!((volumes.len(), c.volume_mounts.len()), (1, 0), "a removed volume takes its mounts along");

        // Clears keep the secrets' volumes, which the secret flags own.
        volumes.push(Volume { name: "secret-k-0".into(), secret: Some(Default::default()), empty_dir: None });
        c.volume_mounts.push(VolumeMount { name: "secret-k-0".into(), mount_path: "/secrets".into() });
        apply(&["--clear-volumes", "--clear-volume-mounts"], &mut c, &mut volumes).unwrap();
        assert_eq!(volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["secret-k-0"]);
        assert_eq!(c.volume_mounts.len(), 1);
    }

    #[test]
    fn mistakes_are_named() {
        let (mut c, mut volumes) = (Container::default(), Vec::new());
        let mut err = |args: &[&str]| apply(args, &mut c, &mut volumes).unwrap_err().to_string();
        assert!(err(&["--add-volume=name=x,type=cloud-storage"]).contains("not supported by Wharf"));
        assert!(err(&["--add-volume=name=x,type=secret"]).contains("--set-secrets"));
        assert!(err(&["--add-volume=name=x"]).contains("needs a type"));
        assert!(err(&["--add-volume=type=in-memory"]).contains("has no name"));
        assert!(err(&["--add-volume=name=x,type=in-memory,size=1"]).contains("\"size\" is not a key"));
        assert!(err(&["--add-volume-mount=volume=nope,mount-path=/x"]).contains("no volume named nope"));
        assert!(err(&["--add-volume-mount=volume=nope"]).contains("needs both"));
        assert!(err(&["--remove-volume=nope"]).contains("no volume named nope"));
        assert!(err(&["--remove-volume-mount=/nope"]).contains("no volume is mounted at /nope"));
    }
}
