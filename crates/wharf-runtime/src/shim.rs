//! The container helper process (`wharf shim`), in the containerd-shim pattern: the
//! multi-threaded server never forks a container itself; the instance supervisor starts one
//! shim per instance start, which drives youki's libcontainer single-threaded and reports.
//!
//! Protocol, all over inherited file descriptors:
//! - fd 0 (from the supervisor): end of file once the supervisor recorded the started
//!   container; the shim then exits.
//! - fd 1 (to the supervisor): events, one JSON object per line: [`ShimEvent`].
//! - fd 2: the shim's own diagnostics (a file in the instance directory).
//! - fd 3 and 4: the write ends of the container's stdout and stderr pipes.
//!
//! Once the container runs, the shim reports its pid and exits as soon as the supervisor
//! (its parent, a child subreaper: [`crate::supervisor`]) has recorded it: the container's
//! init then becomes the supervisor's child, and no process of its own sits beside an
//! instance for its lifetime.

#![allow(unsafe_code)] // taking ownership of the inherited descriptors 3 and 4

use std::io::Write as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

/// What the shim tells the supervisor (which passes it on to the server, with the exit it
/// reaps itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "event")]
pub enum ShimEvent {
    /// The container's process is running.
    Started { pid: i32, create_us: u64, start_us: u64 },
    /// The container could not be created or started.
    Failed { error: String },
    /// The container exited and was deleted (reported by the supervisor).
    Exited { code: Option<i32>, signal: Option<i32>, oom_killed: bool },
}

/// What the shim is told on its command line ([`ShimArgs::parse`]).
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// The container id (also names its cgroup).
    pub id: String,
    /// The OCI bundle directory holding `config.json`.
    pub bundle: PathBuf,
    /// libcontainer's state directory.
    pub state_root: PathBuf,
    /// Whether the shim holds, as descriptors 5 and 6, a clone of its instance's scratch mount
    /// and its network namespace ([`crate::rootfs::GivenMounts`]): so does a shim of the
    /// forker, whose mount namespace holds no instance's mounts. Never on the command line.
    pub given_mounts: bool,
}

impl ShimArgs {
    /// The flags after `shim`: `--id ID --bundle DIR --state-root DIR` in any order, each
    /// once, nothing else. Read by hand rather than by the CLI's parser: building clap's whole
    /// command tree cost about 1 ms of each start's CPU.
    pub fn parse(flags: &[String]) -> Option<ShimArgs> {
        let (mut id, mut bundle, mut state_root) = (None, None, None);
        for pair in flags.chunks(2) {
            let [flag, value] = pair else { return None };
            let slot = match flag.as_str() {
                "--id" => &mut id,
                "--bundle" => &mut bundle,
                "--state-root" => &mut state_root,
                _ => return None,
            };
            if slot.replace(value.clone()).is_some() {
                return None;
            }
        }
        Some(ShimArgs { id: id?, bundle: bundle?.into(), state_root: state_root?.into(), given_mounts: false })
    }
}

/// The shim's entry point, in `wharf-shim` and in `wharf shim` alike: diagnostics to stderr (a
/// file in the instance directory; `WHARF_SHIM_LOG=debug` shows libcontainer's own account of
/// a failing start), then [`run`]. Returns the process exit code.
pub fn main(args: &ShimArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).try_init();
    run(args)
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
    // SAFETY: the supervisor starts the shim with descriptors 3 and 4 open (the container's
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
    // SAFETY: the forker placed these two descriptors at 5 and 6 when it says so, and
    // nothing else in this process owns them.
    let given = args.given_mounts.then(|| unsafe {
        crate::rootfs::GivenMounts { scratch: OwnedFd::from_raw_fd(5), netns: OwnedFd::from_raw_fd(6) }
    });
    if let Err(e) = crate::rootfs::mount_overlay_privately(&args.bundle, given) {
        emit(&ShimEvent::Failed { error: crate::instance::probe::chain(&e) });
        return 1;
    }
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
    // The supervisor closes our stdin once it has recorded the pid: then the container's
    // init, orphaned by our exit, becomes its child (it is a subreaper) and is known to it.
    let mut released = String::new();
    let _ = std::io::stdin().read_line(&mut released);
    drop(container);
    0
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_shim_command_line_is_read_in_any_order_and_nothing_else_is_accepted() {
        let shim = ShimArgs::parse(&args("--bundle /b --state-root /s --id abc")).expect("a whole command line");
        assert_eq!((shim.id.as_str(), shim.bundle.to_str(), shim.state_root.to_str()), ("abc", Some("/b"), Some("/s")));
        for bad in [
            "",
            "--id abc --bundle /b",
            "--id abc --bundle /b --state-root",
            "--id abc --bundle /b --state-root /s --id def",
            "--id abc --bundle /b --state-root /s --verbose yes",
        ] {
            assert!(ShimArgs::parse(&args(bad)).is_none(), "{bad:?} was accepted");
        }
    }
}
