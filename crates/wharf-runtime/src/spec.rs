//! The OCI runtime spec (`config.json`) of an instance: image config (Entrypoint, Cmd,
//! WorkingDir, User, Env) with the revision's overrides, the sandbox (namespaces, masked
//! paths, capabilities) and the limits (memory, CPU quota, pids).

use std::path::Path;

use serde_json::{Value, json};
use wharf_image::manifest::ContainerConfig;

use crate::resources::Resources;

/// The CFS period CPU quotas are expressed against.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set: enough for ordinary servers, nothing that reaches the host.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The command line: the revision's command replaces the image's Entrypoint (and then the
/// image's Cmd is dropped, as in Kubernetes); the revision's args replace Cmd.
pub fn command_line(
    image: &ContainerConfig,
    command: Option<&[String]>,
    args: Option<&[String]>,
) -> Result<Vec<String>, String> {
    let entrypoint: Vec<String> = match command {
        Some(c) => c.to_vec(),
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let rest: Vec<String> = match (args, command) {
        (Some(a), _) => a.to_vec(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    let line: Vec<String> = entrypoint.into_iter().chain(rest).collect();
    if line.is_empty() {
        return Err("the image has no Entrypoint or Cmd; set a command for the container".to_owned());
    }
    Ok(line)
}

/// Resolves the image's `User` (`uid`, `uid:gid`, `name`, `name:group`) against the rootfs's
/// `/etc/passwd` and `/etc/group`.
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), String> {
    let user = user.map(str::trim).unwrap_or("");
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd_entry(&passwd, |f| f[2] == user_part).and_then(|f| f[3].parse().ok());
            (uid, gid.unwrap_or(uid))
        }
        Err(_) => {
            let fields = passwd_entry(&passwd, |f| f[0] == user_part)
                .ok_or_else(|| format!("user {user_part:?} is not in the image's /etc/passwd"))?;
            let uid = fields[2].parse().map_err(|_| format!("bad uid for {user_part} in /etc/passwd"))?;
            let gid = fields[3].parse().map_err(|_| format!("bad gid for {user_part} in /etc/passwd"))?;
            (uid, gid)
        }
    };
    let gid = match group_part {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                passwd_entry(&groups, |f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?
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
}

pub fn runtime_spec(input: &SpecInput<'_>) -> Value {
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    let quota = input.resources.cpu_millis * CPU_PERIOD_US / 1000;
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": input.user.0, "gid": input.user.1},
            "args": input.args,
            "env": input.env,
            "cwd": if input.cwd.is_empty() { "/" } else { input.cwd },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": input.rootfs, "readonly": false},
        "hostname": input.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": input.resolv_conf, "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": input.hosts, "options": ["rbind", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": input.netns}
            ],
            "cgroupsPath": input.cgroup,
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": input.resources.memory_bytes},
                "cpu": {"quota": quota, "period": CPU_PERIOD_US},
                "pids": {"limit": input.resources.pids}
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ContainerConfig {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        ContainerConfig { entrypoint: entrypoint.map(v), cmd: cmd.map(v), ..ContainerConfig::default() }
    }

    #[test]
    fn overrides_follow_kubernetes_rules() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let image = config(Some(&["/app"]), Some(&["--serve"]));
        assert_eq!(command_line(&image, None, None).unwrap(), s(&["/app", "--serve"]));
        assert_eq!(command_line(&image, None, Some(&s(&["--x"]))).unwrap(), s(&["/app", "--x"]));
        assert_eq!(command_line(&image, Some(&s(&["/bin/sh"])), None).unwrap(), s(&["/bin/sh"]));
        command_line(&config(None, None), None, None).unwrap_err();
    }

    #[test]
    fn users_resolve_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(None, dir.path()), Ok((0, 0)));
        assert_eq!(resolve_user(Some("app"), dir.path()), Ok((1000, 1001)));
        assert_eq!(resolve_user(Some("app:staff"), dir.path()), Ok((1000, 50)));
        assert_eq!(resolve_user(Some("1000"), dir.path()), Ok((1000, 1001)));
        assert_eq!(resolve_user(Some("4242:7"), dir.path()), Ok((4242, 7)));
        resolve_user(Some("ghost"), dir.path()).unwrap_err();
    }
}
