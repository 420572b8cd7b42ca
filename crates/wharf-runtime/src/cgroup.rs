//! Where instances' cgroups are and what they say. Every instance's cgroup is
//! `<parent>/wharf-<id>`, under one parent cgroup (`wharf` by default) that carries the
//! server-wide limits in the kernel: total memory (`memory.limit_in_bytes` on v1,
//! `memory.max` on v2) and total CPU (CFS quota on v1, `cpu.max` on v2). libcontainer creates
//! and deletes the instances' cgroups; [`CgroupParent`] owns the parent: it creates it with
//! its limits at start, re-creates it if another server removed it, and removes it when the
//! last server leaves (an `rmdir` that the kernel refuses while any instance cgroup is in it).
//!
//! Layouts: pure v1, the v1 + v2 hybrid (this machine: libcontainer uses the v1 controllers,
//! the `unified` v2 mount carries none) and pure v2. Readers try v1 then v2.
//!
//! Device access on pure v2 is the [`crate::devices`] BPF filter's job, attached to the parent.

use std::path::{Path, PathBuf};

use crate::spec::CPU_PERIOD_US;

const ROOT: &str = "/sys/fs/cgroup";

/// The v1 controllers an instance's cgroup is created in (those present on the machine).
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"];

/// The v2 controllers enabled for the parent's children.
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The cgroup name of container `id`.
pub fn name(id: &str) -> String {
    format!("wharf-{id}")
}

/// How the machine mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// v1 controllers under `/sys/fs/cgroup/<controller>`, perhaps with an empty v2 mount at
    /// `/sys/fs/cgroup/unified` (the hybrid layout): libcontainer uses the v1 controllers.
    V1,
    /// The unified v2 hierarchy at `/sys/fs/cgroup`.
    V2,
}

impl Layout {
    pub fn detect() -> Layout {
        match nix::sys::statfs::statfs(ROOT) {
            Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Layout::V2,
            _ => Layout::V1,
        }
    }
}

/// Server-wide limits of all instances together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLimits {
    pub memory_bytes: u64,
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
}

impl ParentLimits {
    /// What leaves the host headroom: memory 75% of MemTotal minus 1 GiB (at least 256 MiB),
    /// CPU every core.
    pub fn host_default() -> ParentLimits {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let total_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(4 << 20);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        ParentLimits { memory_bytes: default_memory(total_kib * 1024), cpu_millis: cores * 1000 }
    }
}

fn default_memory(total: u64) -> u64 {
    (total / 4 * 3).saturating_sub(1 << 30).max(256 << 20)
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create the parent cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set {file} to {value:?}")]
    Write {
        file: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cgroup parent {0:?} is not a relative cgroup path like `wharf` or `wharf/test`")]
    BadParent(String),
    #[error("cannot set the options {options:?} on the cgroup2 mount {mount_point}")]
    Reconfigure {
        mount_point: PathBuf,
        options: String,
        #[source]
        source: std::io::Error,
    },
}

/// The parent cgroup of every instance of this server, with the server-wide limits.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    /// Relative to the hierarchy root, e.g. `wharf`.
    pub path: String,
    pub limits: ParentLimits,
    pub layout: Layout,
}

impl CgroupParent {
    pub fn new(path: &str, limits: ParentLimits) -> Result<CgroupParent, CgroupError> {
        let path = path.trim_matches('/');
        let valid = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !valid {
            return Err(CgroupError::BadParent(path.to_owned()));
        }
        Ok(CgroupParent { path: path.to_owned(), limits, layout: Layout::detect() })
    }

    /// The cgroup path libcontainer is given for instance `id` (absolute in the hierarchy).
    pub fn instance_path(&self, id: &str) -> String {
        format!("/{}/{}", self.path, name(id))
    }

    /// Where the parent's memory limit lives.
    fn memory_dir(&self) -> PathBuf {
        match self.layout {
            Layout::V1 => Path::new(ROOT).join("memory").join(&self.path),
            Layout::V2 => Path::new(ROOT).join(&self.path),
        }
    }

    /// Creates the parent (in every v1 controller, or in v2 with its controllers enabled) and
    /// writes its limits.
    pub fn setup(&self) -> Result<(), CgroupError> {
        match self.layout {
            Layout::V1 => self.setup_v1(),
            Layout::V2 => self.setup_v2(),
        }
    }

    /// Re-creates the parent if it is gone (another server on this machine removed it when it
    /// left while this one had no instance). Called before each instance starts.
    pub fn ensure(&self) -> Result<(), CgroupError> {
        if self.memory_dir().is_dir() { Ok(()) } else { self.setup() }
    }

    fn setup_v1(&self) -> Result<(), CgroupError> {
        for controller in V1_CONTROLLERS {
            let hierarchy = Path::new(ROOT).join(controller);
            if !hierarchy.is_dir() {
                continue;
            }
            let mut dir = hierarchy.clone();
            for component in self.path.split('/') {
                let parent = dir.clone();
                dir.push(component);
                create(&dir)?;
                if *controller == "cpuset" {
                    // A new cpuset is empty: no task may join it until it has cpus and mems.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let current = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
                        if current.trim().is_empty() {
                            let inherited = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                            write(&dir.join(file), inherited.trim())?;
                        }
                    }
                }
            }
        }
        let memory = Path::new(ROOT).join("memory").join(&self.path);
        if memory.is_dir() {
            let _ = std::fs::write(memory.join("memory.use_hierarchy"), "1");
            write(&memory.join("memory.limit_in_bytes"), &self.limits.memory_bytes.to_string())?;
        }
        let cpu = Path::new(ROOT).join("cpu").join(&self.path);
        if cpu.is_dir() {
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&cpu.join("cpu.cfs_quota_us"), &self.cpu_quota().to_string())?;
        }
        Ok(())
    }

    fn setup_v2(&self) -> Result<(), CgroupError> {
        let mut dir = PathBuf::from(ROOT);
        let enable = V2_CONTROLLERS.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        for component in self.path.split('/') {
            // Children get the controllers only if every ancestor hands them down.
            write(&dir.join("cgroup.subtree_control"), &enable)?;
            dir.push(component);
            create(&dir)?;
        }
        write(&dir.join("cgroup.subtree_control"), &enable)?;
        write(&dir.join("memory.max"), &self.limits.memory_bytes.to_string())?;
        write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", self.cpu_quota()))?;
        crate::devices::attach(&dir).map_err(|source| CgroupError::Write {
            file: dir.clone(),
            value: "the device filter (BPF_CGROUP_DEVICE)".to_owned(),
            source,
        })?;
        Ok(())
    }

    fn cpu_quota(&self) -> u64 {
        self.limits.cpu_millis * CPU_PERIOD_US / 1000
    }

    /// The memory limit the kernel holds for the parent, as read back.
    pub fn kernel_memory_limit(&self) -> Option<u64> {
        let file = match self.layout {
            Layout::V1 => "memory.limit_in_bytes",
            Layout::V2 => "memory.max",
        };
        std::fs::read_to_string(self.memory_dir().join(file)).ok()?.trim().parse().ok()
    }

    /// Removes the parent if no instance cgroup is in it any more (the kernel refuses to
    /// remove a cgroup with children, so the last server to leave is the one that removes it).
    pub fn remove_if_unused(&self) {
        let components: Vec<&str> = self.path.split('/').collect();
        let mut hierarchies = vec![PathBuf::from(ROOT)];
        if self.layout == Layout::V1 {
            hierarchies = V1_CONTROLLERS.iter().map(|c| Path::new(ROOT).join(c)).filter(|p| p.is_dir()).collect();
        }
        for hierarchy in hierarchies {
            for depth in (1..=components.len()).rev() {
                let dir = hierarchy.join(components[..depth].join("/"));
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
            }
        }
    }
}

fn create(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(CgroupError::Create { path: dir.to_owned(), source: e })
        }
        _ => Ok(()),
    }
}

fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(file, value).map_err(|source| CgroupError::Write {
        file: file.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// CPU throttling counters of a running instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_us: u64,
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU counters of the cgroup at `path` (as given to libcontainer, e.g. `/wharf/wharf-<id>`).
pub fn cpu_stats(path: &str) -> Option<CpuStats> {
    let path = path.trim_start_matches('/');
    if let Ok(text) = std::fs::read_to_string(format!("{ROOT}/cpu/{path}/cpu.stat")) {
        return Some(CpuStats {
            periods: field(&text, "nr_periods")?,
            throttled_periods: field(&text, "nr_throttled")?,
            throttled_us: field(&text, "throttled_time")? / 1000,
        });
    }
    let text = std::fs::read_to_string(format!("{ROOT}/{path}/cpu.stat")).ok()?;
    Some(CpuStats {
        periods: field(&text, "nr_periods")?,
        throttled_periods: field(&text, "nr_throttled")?,
        throttled_us: field(&text, "throttled_usec")?,
    })
}

/// The file that freezes one instance's cgroup: `freezer.state` in the v1 `freezer`
/// controller (this machine's hybrid layout), `cgroup.freeze` on v2. Freezing stops every
/// process of the instance without a signal it could see; thawing lets them run on, as if no
/// time had passed for them but the clock.
#[derive(Debug, Clone)]
pub struct Freezer {
    layout: Layout,
    /// The instance's cgroup directory in the hierarchy that freezes.
    dir: PathBuf,
}

impl Freezer {
    /// The freezer of the cgroup at `path` (as given to libcontainer, `/wharf/wharf-<id>`).
    pub fn new(layout: Layout, path: &str) -> Freezer {
        let path = path.trim_start_matches('/');
        let dir = match layout {
            Layout::V1 => Path::new(ROOT).join("freezer").join(path),
            Layout::V2 => Path::new(ROOT).join(path),
        };
        Freezer { layout, dir }
    }

    /// The freezer of the cgroup directory `dir` in the hierarchy of `layout`.
    #[cfg(test)]
    pub(crate) fn for_directory(layout: Layout, dir: PathBuf) -> Freezer {
        Freezer { layout, dir }
    }

    fn file(&self) -> PathBuf {
        match self.layout {
            Layout::V1 => self.dir.join("freezer.state"),
            Layout::V2 => self.dir.join("cgroup.freeze"),
        }
    }

    /// Asks the kernel to freeze every process of the cgroup. Returns once asked: the
    /// processes stop at their next return to user space (see [`Freezer::is_frozen`]).
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let value = if self.layout == Layout::V1 { "FROZEN" } else { "1" };
        write(&self.file(), value)
    }

    /// Thaws the cgroup. When this returns every process is runnable again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let value = if self.layout == Layout::V1 { "THAWED" } else { "0" };
        write(&self.file(), value)
    }

    /// Whether every process of the cgroup is frozen now (not merely being frozen).
    pub fn is_frozen(&self) -> bool {
        match self.layout {
            Layout::V1 => std::fs::read_to_string(self.file()).is_ok_and(|s| s.trim() == "FROZEN"),
            Layout::V2 => std::fs::read_to_string(self.dir.join("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1")),
        }
    }
}

/// An empty cgroup of the v1 freezer, kept frozen while the server runs, so that freezing and
/// thawing an instance costs what it should.
///
/// The v1 freezer switches a kernel static key (`freezer_active`) on when the first cgroup of
/// the machine starts freezing and off when the last one thaws, and flipping a static key
/// patches kernel code on every CPU. With one throttled instance, each thaw and each freeze
/// flipped it: a `THAWED` write took 359-426 us at p50, against 199-248 us with this anchor
/// holding the key on (`scripts/freezer-thaw.py`, 100 trials, a one-thread echo server;
/// `docs/benchmarks.md`, "Round 4"). The anchor holds no process, so freezing it stops
/// nothing. The v2 freezer has no such key (cgroup.freeze: ~210 us without an anchor), so
/// [`FreezerAnchor::hold`] makes none there.
///
/// It is named `wharf-freezer-anchor-<pid>-<n>` in the parent cgroup, removed when dropped;
/// one left by a server that was killed is removed by the next server that opens on the parent
/// ([`FreezerAnchor::hold`] sweeps those whose process is gone).
#[derive(Debug)]
pub struct FreezerAnchor {
    dir: PathBuf,
}

const ANCHOR_PREFIX: &str = "wharf-freezer-anchor-";

impl FreezerAnchor {
    /// Creates and freezes the anchor under `parent` (which must exist); `None` on v2 or
    /// without a v1 freezer hierarchy.
    pub fn hold(parent: &CgroupParent) -> Result<Option<FreezerAnchor>, CgroupError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let parent_dir = Path::new(ROOT).join("freezer").join(&parent.path);
        if parent.layout != Layout::V1 || !parent_dir.is_dir() {
            return Ok(None);
        }
        remove_dead_anchors(&parent_dir);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent_dir.join(format!("{ANCHOR_PREFIX}{}-{n}", std::process::id()));
        create(&dir)?;
        let anchor = FreezerAnchor { dir };
        write(&anchor.dir.join("freezer.state"), "FROZEN")?;
        Ok(Some(anchor))
    }

    /// The anchor's cgroup directory.
    #[cfg(test)]
    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FreezerAnchor {
    fn drop(&mut self) {
        remove_anchor(&self.dir);
    }
}

fn remove_anchor(dir: &Path) {
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the freezer anchor");
    }
}

/// Removes the anchors in `parent_dir` of servers that are gone (killed before they could).
fn remove_dead_anchors(parent_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(parent_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(ANCHOR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone =
            matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH));
        if gone {
            tracing::info!(dir = %entry.path().display(), "removing the freezer anchor of a server that is gone");
            remove_anchor(&entry.path());
        }
    }
}

/// The cgroup v2 mount option that spares each instance start an RCU grace period.
///
/// Moving a process into a cgroup (a write to `cgroup.procs`, which libcontainer makes for
/// every container) takes a machine-wide percpu rwsem for writing, and a writer of an idle
/// percpu rwsem waits for a whole RCU grace period. On this machine that was 4.7-16.6 ms
/// (14.5 ms at p50) per move, on the v1 controllers alike, the largest single part of a cold
/// start (`scripts/cgroup-attach.py`; `docs/benchmarks.md`, "Round 5"). With `favordynmods`
/// on the cgroup2 root the kernel keeps writers off that slow path, and the same move takes
/// 0.4-0.6 ms, at the price the kernel documents: forks and exits take a slower lock. (On
/// Linux 6.18 the fast moves stayed after the option was turned off again, until reboot.)
pub const FAVOR_DYNMODS: &str = "favordynmods";

/// The machine's cgroup v2 mount (the `unified` one of a hybrid layout), as
/// `/proc/self/mountinfo` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub mount_point: PathBuf,
    /// Its superblock options, e.g. `rw`, `nsdelegate`, `memory_recursiveprot`.
    pub options: Vec<String>,
}

impl Cgroup2Mount {
    /// The first mount of a cgroup2 hierarchy's root in this mount namespace, if any.
    pub fn find() -> Option<Cgroup2Mount> {
        parse_cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
    }

    pub fn favors_dynmods(&self) -> bool {
        self.options.iter().any(|o| o == FAVOR_DYNMODS)
    }

    /// Turns [`FAVOR_DYNMODS`] on or off, keeping every other option of the hierarchy: a
    /// reconfiguration of cgroup2 applies the whole option set it is given, so the current
    /// options are given again. Only the superblock is reconfigured (`fspick`, `fsconfig`):
    /// the mount's own flags (`nosuid`, `nodev`, `noexec`) are not touched. Needs root in the
    /// initial cgroup namespace, and Linux 6.0 or later for the option.
    pub fn set_favor_dynmods(&self, on: bool) -> Result<(), CgroupError> {
        use rustix::mount::{FsPickFlags, fsconfig_reconfigure, fsconfig_set_flag, fspick};
        let mut options: Vec<&str> =
            self.options.iter().map(String::as_str).filter(|o| !matches!(*o, "rw" | "ro" | FAVOR_DYNMODS)).collect();
        if on {
            options.push(FAVOR_DYNMODS);
        }
        let failed = |source: rustix::io::Errno| CgroupError::Reconfigure {
            mount_point: self.mount_point.clone(),
            options: options.join(","),
            source: source.into(),
        };
        let fs = fspick(rustix::fs::CWD, &self.mount_point, FsPickFlags::FSPICK_CLOEXEC).map_err(failed)?;
        for option in &options {
            fsconfig_set_flag(&fs, *option).map_err(failed)?;
        }
        fsconfig_reconfigure(&fs).map_err(failed)
    }
}

/// The first cgroup2 mount of a hierarchy's root in `mountinfo` (its format: proc(5)).
fn parse_cgroup2_mount(mountinfo: &str) -> Option<Cgroup2Mount> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut filesystem = filesystem.split(' ');
        let (fstype, _source, options) = (filesystem.next()?, filesystem.next()?, filesystem.next()?);
        let mount: Vec<&str> = mount.split(' ').collect();
        if fstype != "cgroup2" || mount.get(3) != Some(&"/") {
            return None;
        }
        Some(Cgroup2Mount {
            mount_point: PathBuf::from(unescape_mountinfo(mount.get(4)?)),
            options: options.split(',').map(str::to_owned).collect(),
        })
    })
}

/// A mountinfo path field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Thaws every cgroup of instance `id` found on the machine, so that its processes can be
/// killed: a process frozen by the v1 freezer does not die of SIGKILL until it is thawed.
/// For the instance supervisor, before it signals a container, and the start-up sweep.
pub fn thaw_all(id: &str) {
    thaw_directories(&directories(id));
}

/// Thaws the cgroup directories `dirs` (see [`thaw_all`]).
pub fn thaw_directories(dirs: &[PathBuf]) {
    for dir in dirs {
        if dir.join("freezer.state").exists() {
            let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        } else if dir.join("cgroup.freeze").exists() {
            let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        }
    }
}

/// Total CPU time the cgroup at `path` used, in microseconds (`cpuacct.usage` on v1, the
/// `usage_usec` of `cpu.stat` on v2).
pub fn cpu_usage_us(path: &str) -> Option<u64> {
    let path = path.trim_start_matches('/');
    if let Ok(text) = std::fs::read_to_string(format!("{ROOT}/cpuacct/{path}/cpuacct.usage")) {
        return text.trim().parse::<u64>().ok().map(|ns| ns / 1000);
    }
    field(&std::fs::read_to_string(format!("{ROOT}/{path}/cpu.stat")).ok()?, "usage_usec")
}

/// Memory the cgroup at `path` uses now, without the inactive page cache the kernel would
/// reclaim before an out-of-memory kill (the "working set" `docker stats` and cAdvisor show):
/// `memory.usage_in_bytes` minus `total_inactive_file` of `memory.stat` on v1,
/// `memory.current` minus `inactive_file` on v2.
pub fn memory_working_set(path: &str) -> Option<u64> {
    let path = path.trim_start_matches('/');
    let v1 = Path::new(ROOT).join("memory").join(path);
    if let Ok(usage) = std::fs::read_to_string(v1.join("memory.usage_in_bytes")) {
        let stat = std::fs::read_to_string(v1.join("memory.stat")).unwrap_or_default();
        return Some(working_set(usage.trim().parse().ok()?, field(&stat, "total_inactive_file")));
    }
    let v2 = Path::new(ROOT).join(path);
    let current = std::fs::read_to_string(v2.join("memory.current")).ok()?;
    let stat = std::fs::read_to_string(v2.join("memory.stat")).unwrap_or_default();
    Some(working_set(current.trim().parse().ok()?, field(&stat, "inactive_file")))
}

fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

/// Sets the CFS quota of the cgroup at `path` to `cpu_millis` thousandths of a core (to end a
/// start-up CPU boost).
pub fn set_cpu_quota(layout: Layout, path: &str, cpu_millis: u64) -> Result<(), CgroupError> {
    let path = path.trim_start_matches('/');
    let quota = cpu_millis * CPU_PERIOD_US / 1000;
    match layout {
        Layout::V1 => write(&Path::new(ROOT).join("cpu").join(path).join("cpu.cfs_quota_us"), &quota.to_string()),
        Layout::V2 => write(&Path::new(ROOT).join(path).join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}")),
    }
}

/// The hierarchy roots: v2's root and each v1 controller (or the hybrid `unified` mount).
fn hierarchies() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(ROOT)];
    if let Ok(entries) = std::fs::read_dir(ROOT) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && !name.to_string_lossy().starts_with("wharf") {
                roots.push(path);
            }
        }
    }
    roots
}

/// Every directory instance `id`'s cgroup may have, across v1 controllers and v2: at the root
/// of a hierarchy (before the parent cgroup existed), under `wharf/` or one level deeper
/// (a parent such as `wharf/test-1`). Found by looking, so the supervisor and a start-up sweep need
/// not know which parent the server that started the instance used.
///
/// The search lists the parents' directories, each holding every instance's cgroup: with many
/// instances it costs thousands of lookups, so whoever knows the instance's cgroup path uses
/// [`directories_of`].
pub fn directories(id: &str) -> Vec<PathBuf> {
    let cg = name(id);
    let mut dirs = Vec::new();
    for root in hierarchies() {
        let mut candidates = vec![root.join(&cg), root.join("wharf").join(&cg)];
        if let Ok(entries) = std::fs::read_dir(root.join("wharf")) {
            candidates.extend(entries.flatten().map(|e| e.path().join(&cg)));
        }
        for dir in candidates {
            if dir.is_dir() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Kills every process in the instance's cgroups and removes them. For the start-up sweep,
/// after an unclean exit left an instance behind, and for the supervisor after a container exits.
pub fn kill_and_remove(id: &str) {
    kill_and_remove_directories(&directories(id));
}

/// The directories of the cgroup at `path` (such as `/wharf/wharf-ID`, as the runtime spec's
/// `cgroupsPath` names it) in each hierarchy where it exists.
pub fn directories_of(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return Vec::new();
    }
    hierarchies().into_iter().map(|root| root.join(relative)).filter(|dir| dir.is_dir()).collect()
}

/// Kills every process in the cgroup directories `dirs` and removes them (see
/// [`kill_and_remove`]).
pub fn kill_and_remove_directories(dirs: &[PathBuf]) {
    thaw_directories(dirs);
    for dir in dirs {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    for dir in dirs {
        for _ in 0..100 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_read_from_mountinfo_with_escapes_decoded() {
        let mountinfo = "\
25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - tmpfs tmpfs ro,mode=755
40 25 0:35 /sub /srv/delegated rw,relatime - cgroup2 cgroup2 rw
34 25 0:29 / /sys/fs/cgroup/my\\040unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,favordynmods
";
        let mount = parse_cgroup2_mount(mountinfo).unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/sys/fs/cgroup/my unified"));
        assert_eq!(mount.options, ["rw", "nsdelegate", "favordynmods"]);
        assert!(mount.favors_dynmods());
        assert_eq!(parse_cgroup2_mount("25 30 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
        assert_eq!(unescape_mountinfo("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn default_memory_leaves_the_host_headroom() {
        let gib = 1u64 << 30;
        assert_eq!(default_memory(24 * gib), 17 * gib);
        assert_eq!(default_memory(4 * gib), 2 * gib);
        assert_eq!(default_memory(gib), 256 << 20);
    }

    #[test]
    fn the_working_set_leaves_out_inactive_page_cache() {
        let stat = "cache 4096\ntotal_inactive_file 12288\ntotal_rss 8192\n";
        assert_eq!(working_set(20480, field(stat, "total_inactive_file")), 8192);
        assert_eq!(working_set(4096, Some(8192)), 0, "never below zero");
        assert_eq!(working_set(4096, None), 4096);
    }

    #[test]
    fn parent_paths_are_checked() {
        let limits = ParentLimits { memory_bytes: 1 << 30, cpu_millis: 1000 };
        assert_eq!(CgroupParent::new("/wharf/", limits).unwrap().instance_path("ab12"), "/wharf/wharf-ab12");
        assert_eq!(CgroupParent::new("wharf/t-1", limits).unwrap().path, "wharf/t-1");
        for bad in ["", "/", "wharf/../x", "wharf//x", "a b"] {
            assert!(matches!(CgroupParent::new(bad, limits), Err(CgroupError::BadParent(_))), "{bad:?} was accepted");
        }
    }

    /// The anchor is a frozen, empty cgroup in the parent while held and gone when dropped;
    /// one left by a process that is gone is swept by the next hold. Needs root and the v1
    /// freezer; skipped (with a message) elsewhere.
    #[test]
    fn a_freezer_anchor_is_frozen_while_held_and_a_dead_servers_anchor_is_swept() {
        if !nix::unistd::geteuid().is_root() || Layout::detect() != Layout::V1 {
            eprintln!("not root, or no v1 freezer; skipping");
            return;
        }
        let limits = ParentLimits { memory_bytes: 1 << 30, cpu_millis: 1000 };
        let parent = CgroupParent::new(&format!("wharf/anchortest-{}", std::process::id()), limits).unwrap();
        struct RemoveParent(CgroupParent);
        impl Drop for RemoveParent {
            fn drop(&mut self) {
                let dir = Path::new(ROOT).join("freezer").join(&self.0.path);
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_anchor(&entry.path());
                    }
                }
                self.0.remove_if_unused();
            }
        }
        let cleanup = RemoveParent(parent.clone());
        parent.setup().unwrap();
        let parent_dir = Path::new(ROOT).join("freezer").join(&parent.path);
        let state = |dir: &Path| std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();

        // A killed server's anchor: a process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = parent_dir.join(format!("{ANCHOR_PREFIX}{dead_pid}-0"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("freezer.state"), "FROZEN").unwrap();

        let anchor = FreezerAnchor::hold(&parent).unwrap().expect("an anchor on the v1 freezer");
        assert!(!dead.exists(), "the anchor of a process that is gone was not swept");
        assert_eq!(state(anchor.dir()).trim(), "FROZEN");
        assert_eq!(std::fs::read_to_string(anchor.dir().join("cgroup.procs")).unwrap(), "");
        // A second server of the same process (tests open several) gets its own, and sweeps
        // nothing of a live process.
        let second = FreezerAnchor::hold(&parent).unwrap().unwrap();
        assert_ne!(second.dir(), anchor.dir());
        assert!(anchor.dir().exists());

        let dirs = [anchor.dir().to_owned(), second.dir().to_owned()];
        drop((anchor, second));
        assert!(dirs.iter().all(|d| !d.exists()), "an anchor outlived its drop");
        drop(cleanup);
        assert!(!parent_dir.exists(), "the parent could not be removed after the anchors");
    }
}
