//! A build's own cgroup, `<parent>/build-<id>` next to the instances' cgroups under the
//! server's parent (`wharf` by default), so builds count against the server-wide limits too
//! and each build is capped in memory, CPU and processes. Created before buildah starts, with
//! two children that share its limits: `buildah` (the wrapper shell moves itself in and then
//! `exec`s buildah, so every process of the build is inside from its first instruction) and
//! `steps`, which buildah hands runc as the cgroup of each `RUN` step's container (runc creates
//! and removes it). Killed and removed, children first, in every hierarchy, when the build ends.
//!
//! Layouts: cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists) or v1 / hybrid (the
//! `memory`, `cpu` and `pids` hierarchies under `/sys/fs/cgroup/<controller>`).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;
/// Processes a build may run at once (a fork bomb in a RUN step stops here).
const MAX_PIDS: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create the build cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set {file} of the build cgroup to {value:?}")]
    Write {
        file: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// The child cgroup buildah itself runs in.
const BUILDAH_CHILD: &str = "buildah";
/// The child cgroup runc runs the `RUN` steps' containers in.
const STEPS_CHILD: &str = "steps";

/// The cgroup directories of one build (one per v1 hierarchy, or the one v2 directory).
#[derive(Debug)]
pub struct BuildCgroup {
    dirs: Vec<PathBuf>,
    /// The `cgroup.procs` files of the `buildah` children.
    procs: Vec<PathBuf>,
    /// `<parent>/<name>`, to find the hierarchies runc created it in too.
    path: (String, String),
}

impl BuildCgroup {
    /// Creates `<parent>/<name>` with the limits. `parent` is the server's validated cgroup
    /// parent (e.g. `wharf`).
    pub fn create(parent: &str, name: &str, memory_bytes: u64, cpu_millis: u64) -> Result<BuildCgroup, CgroupError> {
        let mut cgroup =
            BuildCgroup { dirs: Vec::new(), procs: Vec::new(), path: (parent.to_owned(), name.to_owned()) };
        let quota = cpu_millis.saturating_mul(CPU_PERIOD_US) / 1000;
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            let dir = Path::new(ROOT).join(parent).join(name);
            cgroup.make(&dir)?;
            write(&dir, "memory.max", &memory_bytes.to_string())?;
            write(&dir, "memory.swap.max", "0").ok();
            write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            write(&dir, "pids.max", &MAX_PIDS.to_string())?;
            // v2 keeps processes in leaves only: buildah in one child, the steps in another.
            write(&dir, "cgroup.subtree_control", "+memory +cpu +pids").ok();
            let leaf = dir.join(BUILDAH_CHILD);
            std::fs::create_dir_all(&leaf).map_err(|source| CgroupError::Create { path: leaf.clone(), source })?;
            cgroup.procs.push(leaf.join("cgroup.procs"));
        } else {
            let memory = Path::new(ROOT).join("memory").join(parent).join(name);
            cgroup.make(&memory)?;
            write(&memory, "memory.limit_in_bytes", &memory_bytes.to_string())?;
            let cpu = Path::new(ROOT).join("cpu").join(parent).join(name);
            cgroup.make(&cpu)?;
            write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(&cpu, "cpu.cfs_quota_us", &quota.to_string())?;
            let pids = Path::new(ROOT).join("pids").join(parent).join(name);
            if pids.parent().is_some_and(Path::exists) {
                cgroup.make(&pids)?;
                write(&pids, "pids.max", &MAX_PIDS.to_string())?;
            }
            for dir in cgroup.dirs.clone() {
                let leaf = dir.join(BUILDAH_CHILD);
                std::fs::create_dir_all(&leaf).map_err(|source| CgroupError::Create { path: leaf.clone(), source })?;
                cgroup.procs.push(leaf.join("cgroup.procs"));
            }
        }
        Ok(cgroup)
    }

    /// The directories `<parent>/<name>` has now in any hierarchy (after a crash, to kill and
    /// remove them; runc creates the steps' cgroup in every v1 hierarchy).
    pub fn existing(parent: &str, name: &str) -> BuildCgroup {
        let mut candidates = vec![Path::new(ROOT).join(parent).join(name)];
        if let Ok(hierarchies) = std::fs::read_dir(ROOT) {
            candidates.extend(hierarchies.flatten().map(|h| h.path().join(parent).join(name)));
        }
        BuildCgroup {
            dirs: candidates.into_iter().filter(|d| d.is_dir()).collect(),
            procs: Vec::new(),
            path: (parent.to_owned(), name.to_owned()),
        }
    }

    /// The cgroup path (relative to the hierarchy roots) runc puts `RUN` steps in: buildah's
    /// `--cgroup-parent`.
    pub fn steps_path(parent: &str, name: &str) -> String {
        format!("/{parent}/{name}/{STEPS_CHILD}")
    }

    /// The directories created, and those runc created in other hierarchies.
    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.dirs.clone();
        for dir in BuildCgroup::existing(&self.path.0, &self.path.1).dirs {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    fn make(&mut self, dir: &Path) -> Result<(), CgroupError> {
        std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create { path: dir.to_owned(), source })?;
        self.dirs.push(dir.to_owned());
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to, to enter the build's cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.procs.clone()
    }

    /// Every process in the build's cgroups and their children (buildah and the steps).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in &self.all_dirs() {
            for cgroup in tree(dir) {
                if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
                    pids.extend(procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether the kernel killed a process of the build for memory.
    pub fn oom_killed(&self) -> bool {
        self.dirs.iter().any(|d| {
            let v2 = std::fs::read_to_string(d.join("memory.events")).ok().and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
            });
            let v1 = std::fs::read_to_string(d.join("memory.oom_control")).ok().and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
            });
            v2.or(v1).is_some_and(|n| n > 0)
        })
    }

    /// Kills what is left in the cgroup and removes it; waits (briefly, for the kernel to reap
    /// the killed processes) until the directories can be removed.
    pub fn kill_and_remove(&self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let all_dirs = self.all_dirs();
        for dir in &all_dirs {
            // Children before parents.
            for cgroup in tree(dir).into_iter().rev() {
                for _ in 0..200 {
                    if std::fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                        break;
                    }
                    // A process that forked after the first kill.
                    if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
                        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                            let pid = nix::unistd::Pid::from_raw(pid);
                            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                if cgroup.exists() {
                    tracing::warn!(cgroup = %cgroup.display(), "cannot remove the build cgroup");
                }
            }
        }
        // runc made the build's path, parents included, in hierarchies the build never set up
        // (the named `systemd` one, a hybrid host's `unified` one): nothing else of Wharf uses
        // those parents, so they go too once empty (rmdir refuses a parent still in use).
        let parent_depth = Path::new(&self.path.0).components().count();
        for dir in all_dirs.iter().filter(|d| !self.dirs.contains(d)) {
            for parent in dir.ancestors().skip(1).take(parent_depth) {
                if std::fs::remove_dir(parent).is_err() {
                    break;
                }
            }
        }
    }
}

/// `dir` and the cgroups below it, parents before children.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            let children: Vec<PathBuf> =
                entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| CgroupError::Write { file: path, value: value.to_owned(), source })
}
