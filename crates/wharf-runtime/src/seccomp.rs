//! The seccomp filter every instance runs under: the equivalent of Docker's default profile
//! for a container without CAP_SYS_ADMIN, written as a deny-list and compiled to classic BPF
//! in pure Rust (firecracker's `seccompiler`; no libseccomp on the machine).
//!
//! Three filters are stacked (the kernel runs all of them and the most severe answer wins):
//! 1. on x86_64, every x32-ABI syscall number (bit 30 set) fails with `ENOSYS`, so the x32
//!    aliases of denied calls cannot slip past the number-keyed rules below;
//! 2. the deny-list ([`DENIED`], [`CLONE_NAMESPACE_FLAGS`], [`PERSONALITY_ALLOWED`]) fails with
//!    `EPERM`; anything else is allowed;
//! 3. `clone3` fails with `ENOSYS`, as under Docker: its flags sit behind a pointer a filter
//!    cannot read, and `ENOSYS` makes glibc fall back to `clone`, whose flags filter 2 checks.
//!
//! Each filter also kills a process that makes a syscall of another architecture (i386 through
//! `int 0x80` on x86_64): seccompiler checks the audit architecture first, so 32-bit binaries
//! do not run in instances.
//!
//! [`SandboxExecutor`] installs the filters in the container's init process at libcontainer's
//! executor step: after libcontainer's own mounts, `pivot_root`, capability drop and
//! `no_new_privileges`, right before `execve` of the instance's command. Compiling happens
//! once in the shim, before the container is created. What is filtered is decided here; which
//! capabilities, masked paths and limits an instance gets is `spec`'s business.

use std::collections::BTreeMap;
use std::collections::HashMap;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Why the filters could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp filter cannot be built for architecture {arch}")]
    UnsupportedArch {
        arch: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("compiling the {filter} seccomp filter failed")]
    Compile {
        filter: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
}

/// Syscalls denied outright with `EPERM`: what Docker's default profile leaves out for a
/// container without CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_TIME, CAP_SYS_MODULE, CAP_SYS_BOOT,
/// CAP_SYS_RAWIO, CAP_SYS_NICE, CAP_SYSLOG, CAP_SYS_PACCT and CAP_BPF/CAP_PERFMON, plus
/// io_uring (out of Docker's profile since 25.0). Some of these the missing capabilities
/// refuse anyway; the filter keeps the kernel code behind them out of reach.
pub const DENIED: &[(&str, libc::c_long)] = &[
    // Namespaces: no new ones, no joining others (`clone` is checked by flags below).
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    // Mounts, old API and new.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    // The kernel keyring is not namespaced.
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    // Kernel-side programs and profiling.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    // Other processes' memory.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    // The machine: kernel, modules, power, swap, clock, accounting, log, quotas.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("acct", libc::SYS_acct),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("vhangup", libc::SYS_vhangup),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    // File handles bypass the mount namespace's view (the "shocker" escape).
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("fanotify_init", libc::SYS_fanotify_init),
    // NUMA placement (CAP_SYS_NICE in Docker).
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("mbind", libc::SYS_mbind),
    ("move_pages", libc::SYS_move_pages),
    // x86 port I/O and obsolete calls (`vm86` exists only on i386, refused by the arch check).
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
    #[cfg(target_arch = "x86_64")]
    ("sysfs", libc::SYS_sysfs),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
];

/// `clone` fails with `EPERM` when its flags ask for any of these namespaces (Docker's mask
/// 0x7E020000). Threads and plain forks are unaffected.
pub const CLONE_NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// The only `personality` values allowed, as in Docker: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (query). Others (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC)
/// weaken the process's own hardening and fail with `EPERM`.
pub const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// x32-ABI syscall numbers have this bit set (`__X32_SYSCALL_BIT`).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The compiled filters, in the order they are installed.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<(&'static str, BpfProgram)>,
}

impl Filters {
    /// Compiles the filters for the architecture this binary runs on.
    pub fn compile() -> Result<Filters, SeccompError> {
        let arch = std::env::consts::ARCH;
        let target: TargetArch = arch.try_into().map_err(|source| SeccompError::UnsupportedArch { arch, source })?;
        let compile = |filter: &'static str, built: Result<SeccompFilter, seccompiler::BackendError>| {
            built
                .and_then(BpfProgram::try_from)
                .map(|program| (filter, program))
                .map_err(|source| SeccompError::Compile { filter, source })
        };
        let programs = vec![
            #[cfg(target_arch = "x86_64")]
            ("x32", x32_guard()),
            compile("deny-list", deny_list(target))?,
            compile("clone3", clone3(target))?,
        ];
        Ok(Filters { programs })
    }

    /// The programs with their names, in installation order.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, &BpfProgram)> {
        self.programs.iter().map(|(name, program)| (*name, program))
    }

    /// Installs the filters on the calling thread (and what it executes). Irreversible.
    pub fn install(&self) -> Result<(), (&'static str, seccompiler::Error)> {
        for (name, program) in &self.programs {
            seccompiler::apply_filter(program).map_err(|e| (*name, e))?;
        }
        Ok(())
    }
}

fn deny_list(target: TargetArch) -> Result<SeccompFilter, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = u64::from(flag.unsigned_abs());
            let masked = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)?;
            SeccompRule::new(vec![masked])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let odd_personality = PERSONALITY_ALLOWED
        .iter()
        .map(|value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *value))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, vec![SeccompRule::new(odd_personality)?]);
    SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno(libc::EPERM)), target)
}

fn clone3(target: TargetArch) -> Result<SeccompFilter, seccompiler::BackendError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno(libc::ENOSYS)), target)
}

/// A hand-written filter (seccompiler keys rules by exact number, not ranges): load the
/// syscall number; if it has the x32 bit, fail with `ENOSYS`; else allow.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    // Classic BPF opcodes (linux/filter.h), as u16 like `sock_filter::code`.
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let errno_enosys = u32::from(SeccompAction::Errno(errno(libc::ENOSYS)));
    vec![
        sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: 0 },
        sock_filter { code: JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        sock_filter { code: RET_K, jt: 0, jf: 0, k: errno_enosys },
        sock_filter { code: RET_K, jt: 0, jf: 0, k: u32::from(SeccompAction::Allow) },
    ]
}

fn errno(e: libc::c_int) -> u32 {
    e.unsigned_abs()
}

/// libcontainer's default executor with the filters installed right before it `execve`s the
/// instance's command. If installing fails, the command does not run: the start fails.
#[derive(Debug, Clone)]
pub struct SandboxExecutor {
    filters: Filters,
}

impl SandboxExecutor {
    pub fn new(filters: Filters) -> SandboxExecutor {
        SandboxExecutor { filters }
    }
}

impl Executor for SandboxExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.filters
            .install()
            .map_err(|(name, e)| ExecutorError::Other(format!("installing the {name} seccomp filter failed: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use seccompiler::sock_filter;

    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;

    fn native_arch() -> u32 {
        if cfg!(target_arch = "aarch64") { AUDIT_ARCH_AARCH64 } else { AUDIT_ARCH_X86_64 }
    }

    fn ret_errno(e: libc::c_int) -> u32 {
        0x0005_0000 | errno(e)
    }

    /// `struct seccomp_data`, as the kernel hands it to a filter.
    struct Call {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Call {
        fn new(nr: libc::c_long, args: &[u64]) -> Call {
            let mut all = [0; 6];
            all[..args.len()].copy_from_slice(args);
            Call { nr: u32::try_from(nr).unwrap(), arch: native_arch(), args: all }
        }

        fn word(&self, offset: u32) -> u32 {
            let halves = |v: u64| [u32::try_from(v & 0xffff_ffff).unwrap(), u32::try_from(v >> 32).unwrap()]; // little endian
            match offset {
                0 => self.nr,
                4 => self.arch,
                16..=63 if offset.is_multiple_of(4) => {
                    let i = ((offset - 16) / 8) as usize;
                    halves(self.args[i])[((offset - 16) % 8 / 4) as usize]
                }
                _ => panic!("load from unexpected offset {offset}"),
            }
        }
    }

    /// A classic-BPF interpreter for the instructions seccomp filters use.
    fn run(program: &[sock_filter], call: &Call) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = &program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
            match ins.code {
                0x20 => acc = call.word(ins.k),       // ld [k]
                0x54 => acc &= ins.k,                 // and #k
                0x05 => pc += ins.k as usize,         // ja
                0x15 => pc += jump(acc == ins.k),     // jeq #k
                0x25 => pc += jump(acc > ins.k),      // jgt #k
                0x35 => pc += jump(acc >= ins.k),     // jge #k
                0x45 => pc += jump(acc & ins.k != 0), // jset #k
                0x06 => return ins.k,                 // ret #k
                code => panic!("unexpected BPF instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    /// What the stacked filters answer: the most severe action (lowest action value wins;
    /// among ERRNO answers the kernel uses the most recently installed filter's).
    fn verdict(filters: &Filters, call: &Call) -> u32 {
        let answers: Vec<u32> = filters.programs().map(|(_, p)| run(p, call)).collect();
        let action = |r: u32| (r & 0xffff_0000) as i32; // SECCOMP_RET_ACTION_FULL, signed
        *answers.iter().rev().min_by_key(|r| action(**r)).unwrap()
    }

    #[test]
    fn filters_compile_within_the_kernel_limit() {
        let filters = Filters::compile().unwrap();
        let names: Vec<&str> = filters.programs().map(|(n, _)| n).collect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(names, ["x32", "deny-list", "clone3"]);
        for (name, program) in filters.programs() {
            assert!(!program.is_empty() && program.len() < 4096, "{name}: {} instructions", program.len());
        }
    }

    #[test]
    fn denied_syscalls_fail_with_eperm_and_ordinary_ones_pass() {
        let filters = Filters::compile().unwrap();
        for (name, nr) in DENIED {
            assert_eq!(verdict(&filters, &Call::new(*nr, &[])), ret_errno(libc::EPERM), "{name}");
        }
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_openat, libc::SYS_execve, libc::SYS_socket] {
            assert_eq!(verdict(&filters, &Call::new(nr, &[])), RET_ALLOW, "syscall {nr}");
        }
        for required in ["unshare", "setns", "keyctl", "bpf", "ptrace", "mount", "open_by_handle_at", "reboot"] {
            assert!(DENIED.iter().any(|(n, _)| *n == required), "{required} is not denied");
        }
    }

    #[test]
    fn clone_is_denied_only_with_namespace_flags() {
        let filters = Filters::compile().unwrap();
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(verdict(&filters, &Call::new(libc::SYS_clone, &[thread])), RET_ALLOW);
        assert_eq!(verdict(&filters, &Call::new(libc::SYS_clone, &[fork])), RET_ALLOW);
        for flag in CLONE_NAMESPACE_FLAGS {
            let flags = fork | u64::from(flag.unsigned_abs());
            assert_eq!(verdict(&filters, &Call::new(libc::SYS_clone, &[flags])), ret_errno(libc::EPERM), "{flag:#x}");
        }
        assert_eq!(verdict(&filters, &Call::new(libc::SYS_clone3, &[0, 88])), ret_errno(libc::ENOSYS));
    }

    #[test]
    fn personality_allows_only_dockers_values() {
        let filters = Filters::compile().unwrap();
        for value in PERSONALITY_ALLOWED {
            assert_eq!(verdict(&filters, &Call::new(libc::SYS_personality, &[*value])), RET_ALLOW, "{value:#x}");
        }
        let addr_no_randomize = 0x0040000;
        assert_eq!(verdict(&filters, &Call::new(libc::SYS_personality, &[addr_no_randomize])), ret_errno(libc::EPERM));
    }

    #[test]
    fn other_architectures_and_x32_are_refused() {
        let filters = Filters::compile().unwrap();
        let mut foreign = Call::new(libc::SYS_read, &[]);
        foreign.arch = 0x4000_0003; // AUDIT_ARCH_I386
        assert_eq!(verdict(&filters, &foreign), RET_KILL_PROCESS);
        #[cfg(target_arch = "x86_64")]
        {
            let x32_unshare = Call::new(libc::SYS_unshare | libc::c_long::from(X32_SYSCALL_BIT), &[]);
            assert_eq!(verdict(&filters, &x32_unshare), ret_errno(libc::ENOSYS));
        }
    }
}
