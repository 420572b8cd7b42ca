//! The OCI runtime spec (`config.json`) of an instance: image config (Entrypoint, Cmd,
//! WorkingDir, User, Env) with the revision's overrides, the sandbox (namespaces, masked
//! paths, capabilities, rlimits) and the limits (memory, CPU quota, pids), built as oci-spec's
//! typed `Spec`; `start` writes it into the bundle, and creating the container is the shim's
//! job. The seccomp filter is not in the spec (libcontainer is built without libseccomp): the
//! shim installs it itself (`seccomp`).

use std::path::{Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use wharf_image::manifest::ContainerConfig;

use crate::resources::Resources;

/// Why an instance's runtime spec cannot be built from its image and settings.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the image has no Entrypoint or Cmd; set a command for the container")]
    NoCommand,
    #[error("user {user:?} is not in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} is not in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("bad {field} {value:?} for {user} in the image's /etc/passwd")]
    BadPasswdEntry { user: String, field: &'static str, value: String },
    #[error("cannot resolve the image's user {user:?}")]
    AccountFile {
        user: String,
        #[source]
        source: wharf_image::hostfile::HostFileError,
    },
    #[error(
        "the instance asks for {cpu_millis}m CPU but all instances together may use {total_millis}m \
         (the server's --instance-cpu-limit); lower --cpu"
    )]
    CpuAboveServerLimit { cpu_millis: u64, total_millis: u64 },
    #[error("building the OCI runtime spec failed")]
    Build(#[from] OciSpecError),
    #[error("writing the OCI runtime spec to {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: OciSpecError,
    },
}

/// RLIMIT_NOFILE (soft, hard) of every instance, not inherited from the server (whose limit
/// is raised for its many sockets): 1024 keeps `select()`-based code safe, and a process may
/// raise its soft limit up to the hard one, as on Cloud Run.
pub const NOFILE: (u64, u64) = (1024, 65536);

/// The RLIMIT_NOFILE instances get on this host: [`NOFILE`], except that the hard limit is
/// capped at the server's own when the server cannot raise it (a root without
/// CAP_SYS_RESOURCE, for example confined by its own container): asking for more would make
/// every start fail with EPERM.
pub fn host_nofile() -> (u64, u64) {
    let (_, server_hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, u64::MAX));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let cap_sys_resource = 24;
    nofile_within(server_hard, effective & (1 << cap_sys_resource) != 0)
}

fn nofile_within(server_hard: u64, can_raise: bool) -> (u64, u64) {
    let hard = if can_raise { NOFILE.1 } else { NOFILE.1.min(server_hard) };
    (NOFILE.0.min(hard), hard)
}

/// The CFS period CPU quotas are expressed against.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set minus CAP_MKNOD (no device nodes: the device cgroup and
/// `nodev` mounts would refuse them anyway) and CAP_NET_RAW (no raw or packet sockets, so no
/// spoofed packets or ARP games on the instance's link): enough for ordinary servers, including
/// dropping root, binding ports below 1024 and chroot; nothing that reaches the host.
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What runc masks (bind-mounts `/dev/null` or an empty read-only tmpfs over): kernel memory,
/// the keyring, timers and scheduler internals that leak host activity, and firmware.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// What runc makes read-only: kernel tunables and the magic SysRq trigger.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The command line: the revision's command replaces the image's Entrypoint (and then the
/// image's Cmd is dropped, as in Kubernetes); the revision's args replace Cmd.
pub fn command_line(
    image: &ContainerConfig,
    command: Option<&[String]>,
    args: Option<&[String]>,
) -> Result<Vec<String>, SpecError> {
    let entrypoint: Vec<String> = match command {
        Some(c) => c.to_vec(),
        None => image.entrypoint().clone().unwrap_or_default(),
    };
    let rest: Vec<String> = match (args, command) {
        (Some(a), _) => a.to_vec(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd().clone().unwrap_or_default(),
    };
    let line: Vec<String> = entrypoint.into_iter().chain(rest).collect();
    if line.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(line)
}

/// The most of an image's `/etc/passwd` or `/etc/group` the server reads.
pub const MAX_ACCOUNT_FILE_BYTES: u64 = 4 << 20;

/// Resolves the image's `User` (`uid`, `uid:gid`, `name`, `name:group`) against the rootfs's
/// `/etc/passwd` and `/etc/group`.
/// Missing files count as empty (an image without `/etc/passwd` can still name a numeric uid).
/// The files are the image's, read on the host: symlinks resolve inside `rootfs`, and
/// anything but a regular file of at most [`MAX_ACCOUNT_FILE_BYTES`] is refused
/// ([`wharf_image::hostfile::read_in_root`]).
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), SpecError> {
    let user = user.map(str::trim).unwrap_or("");
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |file: &str| {
        wharf_image::hostfile::read_in_root(rootfs, Path::new(file), MAX_ACCOUNT_FILE_BYTES)
            .map(|bytes| String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
            .map_err(|source| SpecError::AccountFile { user: user.to_owned(), source })
    };
    let passwd = read("/etc/passwd")?;
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd_entry(&passwd, |f| f[2] == user_part).and_then(|f| f[3].parse().ok());
            (uid, gid.unwrap_or(uid))
        }
        Err(_) => {
            let fields = passwd_entry(&passwd, |f| f[0] == user_part)
                .ok_or_else(|| SpecError::UnknownUser { user: user_part.to_owned() })?;
            let number = |field: &'static str, value: &str| {
                value.parse::<u32>().map_err(|_| SpecError::BadPasswdEntry {
                    user: user_part.to_owned(),
                    field,
                    value: value.to_owned(),
                })
            };
            (number("uid", fields[2])?, number("gid", fields[3])?)
        }
    };
    let gid = match group_part {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read("/etc/group")?;
                passwd_entry(&groups, |f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| SpecError::UnknownGroup { group: g.to_owned() })?
            }
        },
    };
    Ok((uid, gid))
}

fn passwd_entry(file: &str, matches: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    file.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && matches(f))
}

/// Everything the spec is built from.
#[derive(Debug)]
pub struct SpecInput<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: &'a str,
    pub user: (u32, u32),
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub netns: &'a Path,
    pub cgroup: &'a str,
    pub resources: Resources,
    pub resolv_conf: &'a Path,
    pub hosts: &'a Path,
    /// RLIMIT_NOFILE (soft, hard): [`host_nofile`].
    pub nofile: (u64, u64),
    /// Secret volumes: (directory in the container, directory on the instance's in-memory
    /// scratch holding the files), bind-mounted read-only.
    pub secret_mounts: Vec<(String, PathBuf)>,
    /// In-memory volumes (`emptyDir`): (directory in the container, size in bytes), each a
    /// tmpfs of its own mounted in the container's mount namespace, so its pages are charged
    /// to the instance's memory cgroup as they are written and freed with the instance.
    pub memory_volumes: Vec<(String, u64)>,
}

/// Builds the runtime spec. Every field the instance relies on is set explicitly: oci-spec's
/// builders fill unset fields from its own defaults (youki's example config: an NOFILE
/// rlimit of 1024, `TERM=xterm`, inheritable and ambient capabilities, default namespaces and
/// mounts), which are not Wharf's sandbox. The only rlimit set is NOFILE (`input.nofile`); the
/// others are the shim's (the server's), which are the system defaults.
pub fn runtime_spec(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let capabilities: Capabilities = CAPABILITIES.iter().copied().collect();
    let mut caps = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities.clone())
        .effective(capabilities.clone())
        .permitted(capabilities)
        .build()?;
    caps.set_inheritable(None);
    caps.set_ambient(None);
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(input.user.0).gid(input.user.1).build()?)
        .args(input.args.clone())
        .env(input.env.clone())
        .cwd(if input.cwd.is_empty() { "/" } else { input.cwd })
        .capabilities(caps)
        .no_new_privileges(true)
        .build()?;
    let nofile: PosixRlimit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(input.nofile.0)
        .hard(input.nofile.1)
        .build()?;
    process.set_rlimits(Some(vec![nofile]));

    let quota = input.resources.cpu_millis * CPU_PERIOD_US / 1000;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
        .memory(LinuxMemoryBuilder::default().limit(saturating_i64(input.resources.memory_bytes)).build()?)
        .cpu(LinuxCpuBuilder::default().quota(saturating_i64(quota)).period(CPU_PERIOD_US).build()?)
        .pids(LinuxPidsBuilder::default().limit(saturating_i64(input.resources.pids)).build()?)
        .build()?;
    let namespace = |typ, path: Option<&Path>| -> Result<LinuxNamespace, SpecError> {
        let builder = LinuxNamespaceBuilder::default().typ(typ);
        Ok(match path {
            Some(path) => builder.path(path).build()?,
            None => builder.build()?,
        })
    };
    let linux = LinuxBuilder::default()
        .namespaces(vec![
            namespace(LinuxNamespaceType::Pid, None)?,
            namespace(LinuxNamespaceType::Ipc, None)?,
            namespace(LinuxNamespaceType::Uts, None)?,
            namespace(LinuxNamespaceType::Mount, None)?,
            namespace(LinuxNamespaceType::Network, Some(input.netns))?,
        ])
        .cgroups_path(input.cgroup)
        .resources(resources)
        .masked_paths(MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
        .build()?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path(input.rootfs).readonly(false).build()?)
        .hostname(input.hostname)
        .mounts(mounts(input)?)
        .linux(linux)
        .build()?;
    spec.set_annotations(None);
    Ok(spec)
}

fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>, SpecError> {
    let mount = |destination: &str, typ: &str, source: &Path, options: &[&str]| -> Result<Mount, SpecError> {
        Ok(MountBuilder::default()
            .destination(destination)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
            .build()?)
    };
    let p = Path::new;
    let mut mounts = vec![
        mount("/proc", "proc", p("proc"), &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", p("tmpfs"), &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount("/dev/pts", "devpts", p("devpts"), &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"])?,
        mount("/dev/shm", "tmpfs", p("shm"), &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", p("mqueue"), &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", p("sysfs"), &["nosuid", "noexec", "nodev", "ro"])?,
        mount("/etc/resolv.conf", "bind", input.resolv_conf, &["rbind", "ro"])?,
        mount("/etc/hosts", "bind", input.hosts, &["rbind", "ro"])?,
    ];
    for (destination, source) in &input.secret_mounts {
        mounts.push(mount(destination, "bind", source, &["rbind", "ro", "nosuid", "nodev", "noexec"])?);
    }
    for (destination, size_bytes) in &input.memory_volumes {
        // Writable by whatever user the image runs as, as Cloud Run's in-memory volumes are.
        let size = format!("size={size_bytes}");
        mounts.push(mount(destination, "tmpfs", p("tmpfs"), &["nosuid", "nodev", "mode=1777", &size])?);
    }
    Ok(mounts)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use oci_spec::image::ConfigBuilder;
    use serde_json::json;

    use super::*;

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ContainerConfig {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let mut builder = ConfigBuilder::default();
        if let Some(e) = entrypoint {
            builder = builder.entrypoint(v(e));
        }
        if let Some(c) = cmd {
            builder = builder.cmd(v(c));
        }
        builder.build().unwrap()
    }

    #[test]
    fn nofile_is_capped_only_where_the_server_cannot_raise_it() {
        assert_eq!(nofile_within(20_000, false), (1024, 20_000));
        assert_eq!(nofile_within(20_000, true), (1024, 65_536));
        assert_eq!(nofile_within(1 << 20, false), (1024, 65_536));
        assert_eq!(nofile_within(512, false), (512, 512));
    }

    #[test]
    fn overrides_follow_kubernetes_rules() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let image = config(Some(&["/app"]), Some(&["--serve"]));
        assert_eq!(command_line(&image, None, None).unwrap(), s(&["/app", "--serve"]));
        assert_eq!(command_line(&image, None, Some(&s(&["--x"]))).unwrap(), s(&["/app", "--x"]));
        assert_eq!(command_line(&image, Some(&s(&["/bin/sh"])), None).unwrap(), s(&["/bin/sh"]));
        let err = command_line(&config(None, None), None, None).unwrap_err();
        assert!(matches!(err, SpecError::NoCommand), "{err:?}");
    }

    #[test]
    fn users_resolve_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\nodd:x:12x:0::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(None, dir.path()).unwrap(), (0, 0));
        assert_eq!(resolve_user(Some("app"), dir.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user(Some("app:staff"), dir.path()).unwrap(), (1000, 50));
        assert_eq!(resolve_user(Some("1000"), dir.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user(Some("4242:7"), dir.path()).unwrap(), (4242, 7));
        match resolve_user(Some("ghost"), dir.path()) {
            Err(SpecError::UnknownUser { user }) => assert_eq!(user, "ghost"),
            other => panic!("expected UnknownUser, got {other:?}"),
        }
        match resolve_user(Some("app:wheel"), dir.path()) {
            Err(SpecError::UnknownGroup { group }) => assert_eq!(group, "wheel"),
            other => panic!("expected UnknownGroup, got {other:?}"),
        }
        match resolve_user(Some("odd"), dir.path()) {
            Err(SpecError::BadPasswdEntry { user, field, value }) => {
                assert_eq!((user.as_str(), field, value.as_str()), ("odd", "uid", "12x"));
            }
            other => panic!("expected BadPasswdEntry, got {other:?}"),
        }
    }

    /// Hostile account files: symlinks out of the image and a FIFO. None may reach the host's
    /// files or block; a FIFO is refused with an error naming it.
    #[test]
    fn hostile_account_files_are_not_followed_out_of_the_image() {
        let outer = tempfile::tempdir().unwrap();
        let rootfs = outer.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(outer.path().join("passwd"), "app:x:7:7::/:/bin/sh\n").unwrap();
        for target in ["/dev/zero", "../../passwd", outer.path().join("passwd").to_str().unwrap()] {
            let _ = std::fs::remove_file(rootfs.join("etc/passwd"));
            std::os::unix::fs::symlink(target, rootfs.join("etc/passwd")).unwrap();
            match resolve_user(Some("app"), &rootfs) {
                Err(SpecError::UnknownUser { user }) => assert_eq!(user, "app", "{target}"),
                other => panic!("/etc/passwd -> {target}: expected UnknownUser, got {other:?}"),
            }
            assert_eq!(resolve_user(Some("42"), &rootfs).unwrap(), (42, 42));
        }
        std::fs::remove_file(rootfs.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&rootfs.join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = resolve_user(Some("app"), &rootfs).unwrap_err();
        assert!(matches!(err, SpecError::AccountFile { .. }), "{err:?}");
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("/etc/passwd in the image is a FIFO"), "{chain}");
    }

    fn input<'a>(rootfs: &'a Path, netns: &'a Path, resolv: &'a Path, hosts: &'a Path) -> SpecInput<'a> {
        SpecInput {
            args: vec!["/app".into(), "--serve".into()],
            env: vec!["PATH=/bin".into(), "PORT=8080".into()],
            cwd: "",
            user: (1000, 1001),
            rootfs,
            hostname: "abc123",
            netns,
            cgroup: "/wharf-abc123",
            resources: Resources { memory_bytes: 512 << 20, cpu_millis: 1500, pids: 256 },
            resolv_conf: resolv,
            hosts,
            nofile: NOFILE,
            secret_mounts: Vec::new(),
            memory_volumes: Vec::new(),
        }
    }

    #[test]
    fn spec_sets_the_sandbox_and_limits() {
        let (rootfs, netns) = (Path::new("/i/rootfs"), Path::new("/run/netns/wharf-abc123"));
        let (resolv, hosts) = (Path::new("/i/resolv.conf"), Path::new("/i/hosts"));
        let spec = runtime_spec(&input(rootfs, netns, resolv, hosts)).unwrap();

        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.args().as_deref().unwrap(), ["/app", "--serve"]);
        assert!(process.env().as_ref().unwrap().contains(&"PORT=8080".to_owned()));
        assert_eq!(process.cwd(), Path::new("/"));
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1001));
        let rlimits = process.rlimits().as_ref().unwrap();
        let nofile: Vec<_> = rlimits.iter().map(|r| (r.typ(), r.soft(), r.hard())).collect();
        assert_eq!(nofile, [(PosixRlimitType::RlimitNofile, 1024, 65536)]);
        let caps = process.capabilities().as_ref().unwrap();
        let expected: Capabilities = CAPABILITIES.iter().copied().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&expected));
        assert_eq!(caps.effective().as_ref(), Some(&expected));
        assert_eq!(caps.permitted().as_ref(), Some(&expected));
        assert_eq!(caps.inheritable(), &None);
        assert_eq!(caps.ambient(), &None);
        for dangerous in [Capability::SysAdmin, Capability::Mknod, Capability::NetRaw, Capability::SysPtrace] {
            assert!(!expected.contains(&dangerous), "{dangerous:?}");
        }
        for needed in [Capability::NetBindService, Capability::Setuid, Capability::Setgid, Capability::Chown] {
            assert!(expected.contains(&needed), "{needed:?}");
        }

        let linux = spec.linux().as_ref().unwrap();
        let namespaces: Vec<_> =
            linux.namespaces().as_ref().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect();
        assert_eq!(
            namespaces,
            [
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some(netns.to_path_buf())),
            ]
        );
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/wharf-abc123")));
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(512 << 20));
        let cpu = resources.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(CPU_PERIOD_US)));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 256);
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), MASKED_PATHS.len());
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_owned()));

        let root = spec.root().as_ref().unwrap();
        assert_eq!((root.path().as_path(), root.readonly()), (rootfs, Some(false)));
        let mounts = spec.mounts().as_ref().unwrap();
        let hosts_mount = mounts.iter().find(|m| m.destination() == Path::new("/etc/hosts")).unwrap();
        assert_eq!(hosts_mount.source().as_deref(), Some(hosts));
        assert_eq!(hosts_mount.options().as_deref().unwrap(), ["rbind", "ro"]);
    }

    #[test]
    fn memory_volumes_are_sized_tmpfs_mounts_without_devices_or_setuid() {
        let (rootfs, netns) = (Path::new("/i/rootfs"), Path::new("/run/netns/wharf-abc123"));
        let (resolv, hosts) = (Path::new("/i/resolv.conf"), Path::new("/i/hosts"));
        let mut input = input(rootfs, netns, resolv, hosts);
        input.memory_volumes = vec![("/cache".to_owned(), 64 << 20)];
        let spec = runtime_spec(&input).unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        let cache = mounts.iter().find(|m| m.destination() == Path::new("/cache")).unwrap();
        assert_eq!(cache.typ().as_deref(), Some("tmpfs"));
        assert_eq!(cache.options().as_deref().unwrap(), ["nosuid", "nodev", "mode=1777", "size=67108864"]);
    }

    /// The typed spec serializes to the document the `json!` version wrote (capability sets
    /// compared as sets: oci-spec keeps them in a `HashSet`).
    #[test]
    fn spec_serializes_as_before() {
        let (rootfs, netns) = (Path::new("/i/rootfs"), Path::new("/run/netns/wharf-abc123"));
        let (resolv, hosts) = (Path::new("/i/resolv.conf"), Path::new("/i/hosts"));
        let mut actual = serde_json::to_value(runtime_spec(&input(rootfs, netns, resolv, hosts)).unwrap()).unwrap();
        let caps = actual["process"]["capabilities"].as_object_mut().unwrap();
        for set in caps.values_mut() {
            let mut names: Vec<String> = serde_json::from_value(set.take()).unwrap();
            names.sort();
            *set = json!(names);
        }
        let mut caps: Vec<String> =
            CAPABILITIES.iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_owned()).collect();
        caps.sort();
        let expected = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 1000, "gid": 1001},
                "args": ["/app", "--serve"],
                "env": ["PATH=/bin", "PORT=8080"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 65536}],
                "noNewPrivileges": true
            },
            "root": {"path": "/i/rootfs", "readonly": false},
            "hostname": "abc123",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/i/resolv.conf", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/i/hosts", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"},
                    {"type": "network", "path": "/run/netns/wharf-abc123"}
                ],
                "cgroupsPath": "/wharf-abc123",
                "resources": {
                    "devices": [{"allow": false, "access": "rwm"}],
                    "memory": {"limit": 512 << 20},
                    "cpu": {"quota": 150_000, "period": CPU_PERIOD_US},
                    "pids": {"limit": 256}
                },
                "maskedPaths": MASKED_PATHS,
                "readonlyPaths": READONLY_PATHS
            }
        });
        assert_eq!(actual, expected, "{}", serde_json::to_string_pretty(&actual).unwrap());
    }
}
