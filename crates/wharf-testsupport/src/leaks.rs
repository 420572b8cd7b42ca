//! Finding what Wharf leaves on the machine: mounts, cgroups, network namespaces, links and
//! processes. Tests assert these are empty after they stop what they started.

use std::path::{Path, PathBuf};

/// Which leftovers to look for.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Anything of any wharf on the machine.
    All,
    /// What belongs to one data directory and the given instance ids.
    Instances { data_dir: PathBuf, ids: Vec<String> },
}

impl Scope {
    fn owns_name(&self, name: &str, prefix: &str) -> bool {
        match self {
            Scope::All => name.starts_with(prefix),
            Scope::Instances { ids, .. } => ids.iter().any(|id| name == format!("{prefix}{id}")),
        }
    }

    fn data_dir(&self) -> Option<&Path> {
        match self {
            Scope::All => None,
            Scope::Instances { data_dir, .. } => Some(data_dir),
        }
    }
}

/// Everything in `scope` that Wharf left on the machine: mount points, `wharf-<id>` cgroups
/// and network namespaces, `wh<id>` links, and `wharf shim` processes.
pub fn wharf_leftovers(scope: &Scope) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some(point) = line.split(' ').nth(4) else { continue };
        let hit = match scope.data_dir() {
            Some(dir) => point.starts_with(&*dir.to_string_lossy()),
            None => line.contains("wharf"),
        };
        if hit {
            found.push(format!("mount {point}"));
        }
    }
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for controller in controllers.flatten() {
            let Ok(entries) = std::fs::read_dir(controller.path()) else { continue };
            for entry in entries.flatten() {
                if scope.owns_name(&entry.file_name().to_string_lossy(), "wharf-") {
                    found.push(format!("cgroup {}", entry.path().display()));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            if scope.owns_name(&entry.file_name().to_string_lossy(), "wharf-") {
                found.push(format!("netns {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for entry in entries.flatten() {
            if scope.owns_name(&entry.file_name().to_string_lossy(), "wh") {
                found.push(format!("link {}", entry.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let in_scope = scope.data_dir().is_none_or(|dir| cmdline.contains(&*dir.to_string_lossy()));
            let shim = cmdline.contains(" shim --id ") || cmdline.contains(" shim-wait --pid ");
            if shim && in_scope {
                found.push(format!("process {}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}
