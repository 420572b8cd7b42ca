//! An instance's root filesystem: the image's layer snapshots as read-only overlay lower
//! directories, under an upper directory on a tmpfs sized to the memory limit. Pages written
//! to a tmpfs are charged to the writer's memory cgroup, so writes count against the
//! instance's memory as Cloud Run's in-memory filesystem does, and vanish with the instance.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::RuntimeError;

/// The two mounts of a running instance.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// tmpfs holding the overlay's upper and work directories.
    pub scratch: PathBuf,
    /// The merged overlay: the container's `/`.
    pub merged: PathBuf,
}

impl Rootfs {
    pub fn paths(instance_dir: &Path) -> Rootfs {
        Rootfs { scratch: instance_dir.join("scratch"), merged: instance_dir.join("rootfs") }
    }

    /// Mounts the rootfs of `layers` (bottom first) under `instance_dir`. On failure nothing
    /// stays mounted.
    pub fn mount(instance_dir: &Path, layers: &[PathBuf], memory_bytes: u64) -> Result<Rootfs, RuntimeError> {
        let rootfs = Rootfs::paths(instance_dir);
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
            let options =
                format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
            mount(Some("wharf-rootfs"), &rootfs.merged, Some("overlay"), MsFlags::MS_NODEV, Some(options.as_str()))
                .map_err(|e| RuntimeError::Mount { target: rootfs.merged.clone(), source: e.into() })
        })();
        if let Err(e) = result {
            let _ = umount2(&rootfs.scratch, MntFlags::MNT_DETACH);
            return Err(e);
        }
        Ok(rootfs)
    }

    /// Unmounts both mounts (lazily, so a straggling reference cannot block teardown).
    /// Unmounting what is not mounted is not an error.
    pub fn unmount(&self) {
        for target in [&self.merged, &self.scratch] {
            match umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => tracing::warn!(target = %target.display(), error = %e, "unmount failed"),
            }
        }
    }
}
