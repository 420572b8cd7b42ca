//! Where an instance's cgroups are and what they say. Instances get a flat cgroup path,
//! `/wharf-<id>`, so deleting the container leaves no parent directory behind. On this
//! machine's hybrid layout libcontainer uses the v1 controllers; readers try v1 then v2.

use std::path::PathBuf;

/// The cgroup name of container `id`.
pub fn name(id: &str) -> String {
    format!("wharf-{id}")
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

pub fn cpu_stats(id: &str) -> Option<CpuStats> {
    let cg = name(id);
    if let Ok(text) = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/{cg}/cpu.stat")) {
        return Some(CpuStats {
            periods: field(&text, "nr_periods")?,
            throttled_periods: field(&text, "nr_throttled")?,
            throttled_us: field(&text, "throttled_time")? / 1000,
        });
    }
    let text = std::fs::read_to_string(format!("/sys/fs/cgroup/{cg}/cpu.stat")).ok()?;
    Some(CpuStats {
        periods: field(&text, "nr_periods")?,
        throttled_periods: field(&text, "nr_throttled")?,
        throttled_us: field(&text, "throttled_usec")?,
    })
}

/// Every directory the instance's cgroup may have, across v1 controllers and v2.
pub fn directories(id: &str) -> Vec<PathBuf> {
    let cg = name(id);
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for entry in entries.flatten() {
            let dir = entry.path().join(&cg);
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    let v2 = PathBuf::from("/sys/fs/cgroup").join(&cg);
    if v2.is_dir() && !dirs.contains(&v2) {
        dirs.push(v2);
    }
    dirs
}

/// Kills every process in the instance's cgroups and removes them. For the start-up sweep,
/// after an unclean exit left an instance behind.
pub fn kill_and_remove(id: &str) {
    let dirs = directories(id);
    for dir in &dirs {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    for dir in &dirs {
        for _ in 0..100 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
