//! The instance supervisor: one small helper process per [`Runtime`](crate::Runtime)
//! (`wharf supervise`) that is the parent of every container the runtime starts, instead of
//! one waiter process beside each instance.
//!
//! It owns the containers' process lifecycle; the server keeps everything else (mounts,
//! network, logs, state). The supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`): it
//! starts a shim per instance start (forked by its shim forker, [`crate::forker`]; executed as
//! `wharf shim` if the forker is gone), the shim creates and starts the container with
//! libcontainer, reports the container's pid and exits once the supervisor has recorded it,
//! and the container's init process, orphaned, becomes the supervisor's child. The supervisor
//! then reaps it when it exits, reads whether the kernel OOM-killed it, removes its cgroups and
//! libcontainer state, and reports the exit.
//!
//! Protocol, JSON lines over the supervisor's stdin and stdout:
//! - commands ([`SupervisorCommand`]): `start` (a shim for a bundle, with the container's
//!   stdout and stderr FIFOs the server reads), `stop` (thaw, SIGTERM, SIGKILL after the
//!   grace period; a stop before the container runs kills it as soon as it does), `signal`.
//! - events ([`SupervisorEvent`]): each shim's [`ShimEvent`]s and the exits, by instance id.
//! - end of file on stdin (the server went away or shut down): every container is thawed and
//!   killed, reaped and cleaned up, then the supervisor exits.
//!
//! Its memory is what matters: it is the `wharf` binary entered before any argument parsing,
//! logging or async runtime, with a few threads and a few hundred bytes per container.
//! The server side, [`Supervisor`], starts it on the first instance start and routes its
//! events to each instance's reaper.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::shim::ShimEvent;

/// What the server tells the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "command")]
pub enum SupervisorCommand {
    /// Start a shim for container `id`: its bundle, the shim's log file, and the FIFOs the
    /// container's stdout and stderr go to (the server holds their read ends open).
    /// `cgroup` is the container's cgroup path (the spec's `cgroupsPath`): where to thaw,
    /// kill and remove it without searching every instance's cgroup.
    Start {
        id: String,
        #[serde(flatten)]
        files: ContainerFiles,
        #[serde(default)]
        cgroup: String,
    },
    /// SIGTERM now (thawed first), SIGKILL after `grace_ms` unless it exited.
    Stop { id: String, grace_ms: u64 },
    /// Deliver signal `signal` to the container's init.
    Signal { id: String, signal: i32 },
}

/// What the supervisor tells the server: an event of instance `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorEvent {
    pub id: String,
    #[serde(flatten)]
    pub event: ShimEvent,
}

/// How long the supervisor, told the server is gone, waits for its killed containers to be
/// reaped before it exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The supervisor process.
// ---------------------------------------------------------------------------------------

/// One container the supervisor looks after.
#[derive(Debug, Default)]
struct Container {
    /// The container's init, once its shim reported it running.
    pid: Option<Pid>,
    /// A stop arrived before the container ran: kill it as soon as it does.
    doomed: bool,
    /// The container's cgroup path (empty: unknown, found by searching).
    cgroup: String,
}

impl Container {
    /// The directories of the container `id`'s cgroup.
    fn cgroup_directories(&self, id: &str) -> Vec<PathBuf> {
        cgroup_directories(&self.cgroup, id)
    }
}

/// The directories of container `id`'s cgroup at `path`, or found by searching if the path
/// is unknown.
fn cgroup_directories(path: &str, id: &str) -> Vec<PathBuf> {
    if path.is_empty() { crate::cgroup::directories(id) } else { crate::cgroup::directories_of(path) }
}

#[derive(Debug, Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Started containers' init pids, to their ids.
    by_pid: HashMap<Pid, String>,
    /// SIGKILL deadlines of stopping containers.
    kills: Vec<(Instant, String)>,
    /// Stdin closed: no new starts, everything is being killed.
    server_gone: bool,
    /// Shims started and containers recorded so far: the reaper, finding no children, waits
    /// for this to change.
    spawns: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a child is spawned (the reaper may be idle), a kill deadline is added,
    /// or a container is reaped.
    changed: Condvar,
    state_root: PathBuf,
    out: Mutex<std::io::Stdout>,
    /// Forks the shims; `None` if it could not start (each shim is then executed).
    forker: Option<crate::forker::Forker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, id: &str, event: ShimEvent) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = serde_json::to_writer(&mut *out, &SupervisorEvent { id: id.to_owned(), event });
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

/// Runs the supervisor until its stdin closes and its containers are gone; returns the exit
/// code. `state_root` is libcontainer's state directory of the runtime.
pub fn run(state_root: PathBuf) -> i32 {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("wharf supervise: cannot become a child subreaper: {e}");
        return 1;
    }
    // Forked first, while this process still has a single thread. The instances directory
    // is beside the state root (`Runtime::open`).
    let forker = crate::forker::Forker::start(&state_root.with_file_name("instances"))
        .map_err(|e| eprintln!("wharf supervise: {e}; each shim will be executed instead"))
        .ok();
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        changed: Condvar::new(),
        state_root,
        out: Mutex::new(std::io::stdout()),
        forker,
    });
    {
        let shared = shared.clone();
        std::thread::spawn(move || reap_children(&shared));
    }
    {
        let shared = shared.clone();
        std::thread::spawn(move || kill_at_deadlines(&shared));
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<SupervisorCommand>(&line) {
            Ok(command) => handle(&shared, command),
            Err(e) => eprintln!("wharf supervise: unreadable command ({e}): {line}"),
        }
    }
    // The server is gone (or shut down): nothing of ours may outlive it.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut state = shared.lock();
    state.server_gone = true;
    for (id, container) in &mut state.containers {
        container.doomed = true;
        if let Some(pid) = container.pid {
            crate::cgroup::thaw_directories(&container.cgroup_directories(id));
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    while !state.containers.is_empty() && Instant::now() < deadline {
        state = shared.changed.wait_timeout(state, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
    }
    drop(state);
    if let Some(forker) = &shared.forker {
        forker.stop(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
    }
    0
}

fn handle(shared: &Arc<Shared>, command: SupervisorCommand) {
    match command {
        SupervisorCommand::Start { id, files, cgroup } => {
            shared.lock().containers.insert(id.clone(), Container { cgroup, ..Container::default() });
            if let Err(error) = spawn_shim(shared, &id, &files) {
                shared.lock().containers.remove(&id);
                shared.emit(&id, ShimEvent::Failed { error });
            }
        }
        SupervisorCommand::Stop { id, grace_ms } => {
            let mut state = shared.lock();
            let Some(container) = state.containers.get_mut(&id) else { return };
            match container.pid {
                Some(pid) => {
                    crate::cgroup::thaw_directories(&container.cgroup_directories(&id));
                    let _ = kill(pid, Signal::SIGTERM);
                    state.kills.push((Instant::now() + Duration::from_millis(grace_ms), id));
                    shared.changed.notify_all();
                }
                None => container.doomed = true,
            }
        }
        SupervisorCommand::Signal { id, signal } => {
            let state = shared.lock();
            if let (Some(pid), Ok(signal)) = (state.containers.get(&id).and_then(|c| c.pid), Signal::try_from(signal)) {
                let _ = kill(pid, signal);
            }
        }
    }
}

/// Opens a FIFO's write end for the container without blocking (the server holds the read
/// end open), then makes it blocking again: the container's writes must wait, not fail, when
/// the pipe is full.
fn open_fifo_for_writing(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open the output pipe {}: {e}", path.display()))?;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
        .map_err(|e| format!("cannot make the output pipe {} blocking: {e}", path.display()))?;
    Ok(file)
}

fn spawn_shim(shared: &Arc<Shared>, id: &str, paths: &ContainerFiles) -> Result<(), String> {
    let out = open_fifo_for_writing(&paths.stdout)?;
    let err = open_fifo_for_writing(&paths.stderr)?;
    let log = std::fs::File::create(&paths.log).map_err(|e| format!("cannot create {}: {e}", paths.log.display()))?;
    let args = crate::shim::ShimArgs {
        id: id.to_owned(),
        bundle: paths.bundle.to_owned(),
        state_root: shared.state_root.clone(),
        given_mounts: false,
    };
    let (events, ack) = match &shared.forker {
        Some(forker) => {
            match given_mounts(paths).and_then(|mounts| fork_shim(forker, &args, &log, &out, &err, &mounts)) {
                Ok(pipes) => pipes,
                Err(e) => {
                    eprintln!("wharf supervise: {e}; executing the shim instead");
                    execute_shim(&args, log, out, err)?
                }
            }
        }
        None => execute_shim(&args, log, out, err)?,
    };
    shared.lock().spawns += 1;
    shared.changed.notify_all();
    let (shared, id) = (shared.clone(), id.to_owned());
    std::thread::spawn(move || follow_shim(&shared, &id, events, ack));
    Ok(())
}

/// What a shim of the forker is handed ([`crate::rootfs::GivenMounts`]): a clone of the
/// instance's scratch mount (the bundle's directory's parent) and its network namespace.
fn given_mounts(paths: &ContainerFiles) -> Result<crate::rootfs::GivenMounts, String> {
    let scratch = paths.bundle.parent().unwrap_or(&paths.bundle);
    let flags = rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let scratch = rustix::mount::open_tree(rustix::fs::CWD, scratch, flags)
        .map_err(|e| format!("cannot clone the scratch mount {}: {e}", scratch.display()))?;
    let netns = paths.netns.as_deref().ok_or("the start names no network namespace")?;
    let netns = std::fs::File::open(netns).map_err(|e| format!("cannot open {}: {e}", netns.display()))?;
    Ok(crate::rootfs::GivenMounts { scratch, netns: netns.into() })
}

/// A shim from the forker ([`crate::forker`]); returns the read end of its events pipe and
/// the write end of its acknowledgement pipe.
fn fork_shim(
    forker: &crate::forker::Forker,
    args: &crate::shim::ShimArgs,
    log: &std::fs::File,
    out: &std::fs::File,
    err: &std::fs::File,
    mounts: &crate::rootfs::GivenMounts,
) -> Result<(std::fs::File, std::fs::File), String> {
    use std::os::fd::AsFd as _;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"));
    let ((events, events_shim), (ack_shim, ack)) = (pipe()?, pipe()?);
    forker.fork_shim(
        args,
        [ack_shim.as_fd(), events_shim.as_fd(), log.as_fd(), out.as_fd(), err.as_fd()],
        [mounts.scratch.as_fd(), mounts.netns.as_fd()],
    )?;
    // Our copies of the shim's ends close here: its events pipe ends when the shim exits.
    Ok((events.into(), ack.into()))
}

/// A shim executed from this process's own binary (`wharf shim`), our child; returns the same
/// pipe ends as [`fork_shim`].
fn execute_shim(
    args: &crate::shim::ShimArgs,
    log: std::fs::File,
    out: std::fs::File,
    err: std::fs::File,
) -> Result<(std::fs::File, std::fs::File), String> {
    use command_fds::{CommandFdExt as _, FdMapping};
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("shim")
        .arg("--id")
        .arg(&args.id)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--state-root")
        .arg(&args.state_root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    cmd.fd_mappings(vec![
        FdMapping { parent_fd: out.into(), child_fd: 3 },
        FdMapping { parent_fd: err.into(), child_fd: 4 },
    ])
    .map_err(|e| e.to_string())?;
    let mut child = cmd.spawn().map_err(|e| format!("cannot start the container helper: {e}"))?;
    drop(cmd); // closes our copies of the FIFOs' write ends
    let (Some(events), Some(ack)) = (child.stdout.take(), child.stdin.take()) else {
        return Err("the container helper has no pipes".to_owned());
    };
    // The shim is reaped by the reaper thread (it is our child); the `Child` is only dropped.
    drop(child);
    Ok((std::fs::File::from(std::os::fd::OwnedFd::from(events)), std::fs::File::from(std::os::fd::OwnedFd::from(ack))))
}

/// Reads one shim's events. On `started` the container's pid is recorded before the shim is
/// let go (its stdin closed), so the orphaned init is known when the reaper meets it.
fn follow_shim(shared: &Shared, id: &str, events: std::fs::File, ack: std::fs::File) {
    let mut ack = Some(ack);
    let mut reported = false;
    for line in std::io::BufReader::new(events).lines() {
        let Ok(line) = line else { break };
        let event = match serde_json::from_str::<ShimEvent>(&line) {
            Ok(event) => event,
            Err(e) => {
                eprintln!("wharf supervise: unreadable shim event ({e}): {line}");
                continue;
            }
        };
        match &event {
            ShimEvent::Started { pid, .. } => {
                let pid = Pid::from_raw(*pid);
                let mut state = shared.lock();
                let doomed = state.server_gone || state.containers.get(id).is_none_or(|c| c.doomed);
                let container = state.containers.entry(id.to_owned()).or_default();
                container.pid = Some(pid);
                let dirs = if doomed { container.cgroup_directories(id) } else { Vec::new() };
                state.by_pid.insert(pid, id.to_owned());
                // The init becomes our child when its shim exits: a reaper that found no child
                // must look again.
                state.spawns += 1;
                shared.changed.notify_all();
                if doomed {
                    crate::cgroup::thaw_directories(&dirs);
                    let _ = kill(pid, Signal::SIGKILL);
                }
                drop(state);
                shared.emit(id, event);
                drop(ack.take()); // the shim may exit now
                reported = true;
            }
            ShimEvent::Failed { .. } => {
                shared.lock().containers.remove(id);
                shared.changed.notify_all();
                shared.emit(id, event);
                reported = true;
            }
            ShimEvent::Exited { .. } => shared.emit(id, event),
        }
    }
    if !reported {
        let cgroup = shared.lock().containers.remove(id).map(|c| c.cgroup).unwrap_or_default();
        shared.changed.notify_all();
        crate::cgroup::kill_and_remove_directories(&cgroup_directories(&cgroup, id));
        shared.emit(id, ShimEvent::Failed { error: "the container helper exited without reporting".to_owned() });
    }
}

/// Reaps every child: shims, orphans, and the containers' init processes, whose end it
/// reports after removing their cgroups and state.
fn reap_children(shared: &Shared) {
    loop {
        let spawns = shared.lock().spawns;
        let (pid, code, signal) = match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, None, Some(signal as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // No children now: wait for the next start.
                let mut state = shared.lock();
                while state.spawns == spawns {
                    state = shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                continue;
            }
        };
        if shared.forker.as_ref().is_some_and(|forker| forker.pid() == pid) {
            // Later starts fail to reach it and execute their shim instead. While draining,
            // the supervisor ended it itself.
            if !shared.lock().server_gone {
                eprintln!("wharf supervise: the shim forker exited (code {code:?}, signal {signal:?})");
            }
            continue;
        }
        let (id, cgroup) = {
            let mut state = shared.lock();
            let Some(id) = state.by_pid.remove(&pid) else { continue };
            let cgroup = state.containers.remove(&id).map(|c| c.cgroup).unwrap_or_default();
            (id, cgroup)
        };
        let dirs = cgroup_directories(&cgroup, &id);
        let oom_killed = oom_killed(&dirs);
        // What libcontainer's delete does for a stopped container: its cgroups and its state.
        crate::cgroup::kill_and_remove_directories(&dirs);
        let dir = shared.state_root.join(&id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("wharf supervise: removing {} failed: {e}", dir.display());
        }
        shared.emit(&id, ShimEvent::Exited { code, signal, oom_killed });
        shared.changed.notify_all();
    }
}

/// SIGKILLs stopping containers whose grace period ran out.
fn kill_at_deadlines(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        let (due, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut state.kills).into_iter().partition(|(at, _)| *at <= now);
        state.kills = pending;
        for (_, id) in due {
            if let Some(container) = state.containers.get(&id)
                && let Some(pid) = container.pid
            {
                // Killing the pid namespace's init kills everything in it.
                crate::cgroup::thaw_directories(&container.cgroup_directories(&id));
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let wait = state.kills.iter().map(|(at, _)| at.saturating_duration_since(now)).min();
        state = shared
            .changed
            .wait_timeout(state, wait.unwrap_or(Duration::from_secs(3600)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Whether the kernel OOM-killed a process of the container's memory cgroup.
fn oom_killed(dirs: &[PathBuf]) -> bool {
    let files = dirs.iter().flat_map(|dir| [dir.join("memory.oom_control"), dir.join("memory.events")]);
    files.filter_map(|f| std::fs::read_to_string(f).ok()).any(|text| {
        text.lines().any(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0) > 0)
    })
}

// ---------------------------------------------------------------------------------------
// The server's side.
// ---------------------------------------------------------------------------------------

/// Where one instance's events go, and which supervisor process they come from.
type Routes = Arc<Mutex<HashMap<String, (u64, tokio::sync::mpsc::UnboundedSender<ShimEvent>)>>>;

/// The server's handle on its supervisor process: started on the first instance start (and
/// again if it died), fed commands, its events routed to each instance.
#[derive(Debug)]
pub(crate) struct Supervisor {
    helper: PathBuf,
    state_root: PathBuf,
    link: Arc<tokio::sync::Mutex<Option<Link>>>,
    routes: Routes,
}

#[derive(Debug)]
struct Link {
    generation: u64,
    stdin: tokio::process::ChildStdin,
    /// The task routing its events; it ends once the process exited.
    events: tokio::task::JoinHandle<()>,
}

/// Where a container's files are on the host ([`SupervisorCommand::Start`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFiles {
    pub bundle: PathBuf,
    /// The shim's diagnostics.
    pub log: PathBuf,
    /// The FIFOs the container's output goes to.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The container's network namespace, bound where its spec names it in a shim of the
    /// forker ([`crate::rootfs::GivenMounts`]).
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// The supervisor process could not be started or written to.
#[derive(Debug, thiserror::Error)]
#[error("the instance supervisor ({helper}) {what}")]
pub struct SupervisorError {
    helper: String,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

impl Supervisor {
    pub(crate) fn new(helper: PathBuf, state_root: PathBuf) -> Supervisor {
        Supervisor { helper, state_root, link: Arc::default(), routes: Arc::default() }
    }

    /// Starts instance `id`'s container; its events arrive on the returned receiver, which
    /// ends after `exited` or `failed` (or when the supervisor died).
    pub(crate) async fn start(
        &self,
        id: &str,
        files: ContainerFiles,
        cgroup: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<ShimEvent>, SupervisorError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let command = SupervisorCommand::Start { id: id.to_owned(), files, cgroup: cgroup.to_owned() };
        self.send(&command, Some((id, tx))).await?;
        Ok(rx)
    }

    /// Sends a stop or signal; false if no supervisor runs (its containers are gone).
    pub(crate) async fn command(&self, command: &SupervisorCommand) -> bool {
        if self.link.lock().await.is_none() {
            return false;
        }
        self.send(command, None).await.is_ok()
    }

    /// Drops instance `id`'s route: its later events are ignored.
    pub(crate) fn forget(&self, id: &str) {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Closes the supervisor's stdin (it kills what still runs, cleans up and exits) and waits
    /// until it has exited, bounded.
    pub(crate) async fn close(&self) {
        let link = self.link.lock().await.take();
        if let Some(Link { stdin, events, .. }) = link {
            drop(stdin);
            if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(5), events).await.is_err() {
                tracing::warn!("the instance supervisor did not exit after its input closed");
            }
        }
    }

    async fn send(
        &self,
        command: &SupervisorCommand,
        route: Option<(&str, tokio::sync::mpsc::UnboundedSender<ShimEvent>)>,
    ) -> Result<(), SupervisorError> {
        use tokio::io::AsyncWriteExt as _;
        let mut line = serde_json::to_vec(command).unwrap_or_default();
        line.push(b'\n');
        let mut link = self.link.lock().await;
        for attempt in 0..2 {
            if link.is_none() {
                if route.is_none() {
                    break;
                }
                *link = Some(self.spawn().await?);
            }
            let Some(current) = link.as_mut() else { break };
            if let Some((id, tx)) = &route {
                self.routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((*id).to_owned(), (current.generation, tx.clone()));
            }
            match current.stdin.write_all(&line).await {
                Ok(()) => return Ok(()),
                Err(source) => {
                    // It died: a new one takes the next start.
                    *link = None;
                    if attempt == 1 || route.is_none() {
                        return Err(self.error("is not answering", source));
                    }
                }
            }
        }
        Err(self.error("is not running", std::io::Error::from(std::io::ErrorKind::NotConnected)))
    }

    fn error(&self, what: &'static str, source: std::io::Error) -> SupervisorError {
        SupervisorError { helper: self.helper.display().to_string(), what, source }
    }

    async fn spawn(&self) -> Result<Link, SupervisorError> {
        use tokio::io::AsyncBufReadExt as _;
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut child = tokio::process::Command::new(&self.helper)
            .arg("supervise")
            .arg("--state-root")
            .arg(&self.state_root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| self.error("cannot be started", e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(self.error("has no pipes", std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        };
        tracing::debug!(pid = child.id(), generation, "instance supervisor started");
        let (routes, link) = (self.routes.clone(), self.link.clone());
        let events = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(SupervisorEvent { id, event }) = serde_json::from_str::<SupervisorEvent>(&line) else {
                    tracing::warn!(line, "unreadable supervisor event");
                    continue;
                };
                let last = matches!(event, ShimEvent::Exited { .. } | ShimEvent::Failed { .. });
                let mut routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, tx)) = routes.get(&id) {
                    let _ = tx.send(event);
                }
                if last {
                    routes.remove(&id);
                }
            }
            // It ended: every instance it supervised hears nothing more (their reapers make
            // sure nothing of those containers survives).
            routes.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (g, _)| *g != generation);
            let mut link = link.lock().await;
            if link.as_ref().is_some_and(|l| l.generation == generation) {
                tracing::warn!("the instance supervisor exited");
                *link = None;
            }
            drop(link);
            let _ = child.wait().await;
        });
        Ok(Link { generation, stdin, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_round_trip_as_json_lines() {
        let stop = SupervisorCommand::Stop { id: "ab12".into(), grace_ms: 10_000 };
        let text = serde_json::to_string(&stop).unwrap();
        assert_eq!(text, r#"{"command":"stop","id":"ab12","grace_ms":10000}"#);
        assert_eq!(serde_json::from_str::<SupervisorCommand>(&text).unwrap(), stop);
        let exited = SupervisorEvent {
            id: "ab12".into(),
            event: ShimEvent::Exited { code: Some(3), signal: None, oom_killed: false },
        };
        let text = serde_json::to_string(&exited).unwrap();
        assert_eq!(serde_json::from_str::<SupervisorEvent>(&text).unwrap(), exited);
        assert!(text.contains(r#""event":"exited""#), "{text}");
    }
}
