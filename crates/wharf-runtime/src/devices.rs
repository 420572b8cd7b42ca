//! The device filter for cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, assembled here
//! and loaded with `bpf(2)` (no libbpf, no C toolchain), attached to the instances' parent
//! cgroup. On v1 the devices controller does this job (libcontainer writes its rules); on v2
//! libcontainer ignores device rules unless built with its libbpf-based feature, which a
//! fresh Debian machine cannot build, so without this filter an instance could open any
//! device node it can name (the host's disk, say).
//!
//! The program allows exactly what libcontainer's v1 default rules allow: creating (`mknod`)
//! any character or block node, which CAP_MKNOD's absence stops anyway, and reading and
//! writing `/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, `console`, `ptmx`, the
//! pseudo-terminals and `net/tun`. Everything else is denied (`EPERM` on open).
//!
//! Attached without flags, the program applies to every cgroup below the parent and cannot be
//! overridden there; attaching again (another server on the same parent) replaces it.

#![allow(unsafe_code)] // the bpf(2) system call

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// `BPF_DEVCG_DEV_*` and `BPF_DEVCG_ACC_*` of `linux/bpf.h`.
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const RWM: u32 = ACC_READ | ACC_WRITE | ACC_MKNOD;

/// A rule: device type, major and minor (`None`: any), and the accesses allowed.
#[derive(Debug, Clone, Copy)]
struct Allow {
    typ: u32,
    major: Option<u32>,
    minor: Option<u32>,
    access: u32,
}

const ALLOWED: &[Allow] = &[
    Allow { typ: DEV_CHAR, major: None, minor: None, access: ACC_MKNOD },
    Allow { typ: DEV_BLOCK, major: None, minor: None, access: ACC_MKNOD },
    Allow { typ: DEV_CHAR, major: Some(1), minor: Some(3), access: RWM }, // null
    Allow { typ: DEV_CHAR, major: Some(1), minor: Some(5), access: RWM }, // zero
    Allow { typ: DEV_CHAR, major: Some(1), minor: Some(7), access: RWM }, // full
    Allow { typ: DEV_CHAR, major: Some(1), minor: Some(8), access: RWM }, // random
    Allow { typ: DEV_CHAR, major: Some(1), minor: Some(9), access: RWM }, // urandom
    Allow { typ: DEV_CHAR, major: Some(5), minor: Some(0), access: RWM }, // tty
    Allow { typ: DEV_CHAR, major: Some(5), minor: Some(1), access: RWM }, // console
    Allow { typ: DEV_CHAR, major: Some(5), minor: Some(2), access: RWM }, // ptmx
    Allow { typ: DEV_CHAR, major: Some(136), minor: None, access: RWM },  // pts
    Allow { typ: DEV_CHAR, major: Some(10), minor: Some(200), access: RWM }, // net/tun
];

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// Opcodes used (BPF_CLASS | BPF_OP | BPF_SRC).
const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const MOV64_X: u8 = 0xbf; // dst = src
const MOV64_K: u8 = 0xb7; // dst = imm
const AND64_K: u8 = 0x57; // dst &= imm
const RSH64_K: u8 = 0x77; // dst >>= imm
const JNE_K: u8 = 0x55; // if dst != imm goto pc + off
const EXIT: u8 = 0x95;

fn imm(n: u32) -> i32 {
    i32::try_from(n).expect("device numbers and masks in the rules fit in 31 bits")
}

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor (from `struct
/// bpf_cgroup_dev_ctx`, whose first word is `access << 16 | type`); each rule is a block that
/// jumps to the next rule on a mismatch and returns 1 (allow) on a match; the end returns 0.
fn program() -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(RSH64_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in ALLOWED {
        let mut block = vec![insn(JNE_K, 2, 0, 0, imm(rule.typ))];
        if let Some(major) = rule.major {
            block.push(insn(JNE_K, 4, 0, 0, imm(major)));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JNE_K, 5, 0, 0, imm(minor)));
        }
        // Every access asked for must be allowed: (access & !allowed) == 0.
        block.push(insn(MOV64_X, 6, 3, 0, 0));
        block.push(insn(AND64_K, 6, 0, 0, imm(!rule.access & RWM)));
        block.push(insn(JNE_K, 6, 0, 0, 0));
        block.push(insn(MOV64_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K {
                // Skip to the first instruction after this block.
                ins.off = i16::try_from(len - i - 1).expect("a rule's block is short");
            }
        }
        p.extend(block);
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it (the fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as BPF_PROG_ATTACH reads it.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly initialised `repr(C)` prefix of `union bpf_attr` for
    // `command`, valid for the call, and its size is passed alongside.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

/// Loads the device program; the returned descriptor keeps it alive until attached. Only
/// when the kernel refuses it is it loaded again with the verifier's log, to explain why.
fn load() -> std::io::Result<OwnedFd> {
    match load_with_log(None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = load_with_log(Some(&mut log));
            let verifier = String::from_utf8_lossy(&log).trim_end_matches('\0').trim().to_owned();
            Err(std::io::Error::new(e.kind(), format!("loading the device filter failed ({e}): {verifier}")))
        }
    }
}

fn load_with_log(log: Option<&mut [u8]>) -> std::io::Result<OwnedFd> {
    let insns = program();
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"wharf_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).expect("the program is short"),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("bpf returned a bad descriptor"))?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the device filter to the v2 cgroup directory `cgroup`: from then on no process in
/// it or below may open a device node other than the allowed ones.
pub fn attach(cgroup: &Path) -> std::io::Result<()> {
    let program = load()?;
    let dir = std::fs::File::open(cgroup)?;
    let mut attr = ProgAttachAttr {
        target_fd: u32::try_from(dir.as_raw_fd()).expect("descriptors are not negative"),
        attach_bpf_fd: u32::try_from(program.as_raw_fd()).expect("descriptors are not negative"),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_jumps_past_its_own_block() {
        let p = program();
        assert_eq!(p.len(), 99, "docs/security.md gives the program's size");
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        for (i, ins) in p.iter().enumerate() {
            if ins.code == JNE_K {
                let target = i + 1 + usize::try_from(ins.off).unwrap();
                assert!(target < p.len(), "jump at {i} leaves the program");
                // A mismatch lands on the next rule's first test or the final deny.
                assert!(p[target].code == JNE_K || p[target].code == MOV64_K, "jump at {i} lands mid-block");
            }
        }
    }

    /// Loads the filter for real, attaches it to a v2 cgroup this test creates (the hybrid
    /// layout's `unified` mount here, the root on a pure v2 machine), and opens devices from a
    /// process inside it: /dev/null works, a block device of this machine does not. Needs
    /// root; skipped (with a message) where there is no writable v2 hierarchy.
    #[test]
    fn the_filter_denies_block_devices_and_allows_null() {
        let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"].into_iter().map(Path::new).find(|p| {
            nix::sys::statfs::statfs(*p).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        });
        let Some(v2) = v2 else {
            eprintln!("no cgroup v2 hierarchy on this machine; skipping");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root; skipping");
            return;
        }
        let block = std::fs::read_dir("/sys/dev/block")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("this machine has a block device");
        let dir = v2.join(format!("wharf-devtest-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _remove = Remove(dir.clone());
        attach(&dir).unwrap();
        // A node for the block device in a private temporary directory, opened from inside.
        let tmp = tempfile::tempdir().unwrap();
        let (major, minor) = block.split_once(':').unwrap();
        let node = tmp.path().join("disk");
        let dev = nix::sys::stat::makedev(major.parse().unwrap(), minor.parse().unwrap());
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev,
        )
        .unwrap();
        // The shell joins the cgroup itself, then runs the probes.
        let script = format!(
            "echo $$ > {procs} && head -c1 /dev/null && echo null-ok; \
             head -c1 {node} >/dev/null 2>&1 && echo disk-read || echo disk-denied",
            procs = dir.join("cgroup.procs").display(),
            node = node.display()
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().collect::<Vec<_>>(), ["null-ok", "disk-denied"], "{out:?}");
    }
}
