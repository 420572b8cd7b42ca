//! The end of an instance: reading its output into the log store while it runs, then, when
//! the supervisor reports the exit, recording how it ended and releasing everything it used
//! (mounts, network namespace and veth, instance directory). The instance reaches a terminal
//! state only after all of that is done.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{ExitInfo, Instance, InstanceState};
use crate::contract::Owner;
use crate::logs::Stream;
use crate::network::InstanceNetwork;
use crate::resources::HumanBytes;
use crate::rootfs::Rootfs;
use crate::runtime::{Inner, Runtime};
use crate::shim::ShimEvent;

/// Reads one of the container's output FIFOs (its read end, opened non-blocking) until every
/// writer closed it, into the instance's log.
pub(crate) async fn read_output(runtime: Runtime, instance: Arc<Instance>, pipe: std::os::fd::OwnedFd, stream: Stream) {
    let receiver = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(?stream, error = %e, "cannot read container output");
            return;
        }
    };
    let max_line = runtime.logs().limits().line_bytes;
    let mut lines = FramedRead::new(receiver, LinesCodec::new_with_max_length(max_line));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(line) => line,
            Err(LinesCodecError::MaxLineLengthExceeded) => format!("[a line longer than {max_line} bytes was dropped]"),
            Err(LinesCodecError::Io(_)) => break,
        };
        instance.remember_line(&line);
        instance.log.line(stream, &line).await;
    }
}

/// Waits for the supervisor's exit report, then releases everything and records the end
/// state. Runs in the instance's span (spawned from `start`).
pub(crate) async fn reap(
    runtime: Runtime,
    instance: Arc<Instance>,
    mut events: UnboundedReceiver<ShimEvent>,
    readers: Vec<JoinHandle<()>>,
) {
    let mut exit = None;
    while let Some(event) = events.recv().await {
        match event {
            ShimEvent::Exited { code, signal, oom_killed } => {
                instance.exited.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::debug!(?code, ?signal, oom_killed, "container exited");
                exit = Some(ExitInfo { code, signal, oom_killed });
            }
            other => tracing::debug!(event = ?other, "supervisor event"),
        }
    }
    instance.exited.store(true, std::sync::atomic::Ordering::SeqCst);
    if exit.is_none() {
        // The supervisor died without reporting: make sure nothing of the container survives.
        tracing::warn!("the instance supervisor ended without reporting; killing the container's cgroup");
        let id = instance.id.clone();
        let _ = tokio::task::spawn_blocking(move || crate::cgroup::kill_and_remove(&id)).await;
    }
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    instance.log.finish().await;
    release(&runtime.inner, &instance.id, &instance.rootfs, Some(&instance.network), &instance.dir).await;
    tracing::debug!("released mounts, network and directory");
    drop(instance.reservation.lock().unwrap_or_else(|p| p.into_inner()).take());

    let stopping = instance.state() == InstanceState::Stopping;
    let platform_reason = instance.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    let is_task = matches!(instance.owner, Owner::Task { .. });
    let (state, reason) = match (platform_reason, exit) {
        (Some(reason), _) => (InstanceState::Failed, Some(reason)),
        (None, Some(e)) if e.oom_killed => (
            InstanceState::Failed,
            Some(format!(
                "Memory limit of {} exceeded; consider increasing the memory limit (--memory)",
                HumanBytes(instance.memory_bytes)
            )),
        ),
        (None, _) if stopping => (InstanceState::Stopped, None),
        (None, Some(ExitInfo { code: Some(0), .. })) if is_task => (InstanceState::Stopped, None),
        (None, Some(e)) => (InstanceState::Failed, Some(describe_exit(&e))),
        (None, None) => (InstanceState::Failed, Some("The container helper exited unexpectedly.".to_owned())),
    };
    tracing::debug!(?state, reason = reason.as_deref().unwrap_or(""), "instance ended");
    if let Some(reason) = &reason {
        runtime.logs().platform(&instance.owner, instance.project.as_deref(), &instance.id, "ERROR", reason).await;
    }
    runtime.inner.instances.lock().unwrap_or_else(|p| p.into_inner()).remove(&instance.id);
    instance.status.send_modify(|s| {
        s.state = state;
        s.reason = reason;
        s.exit = exit;
    });
}

pub(crate) fn describe_exit(exit: &ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("Container called exit({code})."),
        (None, Some(signal)) => format!("Container was terminated by signal {signal}."),
        (None, None) => "Container exited.".to_owned(),
    }
}

/// Releases what an instance used: mounts, network, container state and its directory.
/// Safe to call on a partly built instance.
pub(crate) async fn release(inner: &Inner, id: &str, rootfs: &Rootfs, network: Option<&InstanceNetwork>, dir: &Path) {
    let rootfs = rootfs.clone();
    let _ = tokio::task::spawn_blocking(move || rootfs.unmount()).await;
    if let Some(network) = network {
        // Forgotten before the address can go to another instance.
        {
            let mut callers = inner.callers.lock().unwrap_or_else(|p| p.into_inner());
            if callers.get(&network.ip).is_some_and(|c| c.instance == id) {
                callers.remove(&network.ip);
            }
        }
        inner.network.destroy(network).await;
    }
    let state = inner.state_root.join(id);
    if state.exists() {
        let _ = std::fs::remove_dir_all(&state);
    }
    if still_mounted_under(dir) {
        tracing::error!(dir = %dir.display(), "instance mounts are still present; keeping its directory");
    } else if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "removing instance directory failed");
    }
}

/// Whether anything is mounted at or below `dir` (never delete through a live mount).
pub(crate) fn still_mounted_under(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy();
    mounts.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| m == prefix || m.starts_with(&format!("{prefix}/")))
}
