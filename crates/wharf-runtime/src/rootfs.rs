//! An instance's root filesystem: the image's layer snapshots as read-only overlay lower
//! directories, under an upper directory on a tmpfs sized to the memory limit. Pages written
//! to a tmpfs are charged to the writer's memory cgroup, so writes count against the
//! instance's memory as Cloud Run's in-memory filesystem does, and vanish with the instance.
//!
//! The server mounts only the scratch tmpfs (upper and work directories, the OCI bundle, the
//! secret files, the container's `hosts` and `resolv.conf`, its output FIFOs and the shim's
//! log) on the host. The overlay itself is mounted by the instance's shim, in a
//! mount namespace of its own ([`mount_overlay_privately`]), which the container's namespace
//! is then copied from: the host's mount table never holds an instance's overlay, the
//! overlay is gone with the container's last process (no unmount to miss), and every
//! container start, which reads its mount namespace's whole `/proc/self/mountinfo` several
//! times (libcontainer), no longer reads one long overlay line per running instance: with
//! 300 instances that reading was a third of the CPU spent starting containers.
//! The shim also resolves the image's `USER` there, in the merged tree
//! ([`crate::spec::resolve_user`]). A shim of the forker copies that namespace from the
//! forker's, which holds no instance's mounts ([`enter_shim_template`]), and is handed its
//! own scratch and network namespace ([`GivenMounts`]), so a start costs the same with a
//! thousand instances running as with none.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
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
            detach(target);
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

/// What a shim of the forker is handed instead of finding it in its mount namespace, which
/// is copied from the forker's ([`enter_shim_template`]): a clone of its instance's scratch
/// mount (`open_tree`, detached, the same tmpfs) and its network namespace.
#[derive(Debug)]
pub struct GivenMounts {
    pub scratch: OwnedFd,
    pub netns: OwnedFd,
}

/// In the shim forker, once: enters a mount namespace of its own, private, without the
/// instances' mounts (the `instances` mount point, holding every instance's scratch tmpfs)
/// and without `/run/netns`'s bindings of their network namespaces. Each shim's namespace is
/// then a copy of this one, whose table stays as small as the host's without instances,
/// instead of the host's, which grows by two mounts per instance: with a thousand instances,
/// copying and then detaching them made each start cost more than the one before
/// (`docs/benchmarks.md`, "Round 6"). The shim gets its own mounts as [`GivenMounts`].
/// Must run while this process has a single thread.
pub fn enter_shim_template(instances: &Path) -> Result<(), PrivateRootfsError> {
    enter_private_namespace()?;
    // Either may not be a mount point (no instance has run yet): then there is nothing to drop.
    for dir in [instances, Path::new("/run/netns")] {
        match umount2(dir, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(source) => return Err(PrivateRootfsError::Mount { target: dir.to_owned(), source }),
        }
    }
    Ok(())
}

/// In the shim, before libcontainer creates the container from `bundle`: enters a private
/// mount namespace, mounts the overlay the server described ([`OVERLAY_ANNOTATION`]) at the
/// spec's root, and resolves the image's user ([`USER_ANNOTATION`]) in it into the spec's
/// `process.user`. A shim of the forker first attaches its `given` scratch (which holds the
/// bundle) and binds its network namespace where the spec names it; any other shim detaches
/// the other instances' mounts from its copy of the host's table. A bundle without the
/// annotations is left as it is. Must run in the single-threaded shim.
pub fn mount_overlay_privately(bundle: &Path, given: Option<GivenMounts>) -> Result<(), PrivateRootfsError> {
    let config = bundle.join("config.json");
    if let Some(given) = &given {
        enter_private_namespace()?;
        let scratch = bundle.parent().unwrap_or(bundle);
        rustix::mount::move_mount(
            given.scratch.as_fd(),
            "",
            rustix::fs::CWD,
            scratch,
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| PrivateRootfsError::Mount {
            target: scratch.to_owned(),
            source: nix::errno::Errno::from_raw(e.raw_os_error()),
        })?;
    }
    let mut spec = Spec::load(&config).map_err(PrivateRootfsError::LoadSpec)?;
    let netns = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).and_then(|namespaces| {
        namespaces
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .and_then(|n| n.path().clone())
    });
    if let (Some(given), Some(netns)) = (&given, &netns) {
        bind_descriptor(given.netns.as_fd(), netns)?;
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let Some(options) = annotations.get(OVERLAY_ANNOTATION) else { return Ok(()) };
    let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    if given.is_none() {
        enter_private_namespace()?;
        if let Some(instance_dir) = root.parent() {
            drop_other_instances_mounts(instance_dir, netns.as_deref())?;
        }
    }
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
        spec.save(&config).map_err(PrivateRootfsError::SaveSpec)?;
    }
    Ok(())
}

/// Enters a mount namespace of this process's own, copied from its current one.
fn enter_private_namespace() -> Result<(), PrivateRootfsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(PrivateRootfsError::Unshare)?;
    // Nothing mounted here reaches the host, and nothing the host mounts later reaches here.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(PrivateRootfsError::Unshare)
}

/// Binds what the open descriptor `fd` refers to (a namespace file) onto `target`: a
/// namespace can be bound from a descriptor though no path to it is mounted here.
fn bind_descriptor(fd: BorrowedFd<'_>, target: &Path) -> Result<(), PrivateRootfsError> {
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(Some(source.as_str()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|source| PrivateRootfsError::Mount { target: target.to_owned(), source })
}

/// Where the shim parks the instance's scratch while it detaches the other instances'.
const PARKING: &str = "/mnt";

/// In the shim's private mount namespace: detaches every other instance's mounts (their
/// scratch tmpfs under the instances directory, their network namespaces under `/run/netns`),
/// keeping this instance's, so the container's namespace is copied from a table as small as
/// the host's without instances, and libcontainer's reads of it stay short. Each tree goes
/// in one detach of its parent mount (the server makes the instances directory a mount
/// point: [`make_instances_mount_point`]); where the parent is not a mount point nothing is
/// detached and the start goes on as before.
fn drop_other_instances_mounts(instance_dir: &Path, netns: Option<&Path>) -> Result<(), PrivateRootfsError> {
    let scratch = instance_dir.join("scratch");
    if let Some(instances) = instance_dir.parent()
        && mount(Some(&scratch), PARKING, None::<&str>, MsFlags::MS_BIND, None::<&str>).is_ok()
    {
        let parked = Path::new(PARKING);
        if umount2(instances, MntFlags::MNT_DETACH).is_ok() {
            mount(Some(parked), &scratch, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(|source| PrivateRootfsError::Mount { target: scratch.clone(), source })?;
        } else {
            let _ = umount2(parked, MntFlags::MNT_DETACH);
        }
    }
    if let Some(netns) = netns
        && let Some(dir) = netns.parent()
        && let Ok(handle) = std::fs::File::open(netns)
        && umount2(dir, MntFlags::MNT_DETACH).is_ok()
    {
        bind_descriptor(handle.as_fd(), netns)?;
    }
    Ok(())
}

/// Makes `instances` (the directory holding every instance's directory) a private mount
/// point of its own, if it is not one yet, so each shim can detach all the instances' mounts
/// below it at once ([`mount_overlay_privately`]); [`unmount_instances_mount_point`] undoes
/// it when the runtime shuts down.
pub fn make_instances_mount_point(instances: &Path) -> Result<(), RuntimeError> {
    if !is_mount_point(instances) {
        mount(Some(instances), instances, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| RuntimeError::Mount { target: instances.to_owned(), source: e.into() })?;
    }
    mount(None::<&str>, instances, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| RuntimeError::Mount { target: instances.to_owned(), source: e.into() })
}

/// Whether `path` is a mount point in this process's mount namespace.
fn is_mount_point(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy();
    mounts.lines().filter_map(|l| l.split(' ').nth(4)).any(|point| unescape_mount_point(point) == wanted)
}

/// Mounts a tmpfs at libcontainer's state directory (`state_root`: a directory and a
/// `state.json` per running container, rewritten at each step of a start), unless something
/// is mounted there already (the tmpfs of a server that did not shut down cleanly, whose
/// containers the sweep just removed). Containers do not outlive a reboot, and neither need
/// their states. On the data directory's disk each container's files were new inodes, and
/// an ext4 inode allocation scans its group's recently deleted inodes: a few percent of the
/// machine when many instances start and stop. [`unmount_state_tmpfs`] undoes it.
pub fn mount_state_tmpfs(state_root: &Path) -> Result<(), RuntimeError> {
    if is_mount_point(state_root) {
        return Ok(());
    }
    mount(
        Some("wharf-state"),
        state_root,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=256m"),
    )
    .map_err(|e| RuntimeError::Mount { target: state_root.to_owned(), source: e.into() })
}

/// Undoes [`mount_state_tmpfs`] (once no container runs).
pub fn unmount_state_tmpfs(state_root: &Path) {
    detach(state_root);
}

/// A mount point as `/proc/self/mountinfo` prints it, with its octal escapes (`\\040` for a
/// space, and tab, newline and backslash) decoded.
fn unescape_mount_point(point: &str) -> String {
    let mut out = String::with_capacity(point.len());
    let mut rest = point;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Undoes [`make_instances_mount_point`] (once no instance runs).
pub fn unmount_instances_mount_point(instances: &Path) {
    detach(instances);
}

/// Unmounts `target` lazily; that nothing is mounted there is not an error.
fn detach(target: &Path) {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(target = %target.display(), error = %e, "unmount failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_point;

    #[test]
    fn mount_points_are_unescaped_as_mountinfo_escapes_them() {
        assert_eq!(unescape_mount_point("/var/lib/wharf/instances"), "/var/lib/wharf/instances");
        assert_eq!(unescape_mount_point("/data\\040dir/a\\134b"), "/data dir/a\\b");
        assert_eq!(unescape_mount_point("/odd\\x"), "/odd\\x");
    }
}
