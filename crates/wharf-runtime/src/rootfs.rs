//! An instance's root filesystem: the image's layer snapshots as read-only overlay lower
//! directories, under an upper directory on a tmpfs sized to the memory limit. Pages written
//! to a tmpfs are charged to the writer's memory cgroup, so writes count against the
//! instance's memory as Cloud Run's in-memory filesystem does, and vanish with the instance.
//!
//! The server mounts only the scratch tmpfs (upper and work directories, the OCI bundle, the
//! secret files) on the host. The overlay itself is mounted by the instance's shim, in a
//! mount namespace of its own ([`mount_overlay_privately`]), which the container's namespace
//! is then copied from: the host's mount table never holds an instance's overlay, the
//! overlay is gone with the container's last process (no unmount to miss), and every
//! container start, which reads its mount namespace's whole `/proc/self/mountinfo` several
//! times (libcontainer), no longer reads one long overlay line per running instance: with
//! 300 instances that reading was a third of the CPU spent starting containers.
//! The shim also resolves the image's `USER` there, in the merged tree
//! ([`crate::spec::resolve_user`]).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::Spec;

use crate::error::RuntimeError;

/// Annotation of the bundle's `config.json`: the overlay mount options of the container's
/// root (`lowerdir=...,upperdir=...,workdir=...`), for the shim to mount.
pub const OVERLAY_ANNOTATION: &str = "run.wharf.dev/rootfs-overlay";
/// Annotation of the bundle's `config.json`: the image's `USER`, for the shim to resolve to
/// a uid and gid in the merged tree (absent: root).
pub const USER_ANNOTATION: &str = "run.wharf.dev/image-user";

/// An instance's root filesystem, by path: the scratch tmpfs the server mounts, and where
/// the shim mounts the overlay (`merged`, the container's `/`) with `overlay_options`.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// tmpfs holding the overlay's upper and work directories.
    pub scratch: PathBuf,
    /// Where the merged overlay is mounted, in the shim's and the container's namespaces.
    pub merged: PathBuf,
    /// The overlay's mount options (empty for a rootfs only known by its paths).
    pub overlay_options: String,
}

impl Rootfs {
    pub fn paths(instance_dir: &Path) -> Rootfs {
        Rootfs {
            scratch: instance_dir.join("scratch"),
            merged: instance_dir.join("rootfs"),
            overlay_options: String::new(),
        }
    }

    /// Mounts the scratch tmpfs for the rootfs of `layers` (bottom first) under
    /// `instance_dir` and prepares the overlay's directories; the shim mounts the overlay
    /// ([`mount_overlay_privately`]). On failure nothing stays mounted.
    pub fn mount(instance_dir: &Path, layers: &[PathBuf], memory_bytes: u64) -> Result<Rootfs, RuntimeError> {
        let mut rootfs = Rootfs::paths(instance_dir);
        for dir in [&rootfs.scratch, &rootfs.merged] {
            std::fs::create_dir_all(dir).map_err(RuntimeError::io("create directory", dir))?;
        }
        let tmpfs_options = format!("size={memory_bytes},mode=0755");
        mount(Some("wharf-scratch"), &rootfs.scratch, Some("tmpfs"), MsFlags::MS_NODEV, Some(tmpfs_options.as_str()))
            .map_err(|e| RuntimeError::Mount { target: rootfs.scratch.clone(), source: e.into() })?;
        let result = (|| {
            let upper = rootfs.scratch.join("upper");
            let work = rootfs.scratch.join("work");
            for dir in [&upper, &work] {
                std::fs::create_dir(dir).map_err(RuntimeError::io("create directory", dir))?;
            }
            let empty = rootfs.scratch.join("empty");
            let lower: Vec<String> = if layers.is_empty() {
                std::fs::create_dir(&empty).map_err(RuntimeError::io("create directory", &empty))?;
                vec![empty.display().to_string()]
            } else {
                layers.iter().rev().map(|p| p.display().to_string()).collect()
            };
            Ok(format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display()))
        })();
        match result {
            Ok(options) => rootfs.overlay_options = options,
            Err(e) => {
                let _ = umount2(&rootfs.scratch, MntFlags::MNT_DETACH);
                return Err(e);
            }
        }
        Ok(rootfs)
    }

    /// Unmounts the scratch tmpfs, and the overlay if a rootfs of an older Wharf mounted it on
    /// the host (lazily, so a straggling reference cannot block teardown). Unmounting what is
    /// not mounted is not an error.
    pub fn unmount(&self) {
        for target in [&self.merged, &self.scratch] {
            match umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => tracing::warn!(target = %target.display(), error = %e, "unmount failed"),
            }
        }
    }
}

/// Why the shim could not prepare the container's root.
#[derive(Debug, thiserror::Error)]
pub enum PrivateRootfsError {
    #[error("cannot read the bundle's config.json")]
    LoadSpec(#[source] oci_spec::OciSpecError),
    #[error("cannot write the bundle's config.json")]
    SaveSpec(#[source] oci_spec::OciSpecError),
    #[error("cannot enter a mount namespace of the instance's own")]
    Unshare(#[source] nix::Error),
    #[error("cannot mount the image's layers at {target}")]
    Mount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    User(#[from] crate::spec::SpecError),
}

/// In the shim, before libcontainer creates the container from the bundle at `config`:
/// enters a private mount namespace, mounts the overlay the server described
/// ([`OVERLAY_ANNOTATION`]) at the spec's root, and resolves the image's user
/// ([`USER_ANNOTATION`]) in it into the spec's `process.user`. A bundle without the
/// annotations is left as it is. Must run in the single-threaded shim.
pub fn mount_overlay_privately(config: &Path) -> Result<(), PrivateRootfsError> {
    let mut spec = Spec::load(config).map_err(PrivateRootfsError::LoadSpec)?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let Some(options) = annotations.get(OVERLAY_ANNOTATION) else { return Ok(()) };
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(PrivateRootfsError::Unshare)?;
    // Nothing mounted here reaches the host, and nothing the host mounts later reaches here.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(PrivateRootfsError::Unshare)?;
    mount(Some("wharf-rootfs"), &root, Some("overlay"), MsFlags::MS_NODEV, Some(options.as_str()))
        .map_err(|source| PrivateRootfsError::Mount { target: root.clone(), source })?;
    if let Some(user) = annotations.get(USER_ANNOTATION) {
        let (uid, gid) = crate::spec::resolve_user(Some(user), &root)?;
        if let Some(process) = spec.process_mut() {
            let mut resolved = process.user().clone();
            resolved.set_uid(uid);
            resolved.set_gid(gid);
            process.set_user(resolved);
        }
        spec.save(config).map_err(PrivateRootfsError::SaveSpec)?;
    }
    Ok(())
}
