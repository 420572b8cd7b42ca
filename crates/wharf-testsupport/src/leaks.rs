//! Finding and removing what Wharf leaves on the machine: mounts, cgroups (v1 controllers and
//! v2), network namespaces, veths, host-network registrations and processes, within one
//! scope (a data directory and the ids of the instances that used it), so tests running in
//! parallel only ever judge their own. `scripts/leak-check` does the same machine-wide.
//!
//! [`LeakGuard`] is what harnesses hold: dropped (also while a test panics) it finds what its
//! scope left, removes it, and fails the test if there was anything.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Which leftovers to look for: what belongs to one data directory (mounts below it, processes
/// naming it) and the given instance ids (`wharf-<id>` cgroups and namespaces, `wh<id>` links),
/// plus the host-network registrations of the given server processes.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub data_dir: PathBuf,
    pub ids: Vec<String>,
    pub server_pids: Vec<u32>,
}

/// One thing left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    Mount(PathBuf),
    Cgroup(PathBuf),
    Netns(String),
    Link(String),
    Process { pid: i32, cmdline: String },
    HostNetworkHolder(PathBuf),
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leftover::Mount(p) => write!(f, "mount {}", p.display()),
            Leftover::Cgroup(p) => write!(f, "cgroup {}", p.display()),
            Leftover::Netns(n) => write!(f, "netns {n}"),
            Leftover::Link(l) => write!(f, "link {l}"),
            Leftover::Process { pid, cmdline } => write!(f, "process {pid}: {cmdline}"),
            Leftover::HostNetworkHolder(p) => write!(f, "host network registration {}", p.display()),
        }
    }
}

/// Where the runtime registers each server that uses the shared host network rules.
pub const HOST_NETWORK_HOLDERS: &str = "/run/wharf/host-network";

/// The cgroup directories that may hold `wharf-<id>`: in v2's root and each v1 controller (or
/// the hybrid layout's `unified` v2 mount), the hierarchy's root, the instances' parent
/// `wharf`, and the parents one level below it (`wharf/<name>`, as tests use).
fn cgroup_parents() -> Vec<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut hierarchies = vec![root.clone()];
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !entry.file_name().to_string_lossy().starts_with("wharf") {
                hierarchies.push(path);
            }
        }
    }
    let mut parents = Vec::new();
    for hierarchy in hierarchies {
        let wharf = hierarchy.join("wharf");
        if let Ok(entries) = std::fs::read_dir(&wharf) {
            parents.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        parents.push(wharf);
        parents.push(hierarchy);
    }
    parents
}

/// Everything in `scope` that Wharf left on the machine.
pub fn wharf_leftovers(scope: &Scope) -> Vec<Leftover> {
    let mut found = Vec::new();
    let data_dir = scope.data_dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some(point) = line.split(' ').nth(4) else { continue };
        if !data_dir.is_empty() && Path::new(point).starts_with(&scope.data_dir) {
            found.push(Leftover::Mount(PathBuf::from(point)));
        }
    }
    for id in &scope.ids {
        let cgroup = format!("wharf-{id}");
        for parent in cgroup_parents() {
            let dir = parent.join(&cgroup);
            if dir.is_dir() {
                found.push(Leftover::Cgroup(dir));
            }
        }
        if Path::new("/run/netns").join(&cgroup).exists() {
            found.push(Leftover::Netns(cgroup));
        }
        let link = format!("wh{}", &id[..id.len().min(12)]);
        if Path::new("/sys/class/net").join(&link).exists() {
            found.push(Leftover::Link(link));
        }
    }
    if let Ok(entries) = std::fs::read_dir(HOST_NETWORK_HOLDERS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if scope.server_pids.iter().any(|pid| name.starts_with(&format!("{pid}-"))) {
                found.push(Leftover::HostNetworkHolder(entry.path()));
            }
        }
    }
    let own = std::process::id();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            if u32::try_from(pid).is_ok_and(|p| p == own) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let argv: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_wharf = argv.first().is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "wharf"));
            let subcommand = argv.get(1).map(String::as_str).unwrap_or_default();
            let ours = scope.server_pids.iter().any(|p| i32::try_from(*p).is_ok_and(|p| p == pid))
                || (!data_dir.is_empty() && argv.iter().any(|a| Path::new(a).starts_with(&scope.data_dir)));
            if is_wharf && matches!(subcommand, "server" | "shim" | "supervise") && ours {
                found.push(Leftover::Process { pid, cmdline: argv.join(" ").trim().to_owned() });
            }
        }
    }
    found
}

/// Removes leftovers, best effort: processes first (and whatever runs in a leftover cgroup),
/// then mounts deepest first, cgroups, namespaces, links and registrations.
pub fn remove(leftovers: &[Leftover]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for leftover in leftovers {
        if let Leftover::Process { pid, .. } = leftover {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    for leftover in leftovers {
        if let Leftover::Cgroup(dir) = leftover {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let mut mounts: Vec<&PathBuf> =
        leftovers.iter().filter_map(|l| if let Leftover::Mount(p) = l { Some(p) } else { None }).collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in mounts {
        let _ = nix::mount::umount2(point.as_path(), nix::mount::MntFlags::MNT_DETACH);
    }
    for leftover in leftovers {
        match leftover {
            Leftover::Cgroup(dir) => {
                // A cgroup can be removed once its processes are gone; they die asynchronously.
                let _ = crate::wait_until("a leftover cgroup to empty", std::time::Duration::from_secs(5), || {
                    (std::fs::remove_dir(dir).is_ok() || !dir.exists()).then_some(())
                });
            }
            Leftover::Netns(name) => {
                let _ = std::process::Command::new("ip").args(["netns", "delete", name]).output();
            }
            Leftover::Link(name) => {
                let _ = std::process::Command::new("ip").args(["link", "delete", name]).output();
            }
            Leftover::HostNetworkHolder(path) => {
                let _ = std::fs::remove_file(path);
            }
            Leftover::Mount(_) | Leftover::Process { .. } => {}
        }
    }
}

/// Instance ids that wrote to the log table of the state database at `db` (every instance
/// logs: its output, or the platform's line on why it failed).
pub fn instance_ids_in_logs(db: &Path) -> Vec<String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, flags) else { return Vec::new() };
    let Ok(mut stmt) = conn.prepare("SELECT DISTINCT instance FROM logs") else { return Vec::new() };
    let Ok(rows) = stmt.query_map([], |r| r.get::<_, String>(0)) else { return Vec::new() };
    rows.flatten().collect()
}

/// Checks and cleans one harness's scope when dropped, even while its test panics: finds what
/// the scope left, removes it, and panics with the list (unless already panicking) if there
/// was anything. Hold it in a field declared before any `TempDir` holding the data directory,
/// so it runs before that directory is deleted.
#[derive(Debug, Clone)]
pub struct LeakGuard {
    inner: Arc<Mutex<GuardState>>,
}

#[derive(Debug, Default)]
struct GuardState {
    data_dir: PathBuf,
    ids: BTreeSet<String>,
    server_pids: BTreeSet<u32>,
    disarmed: bool,
}

impl LeakGuard {
    /// A guard for `data_dir`: its mounts and processes, and the instances the state
    /// database there logged for, or that are still listed under `<data_dir>/instances`.
    pub fn new(data_dir: &Path) -> LeakGuard {
        let state = GuardState { data_dir: data_dir.to_owned(), ..GuardState::default() };
        LeakGuard { inner: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an instance id to the scope.
    pub fn instance(&self, id: &str) {
        self.state().ids.insert(id.to_owned());
    }

    /// Adds a server process (its host-network registration, and the process itself).
    pub fn server(&self, pid: u32) {
        self.state().server_pids.insert(pid);
    }

    /// The scope as known now, with the ids found in the data directory.
    pub fn scope(&self) -> Scope {
        let state = self.state();
        let mut ids = state.ids.clone();
        ids.extend(instance_ids_in_logs(&state.data_dir.join("state.db")));
        if let Ok(entries) = std::fs::read_dir(state.data_dir.join("instances")) {
            ids.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
        Scope {
            data_dir: state.data_dir.clone(),
            ids: ids.into_iter().collect(),
            server_pids: state.server_pids.iter().copied().collect(),
        }
    }

    /// Finds and removes what the scope left; returns what was found.
    pub fn check_and_clean(&self) -> Vec<Leftover> {
        let found = wharf_leftovers(&self.scope());
        remove(&found);
        found
    }

    /// No check on drop (for a guard whose scope another guard covers).
    pub fn disarm(&self) {
        self.state().disarmed = true;
    }
}

impl Drop for LeakGuard {
    fn drop(&mut self) {
        // Clones share one state: only the last one checks.
        if Arc::strong_count(&self.inner) > 1 || self.state().disarmed {
            return;
        }
        let found = self.check_and_clean();
        if found.is_empty() {
            return;
        }
        let list: Vec<String> = found.iter().map(ToString::to_string).collect();
        let message = format!("left on the machine (now removed):\n  {}", list.join("\n  "));
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}
