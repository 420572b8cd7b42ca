//! The shim forker: a single-threaded copy of the instance supervisor, forked before the
//! supervisor starts its first thread, that forks a shim ([`crate::shim`]) for each instance
//! start the supervisor asks for. Executing the 207 MB `wharf` binary for each shim instead
//! cost 2.0 ms of CPU and 2.7 ms of each start's wall time (its relocations and page faults);
//! a fork of this small process costs a fraction of that (`docs/benchmarks.md`, "Round 5").
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair: one message per shim, its three flags
//! ([`ShimArgs`]) separated by NUL bytes, carrying the five descriptors the shim gets as 0-4
//! (its acknowledgement pipe, its events pipe, its log, the container's stdout and stderr)
//! and the two it gets as 5 and 6 ([`crate::rootfs::GivenMounts`]: a clone of its scratch
//! mount and its network namespace).
//!
//! The forker lives in a mount namespace of its own without the instances' mounts
//! ([`crate::rootfs::enter_shim_template`]), so each shim's namespace is copied from a small
//! table, not from the host's, which grows with every instance. If it could not enter it,
//! its shims detach those mounts themselves, as executed shims do.
//! Nothing comes back: the shim speaks for itself on its events pipe, and a shim that could
//! not be forked is seen there as an end of file without a report.
//!
//! The forker ignores `SIGCHLD`, so the kernel reaps its shims; the containers' init
//! processes, orphaned when their shim exits, still go to the supervisor (a child subreaper;
//! the forker is not one). It dies with the supervisor (`PR_SET_PDEATHSIG`, and the end of
//! file on its socket). Each shim closes every descriptor above those it is given before
//! anything else, the forker's socket among them: no container can reach it.

#![allow(unsafe_code)] // fork, signal dispositions, and placing received descriptors at 0-6

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::PathBuf;

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork};

use crate::shim::ShimArgs;

/// How many descriptors each shim gets as 0 to 4.
pub(crate) const SHIM_FDS: usize = 5;
/// How many more it gets as 5 and 6 (its scratch mount and network namespace).
pub(crate) const MOUNT_FDS: usize = 2;

/// The supervisor's end of the forker.
#[derive(Debug)]
pub(crate) struct Forker {
    socket: OwnedFd,
    pid: Pid,
}

impl Forker {
    /// Forks the forker, whose shims' mount namespaces are copied from one without the
    /// mounts under `instances`. Must be called while this process has a single thread.
    pub(crate) fn start(instances: &std::path::Path) -> Result<Forker, String> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| format!("cannot create the shim forker's socket: {e}"))?;
        let supervisor = nix::unistd::getpid();
        // SAFETY: the caller guarantees this process has one thread, so the child is a
        // complete copy with no lock held by a thread that does not exist in it.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => Ok(Forker { socket: ours, pid: child }),
            Ok(ForkResult::Child) => {
                drop(ours);
                serve(theirs, supervisor, instances)
            }
            Err(e) => Err(format!("cannot fork the shim forker: {e}")),
        }
    }

    /// Ends the forker and waits, up to `timeout`, until it has exited: its mount namespace is
    /// torn down as it exits, which takes a while, and nothing of the supervisor may be left
    /// running once the supervisor is gone.
    pub(crate) fn stop(&self, timeout: std::time::Duration) {
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        // SAFETY: pidfd_open takes a pid and flags and at most returns a new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid.as_raw(), 0) };
        let Ok(raw) = RawFd::try_from(raw) else { return };
        if raw < 0 {
            return; // gone (and reaped) already
        }
        // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd; a pidfd becomes readable when its process has exited.
        let _ = unsafe { libc::poll(&mut poll, 1, millis) };
    }

    /// The forker's process id.
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Asks for a shim with `args`, whose descriptors 0 to 4 are `fds` and 5 and 6 `mounts`.
    /// The forker holds its own copies once this returns.
    pub(crate) fn fork_shim(
        &self,
        args: &ShimArgs,
        fds: [BorrowedFd<'_>; SHIM_FDS],
        mounts: [BorrowedFd<'_>; MOUNT_FDS],
    ) -> Result<(), String> {
        let message = encode(args);
        let raw: Vec<RawFd> = fds.iter().chain(&mounts).map(|fd| fd.as_raw_fd()).collect();
        let control = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(self.socket.as_raw_fd(), &[IoSlice::new(&message)], &control, MsgFlags::MSG_NOSIGNAL, None)
            .map(drop)
            .map_err(|e| format!("the shim forker is gone ({e})"))
    }
}

/// `id`, `bundle` and `state_root`, NUL-separated (none may hold a NUL byte: they come from
/// the command line or from paths).
fn encode(args: &ShimArgs) -> Vec<u8> {
    let mut message = args.id.as_bytes().to_vec();
    for part in [args.bundle.as_os_str(), args.state_root.as_os_str()] {
        message.push(0);
        message.extend_from_slice(part.as_bytes());
    }
    message
}

fn decode(message: &[u8]) -> Option<ShimArgs> {
    let mut parts = message.split(|b| *b == 0);
    let id = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let bundle = PathBuf::from(std::ffi::OsString::from_vec(parts.next()?.to_vec()));
    let state_root = PathBuf::from(std::ffi::OsString::from_vec(parts.next()?.to_vec()));
    parts.next().is_none().then_some(ShimArgs { id, bundle, state_root, given_mounts: false })
}

/// The forker's life: a shim per message, until the supervisor is gone.
fn serve(socket: OwnedFd, supervisor: Pid, instances: &std::path::Path) -> ! {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != supervisor {
        std::process::exit(0);
    }
    let template = match crate::rootfs::enter_shim_template(instances) {
        Ok(()) => true,
        Err(e) => {
            let error = crate::instance::probe::chain(&e);
            eprintln!("wharf supervise: the shim forker keeps the host's mounts ({error}); each shim drops them");
            false
        }
    };
    // The server's command and event pipes are the supervisor's business: the forker keeps
    // neither open (the server sees the supervisor's end of file when it dies).
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto 0 and 1 replaces them atomically; `null` stays valid throughout.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    // SAFETY: ignoring SIGCHLD installs no handler; the kernel then reaps the shims.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) };
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let mut control = nix::cmsg_space!([RawFd; SHIM_FDS + MOUNT_FDS]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::MSG_CMSG_CLOEXEC)
        {
            Ok(received) => received,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(0),
        };
        if received.bytes == 0 {
            std::process::exit(0); // the supervisor closed its end
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in received.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(raw) = message {
                // SAFETY: descriptors just received are open and owned by nothing else here.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let bytes = received.bytes;
        let args = iov[0].get(..bytes).and_then(decode);
        match args {
            Some(mut args) if fds.len() == SHIM_FDS + MOUNT_FDS => {
                if template {
                    args.given_mounts = true;
                } else {
                    fds.truncate(SHIM_FDS); // this namespace has them, under the host's
                }
                fork_one(&args, &fds);
            }
            _ => eprintln!("wharf supervise: the shim forker got an unreadable request"),
        }
    }
}

/// Forks one shim; the forker's copies of its descriptors are closed by the caller.
fn fork_one(args: &ShimArgs, fds: &[OwnedFd]) {
    // SAFETY: the forker has a single thread (see `Forker::start`).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => {}
        Ok(ForkResult::Child) => {
            become_shim(fds);
            std::process::exit(crate::shim::main(args));
        }
        Err(e) => eprintln!("wharf supervise: the shim forker cannot fork a shim for {}: {e}", args.id),
    }
}

/// In a new shim: restores `SIGCHLD` (libcontainer waits for its own children), places `fds`
/// at 0, 1, 2... and closes every other descriptor.
fn become_shim(fds: &[OwnedFd]) {
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    // Moved above 4 first, so that placing one cannot overwrite another still to be placed.
    let high: Vec<RawFd> = fds
        .iter()
        // SAFETY: F_DUPFD_CLOEXEC on an open descriptor only allocates a new one.
        .map(|fd| unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 16) })
        .collect();
    if high.iter().any(|fd| *fd < 0) {
        std::process::exit(1);
    }
    for (target, fd) in (0..).zip(&high) {
        // SAFETY: `fd` is open; dup2 atomically replaces `target`, which the shim now owns.
        if unsafe { libc::dup2(*fd, target) } < 0 {
            std::process::exit(1);
        }
    }
    let first_unused = libc::c_uint::try_from(fds.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: nothing in this new process holds a descriptor above those placed that it still
    // needs: what `fds` owned now lives below, and the forker's socket must not reach a
    // container.
    if unsafe { libc::close_range(first_unused, libc::c_uint::MAX, 0) } != 0 {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_written_and_anything_else_is_refused() {
        let args = ShimArgs {
            id: "abc".into(),
            bundle: "/data/b x".into(),
            state_root: "/data/s".into(),
            given_mounts: false,
        };
        let back = decode(&encode(&args)).unwrap();
        assert_eq!((back.id, back.bundle, back.state_root), (args.id, args.bundle, args.state_root));
        assert!(decode(b"abc\0/b").is_none());
        assert!(decode(b"abc\0/b\0/s\0extra").is_none());
        assert!(decode(b"\xff\0/b\0/s").is_none());
    }
}
