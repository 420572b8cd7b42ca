//! `/sandbox`: tries, from inside the instance, the operations Wharf's sandbox must refuse,
//! next to harmless controls it must allow, and reports each as `"ok"` or the errno name
//! (`"EPERM"`). The checker-inside-the-container pattern of youki's integration tests.
//!
//! Every probe is bounded and leaves nothing behind when it is refused; where a refused
//! operation would succeed on a broken sandbox, the probe undoes it (removes the node,
//! restores the persona, kills a traced child) so a failing test does not also damage the
//! instance. The fork bomb spawns at most `max` idle children (this binary in `idle` mode,
//! blocked on its stdin), then closes their stdin and reaps them all.
//!
//! Three probes need raw syscalls with no safe wrapper (`keyctl`, `bpf`, `clone3`), hence the
//! `unsafe` below; the arguments are plain integers or null pointers the kernel validates.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::Pid;

type Report = BTreeMap<&'static str, String>;

fn outcome<T>(r: Result<T, Errno>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

fn io_outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.raw_os_error().map(|n| format!("{:?}", Errno::from_raw(n))).unwrap_or_else(|| e.to_string()),
    }
}

/// The `idle` mode children of the fork bomb run: wait for stdin to close, then exit.
pub fn idle() -> ! {
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    std::process::exit(0);
}

/// The `unshare-user` mode (single-threaded, before any runtime starts): tries
/// unshare(CLONE_NEWUSER) and prints the outcome.
pub fn unshare_user() -> ! {
    println!("{}", outcome(nix::sched::unshare(CloneFlags::CLONE_NEWUSER)));
    std::process::exit(0);
}

fn idle_child() -> std::io::Result<Child> {
    Command::new("/proc/self/exe").arg("idle").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
}

fn reap(mut children: Vec<Child>) {
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = child.wait();
    }
}

/// Runs every probe; blocking (call it off the async runtime). `fork_max` bounds the bomb.
pub fn probe(fork_max: usize) -> serde_json::Value {
    let mut r = Report::new();
    // Namespaces: `unshare -r` is unshare(CLONE_NEWUSER) then writing the id maps. The kernel
    // refuses it in a multithreaded process (EINVAL) whatever the sandbox, so it is also tried
    // in a single-threaded child, as `unshare -r` would.
    r.insert("unshare_user", outcome(nix::sched::unshare(CloneFlags::CLONE_NEWUSER)));
    let child = Command::new("/proc/self/exe").arg("unshare-user").stdin(Stdio::null()).output();
    let single = match child {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(e) => io_outcome::<()>(Err(e)),
    };
    r.insert("unshare_user_single_threaded", single);
    r.insert("unshare_net", outcome(nix::sched::unshare(CloneFlags::CLONE_NEWNET)));
    r.insert(
        "setns",
        match std::fs::File::open("/proc/self/ns/net") {
            Ok(ns) => outcome(nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)),
            Err(e) => io_outcome::<()>(Err(e)),
        },
    );
    // SAFETY: clone3 with a null `clone_args` and size 0: the kernel rejects the arguments
    // (EINVAL) before doing anything, unless the filter answers first (ENOSYS).
    r.insert("clone3", outcome(Errno::result(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) })));
    let target = std::path::Path::new("/tmp/wharf-probe-mnt");
    let _ = std::fs::create_dir_all(target);
    let mounted = nix::mount::mount(Some("tmpfs"), target, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>);
    if mounted.is_ok() {
        let _ = nix::mount::umount(target);
    }
    r.insert("mount", outcome(mounted));
    // SAFETY: KEYCTL_GET_KEYRING_ID of the session keyring, no create: integer arguments only.
    let keyctl = unsafe {
        libc::syscall(libc::SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* SESSION */, 0)
    };
    r.insert("keyctl", outcome(Errno::result(keyctl)));
    // SAFETY: BPF_MAP_CREATE with a null attribute pointer and size 0: the kernel copies nothing
    // and rejects it (EINVAL/EFAULT) when the call gets that far.
    r.insert("bpf", outcome(Errno::result(unsafe { libc::syscall(libc::SYS_bpf, 0, 0usize, 0) })));
    r.insert("personality_query", outcome(nix::sys::personality::get()));
    let before = nix::sys::personality::get();
    let changed = nix::sys::personality::set(nix::sys::personality::Persona::ADDR_NO_RANDOMIZE);
    if let (Ok(_), Ok(before)) = (changed, before) {
        let _ = nix::sys::personality::set(before);
    }
    r.insert("personality_addr_no_randomize", outcome(changed));

    // Devices: a block device node (sda) in the writable rootfs and in /dev, a FIFO as control.
    for (name, open_name, path) in [
        ("mknod_block_tmp", "open_block_tmp", "/tmp/wharf-probe-blk"),
        ("mknod_block_dev", "open_block_dev", "/dev/wharf-probe-blk"),
    ] {
        let made = mknod(path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), makedev(8, 0));
        r.insert(name, outcome(made));
        if made.is_ok() {
            let mut buf = [0u8; 512];
            r.insert(open_name, io_outcome(std::fs::File::open(path).and_then(|mut f| f.read(&mut buf))));
            let _ = std::fs::remove_file(path);
        }
    }
    let fifo = "/tmp/wharf-probe-fifo";
    r.insert("mknod_fifo", outcome(mknod(fifo, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)));
    let _ = std::fs::remove_file(fifo);

    // Sockets: raw IP and packet sockets need CAP_NET_RAW; UDP is the control.
    let raw = socket(AddressFamily::Inet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Icmp);
    r.insert("raw_socket", outcome(raw));
    let packet = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::EthAll);
    r.insert("packet_socket", outcome(packet));
    r.insert("udp_socket", outcome(socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)));

    // ptrace of our own child (a process we could signal anyway): refused by the filter.
    match idle_child() {
        Ok(child) => {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let attached = nix::sys::ptrace::attach(pid);
            if attached.is_ok() {
                // A broken sandbox: do not wait on a traced child, end it (`reap` collects it).
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            r.insert("ptrace_attach", outcome(attached));
            r.insert("fork", "ok".to_owned());
            reap(vec![child]);
        }
        Err(e) => {
            r.insert("fork", io_outcome::<()>(Err(e)));
        }
    }

    let mut report = serde_json::to_value(&r).unwrap_or_default();
    report["nofile"] = nofile();
    report["fork_bomb"] = fork_bomb(fork_max);
    report
}

/// The NOFILE limits as `/proc/self/limits` shows them, and how many more files open before
/// the first error (bounded at 4096; all closed again).
fn nofile() -> serde_json::Value {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let numbers: Vec<String> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut files = Vec::new();
    let mut error = String::from("none");
    for _ in 0..4096 {
        match std::fs::File::open("/proc/self/limits") {
            Ok(f) => files.push(f),
            Err(e) => {
                error = io_outcome::<()>(Err(e));
                break;
            }
        }
    }
    serde_json::json!({
        "soft": numbers.first(),
        "hard": numbers.get(1),
        "opened": files.len(),
        "error": error,
    })
}

/// Spawns idle children until spawning fails or `max` run, then reaps them all.
fn fork_bomb(max: usize) -> serde_json::Value {
    let mut children = Vec::new();
    let mut error = String::from("none");
    while children.len() < max {
        match idle_child() {
            Ok(child) => children.push(child),
            Err(e) => {
                error = io_outcome::<()>(Err(e));
                break;
            }
        }
    }
    let spawned = children.len();
    reap(children);
    serde_json::json!({ "spawned": spawned, "error": error })
}
