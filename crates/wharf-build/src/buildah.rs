//! Running Debian's `buildah` for a build: daemonless, as root, with its storage under
//! `<data-dir>/build/storage` (overlay driver by default; `vfs` where the data directory is
//! itself on overlayfs), `RUN` steps run by runc (`--isolation oci`: their own PID, mount,
//! IPC, UTS and network namespaces, buildah's default seccomp profile and capability set; the
//! network is none unless the server allows it, see [`BuildNetwork`]), and registries
//! configured so unqualified names and Wharf's own registry resolve to Wharf on loopback with
//! the server's credentials ([`Buildah::write_registry_config`]).
//!
//! Every invocation runs in the build's cgroup ([`crate::cgroup`]), in its own process group,
//! with stdout and stderr appended to the build's log, until it exits, the build's deadline
//! passes (the group and cgroup are killed) or the server shuts down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::cgroup::BuildCgroup;

#[derive(Debug, thiserror::Error)]
pub enum BuildahError {
    #[error("cannot start buildah ({program}); install it with `apt-get install buildah`")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the build log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("buildah {step} exited with {status}")]
    Failed { step: &'static str, status: std::process::ExitStatus },
    #[error("the build ran past its deadline")]
    Timeout,
    /// Stopped by its cancellation token: a cancel, the disk quota, or the server's shutdown.
    #[error("the build was stopped")]
    Cancelled,
    #[error("cannot write the registry configuration {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The network a build's `RUN` steps get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BuildNetwork {
    /// A network namespace of their own with only loopback: no registry, host or internet.
    #[default]
    None,
    /// The host's network (the server's `--build-network host`): every address the host
    /// reaches, its loopback services (Wharf's API and registry) included. Only for builds as
    /// trusted as root on the host.
    Host,
    /// A network namespace Wharf makes for each build (the server's `--build-network egress`,
    /// [`crate::EgressNetworks`]): the instances' egress policy, so the internet (package
    /// registries) yes, the host (Wharf's API, registry, listeners, loopback), private and
    /// link-local ranges (169.254.169.254) and instances no; DNS through Wharf's resolver.
    Egress,
}

impl BuildNetwork {
    /// The setting's name (`--build-network`).
    pub fn name(self) -> &'static str {
        match self {
            BuildNetwork::None => "none",
            BuildNetwork::Host => "host",
            BuildNetwork::Egress => "egress",
        }
    }
}

impl std::str::FromStr for BuildNetwork {
    type Err = String;

    fn from_str(text: &str) -> Result<BuildNetwork, String> {
        match text {
            "none" => Ok(BuildNetwork::None),
            "host" => Ok(BuildNetwork::Host),
            "egress" => Ok(BuildNetwork::Egress),
            other => Err(format!(
                "build network {other:?} is not none (no network), egress (the internet, not the host) or host"
            )),
        }
    }
}

/// How to call buildah: the program and where its storage and configuration live.
#[derive(Debug, Clone)]
pub struct Buildah {
    pub program: PathBuf,
    /// `<data-dir>/build`: `storage/`, `run/`, `tmp/`, `registries.conf`, `auth.json`.
    pub dir: PathBuf,
    pub storage_driver: String,
}

impl Buildah {
    fn registries_conf(&self) -> PathBuf {
        self.dir.join("registries.conf")
    }

    fn auth_file(&self) -> PathBuf {
        self.dir.join("auth.json")
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// runc's state directory for the `RUN` steps' containers (`runc --root`), under the
    /// build directory rather than `/run/runc`, so what a killed build leaves is Wharf's to
    /// remove.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Forgets the state runc kept for steps' containers that were killed with their build
    /// (their processes are gone with the build's cgroup). Only when no build runs.
    pub fn forget_killed_steps(&self) {
        let root = self.runc_root();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Writes `registries.conf` (unqualified names search `registry` first; `names` are
    /// plain HTTP) and `auth.json` (Basic credentials of `token` for each of `names`, readable
    /// by root only).
    pub fn write_registry_config(&self, registry: &str, names: &[String], token: &str) -> Result<(), BuildahError> {
        use base64::Engine as _;
        let config_err = |path: &Path| {
            let path = path.to_owned();
            move |source| BuildahError::Config { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(config_err(&self.dir))?;
        let mut conf = format!(
            "# Written by wharf server: base images come from Wharf's own registry.\n\
             unqualified-search-registries = [\"{registry}\"]\nshort-name-mode = \"permissive\"\n"
        );
        for name in names {
            conf.push_str(&format!("\n[[registry]]\nlocation = \"{name}\"\ninsecure = true\n"));
        }
        let conf_path = self.registries_conf();
        std::fs::write(&conf_path, conf).map_err(config_err(&conf_path))?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("wharf:{token}"));
        let auths: serde_json::Map<String, serde_json::Value> =
            names.iter().map(|n| (n.clone(), serde_json::json!({ "auth": auth }))).collect();
        let auth_path = self.auth_file();
        write_private(&auth_path, &serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap_or_default())
            .map_err(config_err(&auth_path))?;
        for dir in ["storage", "run", "tmp"] {
            let path = self.dir.join(dir);
            std::fs::create_dir_all(&path).map_err(config_err(&path))?;
        }
        Ok(())
    }

    /// Removes every working container (and unmounts it): `buildah rm --all`. Only when no
    /// build runs.
    pub async fn remove_containers(&self, log: &Path) -> Result<(), BuildahError> {
        let far = Instant::now() + std::time::Duration::from_secs(120);
        let args: [&std::ffi::OsStr; 2] = ["rm".as_ref(), "--all".as_ref()];
        self.run("rm", &args, log, None, far, &CancellationToken::new()).await
    }

    /// [`Buildah::remove_containers`] from synchronous code (server start-up).
    pub fn remove_containers_now(&self, log: &Path) -> Result<(), BuildahError> {
        let log_err = |source| BuildahError::Log { path: log.to_owned(), source };
        let out = std::fs::OpenOptions::new().append(true).create(true).open(log).map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let mut command = self.command(None).into_std();
        command.args(["rm", "--all"]).stdin(Stdio::null()).stdout(out).stderr(err);
        let status =
            command.status().map_err(|source| BuildahError::Spawn { program: self.program.clone(), source })?;
        if status.success() { Ok(()) } else { Err(BuildahError::Failed { step: "rm", status }) }
    }

    /// `buildah --root .. --runroot .. --storage-driver ..` and its environment.
    fn command(&self, cgroup: Option<&BuildCgroup>) -> tokio::process::Command {
        // The wrapper shell enters the cgroup, then becomes buildah.
        let mut command = tokio::process::Command::new("/bin/sh");
        command.arg("-c").arg(
            "for procs in $WHARF_BUILD_CGROUP_PROCS; do echo $$ > \"$procs\" || exit 125; done; unset WHARF_BUILD_CGROUP_PROCS; exec \"$@\"",
        );
        command.arg("sh").arg(&self.program);
        let procs: Vec<String> =
            cgroup.map(|c| c.procs_files().iter().map(|p| p.display().to_string()).collect()).unwrap_or_default();
        command
            .env("WHARF_BUILD_CGROUP_PROCS", procs.join(" "))
            .env("CONTAINERS_REGISTRIES_CONF", self.registries_conf())
            .env("REGISTRY_AUTH_FILE", self.auth_file())
            .env("TMPDIR", self.dir.join("tmp"))
            .env("BUILDAH_ISOLATION", "oci")
            .arg("--root")
            .arg(self.storage_dir())
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--storage-driver")
            .arg(&self.storage_driver);
        command
    }

    /// Runs `buildah <args>` for `step`, output appended to `log`, in `cgroup`, until
    /// `deadline` or `cancel`.
    pub async fn run(
        &self,
        step: &'static str,
        args: &[&std::ffi::OsStr],
        log: &Path,
        cgroup: Option<&BuildCgroup>,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), BuildahError> {
        let log_err = |source| BuildahError::Log { path: log.to_owned(), source };
        let out = std::fs::OpenOptions::new().append(true).create(true).open(log).map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        let mut command = self.command(cgroup);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        let mut child =
            command.spawn().map_err(|source| BuildahError::Spawn { program: self.program.clone(), source })?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let kill_group = || {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|source| BuildahError::Spawn { program: self.program.clone(), source })?;
                if status.success() { Ok(()) } else { Err(BuildahError::Failed { step, status }) }
            }
            () = tokio::time::sleep(remaining) => {
                kill_group();
                let _ = child.wait().await;
                Err(BuildahError::Timeout)
            }
            () = cancel.cancelled() => {
                kill_group();
                let _ = child.wait().await;
                Err(BuildahError::Cancelled)
            }
        }
    }

    /// Removes every image from the build storage (the layer cache with them), when it has
    /// grown past its limit.
    pub async fn clear_cache(&self, log: &Path) -> Result<(), BuildahError> {
        let far = Instant::now() + std::time::Duration::from_secs(300);
        let args: [&std::ffi::OsStr; 3] = ["rmi".as_ref(), "--all".as_ref(), "--force".as_ref()];
        self.run("rmi", &args, log, None, far, &CancellationToken::new()).await
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let staged = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staged)?;
    file.write_all(bytes)?;
    std::fs::rename(&staged, path)
}

/// Bytes under `dir` (files only, not following symlinks).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}
