//! The container helper process (`wharf shim`), in the containerd-shim pattern: the
//! multi-threaded server never forks a container itself; it starts one shim per instance,
//! which drives youki's libcontainer single-threaded, waits for the container, and reports.
//!
//! Protocol, all over inherited file descriptors:
//! - fd 0 (from the server): commands, one per line: `stop <grace-ms>` sends SIGTERM, then
//!   SIGKILL after the grace period. End of file (the server went away) kills the container.
//! - fd 1 (to the server): events, one JSON object per line: [`ShimEvent`].
//! - fd 2: the shim's own diagnostics (a file in the instance directory).
//! - fd 3 and 4: the write ends of the container's stdout and stderr pipes.
//!
//! Once the container runs, the shim re-executes itself as `wharf shim-wait` (the same process,
//! so the container stays its child): that small program, which never loads libcontainer or
//! the CLI, is what sits beside each instance for its lifetime. After the container exits it
//! reads whether the kernel OOM-killed it, removes the container's cgroups and state, reports
//! `exited`, and exits itself.

#![allow(unsafe_code)] // taking ownership of the inherited descriptors 3 and 4

use std::io::{BufRead as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// What the shim tells the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "event")]
pub enum ShimEvent {
    /// The container's process is running.
    Started { pid: i32, create_us: u64, start_us: u64 },
    /// The container could not be created or started.
    Failed { error: String },
    /// The container exited and was deleted.
    Exited { code: Option<i32>, signal: Option<i32>, oom_killed: bool },
}

/// What the shim is told on its command line (the binary parses the flags).
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// The container id (also names its cgroup).
    pub id: String,
    /// The OCI bundle directory holding `config.json`.
    pub bundle: PathBuf,
    /// libcontainer's state directory.
    pub state_root: PathBuf,
}

fn emit(event: &ShimEvent) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, event);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Runs the shim; returns the process exit code. Must be called in a fresh, single-threaded
/// process (libcontainer forks).
pub fn run(args: &ShimArgs) -> i32 {
    // SAFETY: the server starts the shim with descriptors 3 and 4 open (the container's
    // stdout and stderr pipes) and nothing else in this process owns them.
    let (stdout, stderr) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4)) };
    let devnull = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            emit(&ShimEvent::Failed { error: format!("cannot open /dev/null: {e}") });
            return 1;
        }
    };
    let t0 = Instant::now();
    let filters = match crate::seccomp::Filters::compile() {
        Ok(f) => f,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            emit(&ShimEvent::Failed { error: format!("{e}{cause}") });
            return 1;
        }
    };
    let built = ContainerBuilder::new(args.id.clone(), SyscallType::Linux)
        .with_executor(crate::seccomp::SandboxExecutor::new(filters))
        .with_root_path(&args.state_root)
        .map(|b| b.with_stdin(devnull).with_stdout(stdout).with_stderr(stderr))
        .and_then(|b| b.validate_id())
        .and_then(|b| b.as_init(&args.bundle).with_systemd(false).with_detach(true).build());
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            emit(&ShimEvent::Failed { error: format!("creating the container failed: {e}") });
            return 1;
        }
    };
    let create_us = elapsed_us(t0);
    let t1 = Instant::now();
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        emit(&ShimEvent::Failed { error: format!("starting the container failed: {e}") });
        return 1;
    }
    let start_us = elapsed_us(t1);
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        emit(&ShimEvent::Failed { error: "the container has no init process".to_owned() });
        return 1;
    };
    emit(&ShimEvent::Started { pid: pid.as_raw(), create_us, start_us });
    // Become the small waiter; only if that fails, wait here.
    let wait_args = WaitArgs { pid: pid.as_raw(), id: args.id.clone(), state_root: args.state_root.clone() };
    let error = exec_waiter(&wait_args);
    eprintln!("wharf shim: cannot re-execute as shim-wait ({error}); waiting in place");
    drop(container);
    wait(&wait_args)
}

/// What `wharf shim-wait` is told: the container's init pid (its child), id and state root.
#[derive(Debug, Clone)]
pub struct WaitArgs {
    pub pid: i32,
    pub id: String,
    pub state_root: PathBuf,
}

impl WaitArgs {
    /// Parses `--pid N --id ID --state-root DIR` (no clap: this runs in the small waiter).
    pub fn parse(args: &[String]) -> Option<WaitArgs> {
        let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
        Some(WaitArgs {
            pid: value("--pid")?.parse().ok()?,
            id: value("--id")?,
            state_root: PathBuf::from(value("--state-root")?),
        })
    }
}

fn exec_waiter(args: &WaitArgs) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("/proc/self/exe")
        .arg("shim-wait")
        .arg("--pid")
        .arg(args.pid.to_string())
        .arg("--id")
        .arg(&args.id)
        .arg("--state-root")
        .arg(&args.state_root)
        .exec()
}

/// The waiter: carries out stop commands, waits for the container, cleans up after it and
/// reports how it ended. Returns the process exit code.
pub fn wait(args: &WaitArgs) -> i32 {
    let pid = Pid::from_raw(args.pid);
    let exited = Arc::new(AtomicBool::new(false));
    spawn_control_thread(pid, args.id.clone(), exited.clone());
    let (code, signal) = wait_for(pid);
    exited.store(true, Ordering::SeqCst);
    let oom_killed = oom_killed(&args.id);
    // What libcontainer's delete does for a stopped container: its cgroups and its state.
    crate::cgroup::kill_and_remove(&args.id);
    let state = args.state_root.join(&args.id);
    if let Err(e) = std::fs::remove_dir_all(&state)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("wharf shim: removing {} failed: {e}", state.display());
    }
    emit(&ShimEvent::Exited { code, signal, oom_killed });
    0
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Waits for the container's init process (a child of the shim) and returns its exit code or
/// the signal that killed it.
fn wait_for(pid: Pid) -> (Option<i32>, Option<i32>) {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return (Some(code), None),
            Ok(WaitStatus::Signaled(_, signal, _)) => return (None, Some(signal as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("wharf shim: waiting for {pid} failed: {e}");
                return (None, None);
            }
        }
    }
}

/// Reads commands from the server on stdin until the container exits. Before it stops the
/// container it thaws its cgroups: the server thaws an instance whose CPU it throttles before
/// it asks for a stop, but a server that went away could not, and a frozen process neither
/// handles SIGTERM nor (on cgroup v1) dies of SIGKILL.
fn spawn_control_thread(pid: Pid, id: String, exited: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            let command = words.next();
            if command == Some("signal") {
                // `signal N`: deliver signal N to the container's init now.
                if let Some(signal) =
                    words.next().and_then(|n| n.parse::<i32>().ok()).and_then(|n| Signal::try_from(n).ok())
                {
                    let _ = kill(pid, signal);
                }
                continue;
            }
            if command == Some("stop") {
                let grace = Duration::from_millis(words.next().and_then(|g| g.parse().ok()).unwrap_or(10_000));
                crate::cgroup::thaw_all(&id);
                let _ = kill(pid, Signal::SIGTERM);
                let exited = exited.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + grace;
                    while Instant::now() < deadline {
                        if exited.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if !exited.load(Ordering::SeqCst) {
                        // Killing the pid namespace's init kills everything in it.
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                });
            }
        }
        // The server closed our stdin: it is gone, so the container goes too.
        if !exited.load(Ordering::SeqCst) {
            crate::cgroup::thaw_all(&id);
            let _ = kill(pid, Signal::SIGKILL);
        }
    });
}

/// Whether the kernel OOM-killed a process of the container's memory cgroup.
fn oom_killed(id: &str) -> bool {
    let files = crate::cgroup::directories(id)
        .into_iter()
        .flat_map(|dir| [dir.join("memory.oom_control"), dir.join("memory.events")]);
    files.filter_map(|f| std::fs::read_to_string(f).ok()).any(|text| {
        text.lines().any(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0) > 0)
    })
}
