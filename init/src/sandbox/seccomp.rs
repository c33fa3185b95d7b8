//! A seccomp allow-list as a classic BPF program, built with nothing but
//! libc (no libseccomp: PID 1 is one static binary, and the program is a
//! few dozen instructions).
//!
//! The program checks the architecture first (an x86-64 process can enter
//! the kernel through the i386 and x32 system call tables, whose numbers
//! mean other calls), then allows the listed system call numbers, merged
//! into ranges, and kills the whole process (`SECCOMP_RET_KILL_PROCESS`,
//! SIGSYS) on anything else: a filtered call is a bug or an attack, and a
//! service that dies is restarted and logged, where one that gets an error
//! may carry on in a state nobody planned for. systemd's default action for
//! `SystemCallFilter=` is the same.
//!
//! The groups follow systemd's (systemd.exec(5), "System Call Filtering"),
//! trimmed to x86-64: `@system-service` is what an ordinary daemon needs;
//! the privileged groups (`@module`, `@mount`, `@reboot`, ...) are what it
//! does not, each to be added by the services that do.

/// `AUDIT_ARCH_X86_64` from linux/audit.h.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// Calls with this bit set come through the x32 table.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Numbers libc 0.2 does not name yet (x86-64, from the kernel's
// `syscall_64.tbl`). Newer C libraries call some of them unasked
// (map_shadow_stack with CET, futex_wake and friends), so they are allowed.
const SYS_IO_PGETEVENTS: i64 = 333;
const SYS_URETPROBE: i64 = 335;
const SYS_CACHESTAT: i64 = 451;
const SYS_MAP_SHADOW_STACK: i64 = 453;
const SYS_FUTEX_WAKE: i64 = 454;
const SYS_FUTEX_WAIT: i64 = 455;
const SYS_FUTEX_REQUEUE: i64 = 456;

/// What a filter allows whatever it lists: the calls the child makes
/// between installing the filter and exec (switching ids, capabilities,
/// no_new_privileges, reporting a failure), and exec itself.
const ALWAYS: &[&str] = &[
    "execve",
    "exit",
    "exit_group",
    "write",
    "prctl",
    "capget",
    "capset",
    "setgroups",
    "setgid",
    "setuid",
];

/// The special entry that means "no filter".
pub const ALL: &str = "@all";

/// The default filter.
pub const DEFAULT_GROUP: &str = "@system-service";

/// A program ready for `seccomp(2)`.
#[derive(Clone)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({} instructions)", self.insns.len())
    }
}

impl PartialEq for Program {
    fn eq(&self, other: &Self) -> bool {
        let key = |i: &libc::sock_filter| (i.code, i.jt, i.jf, i.k);
        self.insns.iter().map(key).eq(other.insns.iter().map(key))
    }
}

impl Program {
    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Never true for a built program; for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

// BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const JGT_K: u16 = 0x05 | 0x20; // BPF_JMP | BPF_JGT | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
const RET_KILL_PROCESS: u32 = 0x8000_0000; // SECCOMP_RET_KILL_PROCESS

/// The number of a system call by name.
pub fn number(name: &str) -> Option<i64> {
    let i = NAMES.split(' ').position(|n| n == name)?;
    NUMBERS.get(i).copied()
}

/// The names in a group (`@system-service` expanded), or `None` for an
/// unknown group.
pub fn group(name: &str) -> Option<Vec<&'static str>> {
    let calls = |g: &str| {
        GROUPS
            .iter()
            .find(|(n, _)| *n == g)
            .map(|(_, calls)| calls.split(' '))
    };
    if name == DEFAULT_GROUP {
        let mut out: Vec<&'static str> = SYSTEM_SERVICE
            .split(' ')
            .filter_map(calls)
            .flatten()
            .collect();
        out.extend(SYSTEM_SERVICE_EXTRA.split(' '));
        return Some(out);
    }
    calls(name).map(Iterator::collect)
}

/// The sorted, deduplicated numbers an allow-list names. `Err` names the
/// first entry that is neither a known group nor a known call.
pub fn resolve(entries: &[String]) -> Result<Vec<u32>, String> {
    let mut nrs: Vec<u32> = Vec::new();
    let mut add = |name: &str| -> bool {
        match number(name).and_then(|n| u32::try_from(n).ok()) {
            Some(n) => {
                nrs.push(n);
                true
            }
            None => false,
        }
    };
    for name in ALWAYS {
        add(name);
    }
    for e in entries {
        let ok = if e.starts_with('@') {
            group(e).map(|calls| calls.iter().all(|c| add(c))) == Some(true)
        } else {
            add(e)
        };
        if !ok {
            return Err(e.clone());
        }
    }
    nrs.sort_unstable();
    nrs.dedup();
    Ok(nrs)
}

/// Builds the program allowing exactly `allowed` (sorted, deduplicated).
pub fn build(allowed: &[u32]) -> Program {
    let mut p = vec![
        insn(LD_W_ABS, 0, 0, OFF_ARCH),
        // Right architecture: skip the kill.
        insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, OFF_NR),
        // The x32 table: kill.
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
    ];
    // Consecutive numbers become one range test: x86-64's table is dense,
    // so the ~330 allowed calls of @system-service take ~60 ranges.
    let mut i = 0;
    while i < allowed.len() {
        let lo = allowed[i];
        let mut hi = lo;
        while allowed.get(i + 1) == Some(&(hi + 1)) {
            hi += 1;
            i += 1;
        }
        i += 1;
        if lo == hi {
            // nr == lo: allow; else on to the next test.
            p.push(insn(JEQ_K, 0, 1, lo));
        } else {
            // nr < lo: on (skip 2); nr > hi: on (skip 1); else allow.
            p.push(insn(JGE_K, 0, 2, lo));
            p.push(insn(JGT_K, 1, 0, hi));
        }
        p.push(insn(RET_K, 0, 0, RET_ALLOW));
    }
    p.push(insn(RET_K, 0, 0, RET_KILL_PROCESS));
    Program { insns: p }
}

/// Installs `prog` on the calling thread (and so on everything it execs
/// and forks). Async-signal-safe: one system call on prepared memory.
///
/// # Safety
/// None beyond the system call's: `prog` outlives the call.
pub unsafe fn install(prog: &Program) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.insns.len() as u16,
        filter: prog.insns.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` valid instructions; the kernel
    // copies them and does not write through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Every system call a filter may name, in the order of [`NUMBERS`].
///
/// One string and a plain array rather than a table of `(&str, i64)`:
/// init is a static PIE, and every pointer in a static table is a
/// relocation the loader writes at start, dirtying pages of PID 1.
const NAMES: &str = concat!(
    "accept accept4 access acct add_key adjtimex alarm arch_prctl bind bpf ",
    "brk cachestat capget capset chdir chmod chown chroot clock_adjtime ",
    "clock_getres clock_gettime clock_nanosleep clock_settime clone clone3 ",
    "close close_range connect copy_file_range creat delete_module dup ",
    "dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_pwait ",
    "epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit ",
    "exit_group faccessat faccessat2 fadvise64 fallocate fanotify_init ",
    "fchdir fchmod fchmodat fchmodat2 fchown fchownat fcntl fdatasync ",
    "fgetxattr finit_module flistxattr flock fork fremovexattr fsconfig ",
    "fsetxattr fsmount fsopen fspick fstat fstatfs fsync ftruncate futex ",
    "futex_requeue futex_wait futex_waitv futex_wake futimesat ",
    "get_mempolicy get_robust_list get_thread_area getcpu getcwd getdents ",
    "getdents64 getegid geteuid getgid getgroups getitimer getpeername ",
    "getpgid getpgrp getpid getppid getpriority getrandom getresgid ",
    "getresuid getrlimit getrusage getsid getsockname getsockopt gettid ",
    "gettimeofday getuid getxattr init_module inotify_add_watch ",
    "inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy ",
    "io_getevents io_pgetevents io_setup io_submit io_uring_enter ",
    "io_uring_register io_uring_setup ioctl ioperm iopl ioprio_get ",
    "ioprio_set kcmp kexec_file_load kexec_load keyctl kill ",
    "landlock_add_rule landlock_create_ruleset landlock_restrict_self ",
    "lchown lgetxattr link linkat listen listxattr llistxattr ",
    "lookup_dcookie lremovexattr lseek lsetxattr lstat madvise ",
    "map_shadow_stack mbind membarrier memfd_create migrate_pages mincore ",
    "mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mount ",
    "mount_setattr move_mount move_pages mprotect mq_getsetattr mq_notify ",
    "mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget ",
    "msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at ",
    "nanosleep newfstatat open open_by_handle_at open_tree openat openat2 ",
    "pause perf_event_open personality pidfd_getfd pidfd_open ",
    "pidfd_send_signal pipe pipe2 pivot_root pkey_alloc pkey_free ",
    "pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64 ",
    "process_madvise process_vm_readv process_vm_writev pselect6 ptrace ",
    "pwrite64 pwritev pwritev2 quotactl read readahead readlink readlinkat ",
    "readv reboot recvfrom recvmmsg recvmsg remap_file_pages removexattr ",
    "rename renameat renameat2 request_key restart_syscall rmdir rseq ",
    "rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo ",
    "rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo ",
    "sched_get_priority_max sched_get_priority_min sched_getaffinity ",
    "sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval ",
    "sched_setaffinity sched_setattr sched_setparam sched_setscheduler ",
    "sched_yield seccomp select semctl semget semop semtimedop sendfile ",
    "sendmmsg sendmsg sendto set_mempolicy set_mempolicy_home_node ",
    "set_robust_list set_thread_area set_tid_address setdomainname ",
    "setfsgid setfsuid setgid setgroups sethostname setitimer setns ",
    "setpgid setpriority setregid setresgid setresuid setreuid setrlimit ",
    "setsid setsockopt settimeofday setuid setxattr shmat shmctl shmdt ",
    "shmget shutdown sigaltstack signalfd signalfd4 socket socketpair ",
    "splice stat statfs statx swapoff swapon symlink symlinkat sync ",
    "sync_file_range syncfs sysinfo tee tgkill time timer_create ",
    "timer_delete timer_getoverrun timer_gettime timer_settime ",
    "timerfd_create timerfd_gettime timerfd_settime times tkill truncate ",
    "umask umount2 uname unlink unlinkat unshare uretprobe userfaultfd ",
    "utime utimensat utimes vfork vhangup vmsplice wait4 waitid write ",
    "writev",
);

/// The x86-64 numbers of [`NAMES`].
const NUMBERS: [i64; 347] = [
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_access,
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_adjtimex,
    libc::SYS_alarm,
    libc::SYS_arch_prctl,
    libc::SYS_bind,
    libc::SYS_bpf,
    libc::SYS_brk,
    SYS_CACHESTAT,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_chroot,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_settime,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_creat,
    libc::SYS_delete_module,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fanotify_init,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchmodat2,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_finit_module,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fork,
    libc::SYS_fremovexattr,
    libc::SYS_fsconfig,
    libc::SYS_fsetxattr,
    libc::SYS_fsmount,
    libc::SYS_fsopen,
    libc::SYS_fspick,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    SYS_FUTEX_REQUEUE,
    SYS_FUTEX_WAIT,
    libc::SYS_futex_waitv,
    SYS_FUTEX_WAKE,
    libc::SYS_futimesat,
    libc::SYS_get_mempolicy,
    libc::SYS_get_robust_list,
    libc::SYS_get_thread_area,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    libc::SYS_getdents,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getpgrp,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_init_module,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_cancel,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    SYS_IO_PGETEVENTS,
    libc::SYS_io_setup,
    libc::SYS_io_submit,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_setup,
    libc::SYS_ioctl,
    libc::SYS_ioperm,
    libc::SYS_iopl,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_kcmp,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    libc::SYS_lchown,
    libc::SYS_lgetxattr,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lookup_dcookie,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_lstat,
    libc::SYS_madvise,
    SYS_MAP_SHADOW_STACK,
    libc::SYS_mbind,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_migrate_pages,
    libc::SYS_mincore,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    libc::SYS_mount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_move_pages,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_open,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pause,
    libc::SYS_perf_event_open,
    libc::SYS_personality,
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_pivot_root,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_madvise,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pselect6,
    libc::SYS_ptrace,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_quotactl,
    libc::SYS_read,
    libc::SYS_readahead,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_reboot,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_request_key,
    libc::SYS_restart_syscall,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    libc::SYS_select,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_mempolicy,
    libc::SYS_set_mempolicy_home_node,
    libc::SYS_set_robust_list,
    libc::SYS_set_thread_area,
    libc::SYS_set_tid_address,
    libc::SYS_setdomainname,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_sethostname,
    libc::SYS_setitimer,
    libc::SYS_setns,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_settimeofday,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_splice,
    libc::SYS_stat,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    libc::SYS_time,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_umount2,
    libc::SYS_uname,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_unshare,
    SYS_URETPROBE,
    libc::SYS_userfaultfd,
    libc::SYS_utime,
    libc::SYS_utimensat,
    libc::SYS_utimes,
    libc::SYS_vfork,
    libc::SYS_vhangup,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The groups a filter may name, as in systemd (x86-64 only): names
/// separated by spaces.
pub const GROUPS: &[(&str, &str)] = &[
    ("@basic-io", "close close_range dup dup2 dup3 lseek pread64 preadv preadv2 pwrite64 pwritev pwritev2 read readv write writev"),
    ("@default", "arch_prctl brk clock_getres clock_gettime clock_nanosleep execve exit exit_group futex futex_waitv futex_wake futex_wait futex_requeue get_robust_list get_thread_area getegid geteuid getgid getgroups getpgid getpgrp getpid getppid getrandom getresgid getresuid getrlimit getsid gettid gettimeofday getuid map_shadow_stack membarrier mmap mprotect munmap nanosleep pause prlimit64 restart_syscall rseq rt_sigreturn sched_getaffinity sched_yield set_robust_list set_thread_area set_tid_address time uretprobe"),
    ("@aio", "io_cancel io_destroy io_getevents io_pgetevents io_setup io_submit io_uring_enter io_uring_register io_uring_setup"),
    ("@chown", "chown fchown fchownat lchown"),
    ("@file-system", "access chdir chmod close creat faccessat faccessat2 fallocate fchdir fchmod fchmodat fchmodat2 fcntl fgetxattr flistxattr fremovexattr fsetxattr fstat fstatfs ftruncate futimesat getcwd getdents getdents64 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch lgetxattr link linkat listxattr llistxattr lremovexattr lsetxattr lstat mkdir mkdirat mknod mknodat mmap munmap newfstatat open openat openat2 readlink readlinkat removexattr rename renameat renameat2 rmdir setxattr stat statfs statx symlink symlinkat truncate unlink unlinkat utime utimensat utimes"),
    ("@io-event", "epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2 poll ppoll pselect6 select"),
    ("@ipc", "memfd_create mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink msgctl msgget msgrcv msgsnd pipe pipe2 process_madvise process_vm_readv process_vm_writev semctl semget semop semtimedop shmat shmctl shmdt shmget"),
    ("@keyring", "add_key keyctl request_key"),
    ("@memlock", "mlock mlock2 mlockall munlock munlockall"),
    ("@network-io", "accept accept4 bind connect getpeername getsockname getsockopt listen recvfrom recvmmsg recvmsg sendmmsg sendmsg sendto setsockopt shutdown socket socketpair"),
    ("@process", "capget clone clone3 execveat fork getrusage kill pidfd_open pidfd_send_signal prctl rt_sigqueueinfo rt_tgsigqueueinfo setns tgkill tkill unshare vfork wait4 waitid"),
    ("@resources", "ioprio_set mbind migrate_pages move_pages sched_setaffinity sched_setattr sched_setparam sched_setscheduler set_mempolicy set_mempolicy_home_node setpriority setrlimit"),
    ("@setuid", "setgid setgroups setregid setresgid setresuid setreuid setuid"),
    ("@signal", "rt_sigaction rt_sigpending rt_sigprocmask rt_sigsuspend rt_sigtimedwait sigaltstack signalfd signalfd4"),
    ("@sync", "fdatasync fsync msync sync sync_file_range syncfs"),
    ("@timer", "alarm getitimer setitimer timer_create timer_delete timer_getoverrun timer_gettime timer_settime timerfd_create timerfd_gettime timerfd_settime times"),
    ("@sandbox", "landlock_add_rule landlock_create_ruleset landlock_restrict_self seccomp"),
    ("@module", "delete_module finit_module init_module"),
    ("@mount", "chroot fsconfig fsmount fsopen fspick mount mount_setattr move_mount open_tree pivot_root umount2"),
    ("@reboot", "kexec_file_load kexec_load reboot"),
    ("@swap", "swapoff swapon"),
    ("@clock", "adjtimex clock_adjtime clock_settime settimeofday"),
    ("@raw-io", "ioperm iopl"),
    ("@debug", "lookup_dcookie perf_event_open pidfd_getfd ptrace"),
    ("@privileged", "acct bpf open_by_handle_at quotactl sethostname setdomainname vhangup fanotify_init userfaultfd"),
];

/// What `@system-service` adds to its groups.
const SYSTEM_SERVICE_EXTRA: &str = "cachestat capset copy_file_range fadvise64 flock get_mempolicy getcpu getpriority ioctl ioprio_get kcmp madvise mincore mremap name_to_handle_at personality pkey_alloc pkey_free pkey_mprotect readahead remap_file_pages sched_get_priority_max sched_get_priority_min sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval sendfile setfsgid setfsuid setpgid setsid splice sysinfo tee umask uname vmsplice";

/// The groups `@system-service` is made of.
const SYSTEM_SERVICE: &str = "@aio @basic-io @chown @default @file-system @io-event @ipc @keyring @memlock @network-io @process @resources @setuid @signal @sync @timer @sandbox";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Runs the program on (arch, nr) the way the kernel does.
    fn run(p: &Program, arch: u32, nr: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = p.insns[pc];
            let (code, jt, jf, k) = (i.code, i.jt as usize, i.jf as usize, i.k);
            pc += 1;
            match code {
                LD_W_ABS => acc = if k == OFF_ARCH { arch } else { nr },
                JEQ_K => pc += if acc == k { jt } else { jf },
                JGE_K => pc += if acc >= k { jt } else { jf },
                JGT_K => pc += if acc > k { jt } else { jf },
                RET_K => return k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_list() {
        let allowed = resolve(&[DEFAULT_GROUP.into()]).unwrap();
        let p = build(&allowed);
        assert!(p.len() < 200, "{} instructions", p.len());
        for nr in 0..600u32 {
            let want = if allowed.contains(&nr) {
                RET_ALLOW
            } else {
                RET_KILL_PROCESS
            };
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr), want, "syscall {nr}");
        }
        // Another architecture, or the x32 table: killed even for read(2).
        assert_eq!(run(&p, 0x4000_0003, 0), RET_KILL_PROCESS);
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn system_service_leaves_out_the_privileged_groups() {
        let allowed = resolve(&[DEFAULT_GROUP.into()]).unwrap();
        for name in [
            "init_module",
            "finit_module",
            "mount",
            "reboot",
            "kexec_load",
            "ptrace",
            "bpf",
            "swapon",
            "settimeofday",
            "iopl",
        ] {
            let nr = number(name).unwrap() as u32;
            assert!(!allowed.contains(&nr), "{name} is allowed");
        }
        for name in [
            "read", "openat", "clone3", "socket", "execve", "rseq", "futex", "ioctl",
        ] {
            let nr = number(name).unwrap() as u32;
            assert!(allowed.contains(&nr), "{name} is not allowed");
        }
        let with_modules = resolve(&[DEFAULT_GROUP.into(), "@module".into()]).unwrap();
        assert!(with_modules.contains(&(libc::SYS_finit_module as u32)));
    }

    #[test]
    fn every_name_has_its_number_and_every_group_resolves() {
        assert_eq!(NAMES.split(' ').count(), NUMBERS.len());
        assert_eq!(number("read"), Some(libc::SYS_read));
        assert_eq!(number("io_pgetevents"), Some(333));
        for (g, _) in GROUPS {
            assert!(resolve(&[g.to_string()]).is_ok(), "{g}");
        }
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(resolve(&["@nope".into()]), Err("@nope".into()));
        assert_eq!(resolve(&["not_a_call".into()]), Err("not_a_call".into()));
        // Even a one-call list can exec and switch ids.
        let min = resolve(&["read".into()]).unwrap();
        assert!(min.contains(&(libc::SYS_execve as u32)));
    }
}
