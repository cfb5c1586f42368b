"""Docker's default seccomp profile, in Docker's own profile format.

A transcription of moby ``profiles/seccomp/default.json`` (generated there from
``default_linux.go``; this is the version at moby commit 00f3d18). It is an allow-list:
the default action fails every call with EPERM, and the rules name the calls a container
may make — most unconditionally, some only with an argument check (``socket`` but not
AF_VSOCK, ``personality`` with a few harmless values, ``clone`` without namespace flags),
some only on one architecture, and some only when the container holds a capability
(``mount`` and ``unshare`` with CAP_SYS_ADMIN, ``init_module`` with CAP_SYS_MODULE, …).

What is *missing* is the point: ``keyctl``/``add_key``/``request_key`` (the keyring is
not namespaced), ``kexec_load``, ``swapon``, ``userfaultfd``, ``pivot_root``, ``acct``,
the module calls, ``bpf``, ``perf_event_open``, ``open_by_handle_at`` (the 2014 "shocker"
escape) — each either reaches past the container's namespaces or is a common exploit path.
``minidock run --security-opt seccomp=FILE`` takes a profile in this same format.
"""

from __future__ import annotations

#: Mask of the clone flags that create namespaces (NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|
#: NEWNET|NEWCGROUP): ``clone`` is allowed only when ``flags & mask == 0``.
_CLONE_NAMESPACE_FLAGS = 0x7E020000
#: personality(0xffffffff) only asks for the current persona, without changing it.
_PERSONALITY_QUERY = 0xFFFFFFFF

#: The calls every container may make, unconditionally.
# fmt: off
_ALLOWED = [
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
    "ioprio_set", "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup",
    "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open",
    "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat",
    "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee",
    "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev"
]
# fmt: on


def _allow(*names: str, **rule: object) -> dict:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", **rule}


def _with_cap(cap: str, *names: str) -> dict:
    return _allow(*names, includes={"caps": [cap]})


def _only_on(arches: list[str], *names: str) -> dict:
    return _allow(*names, includes={"arches": arches})


def _arg0_is(name: str, value: int, op: str = "SCMP_CMP_EQ") -> dict:
    return _allow(name, args=[{"index": 0, "value": value, "valueTwo": 0, "op": op}])


# fmt: off
DEFAULT_PROFILE: dict = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,  # EPERM
    # A filter names the ABIs it covers: on x86_64 the 32-bit (int 0x80) and x32 entry
    # points get the same rules, so they can't be used to slip past the 64-bit ones.
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64",
         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_MIPS64",
         "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]},
        {"architecture": "SCMP_ARCH_MIPS64N32",
         "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"]},
        {"architecture": "SCMP_ARCH_MIPSEL64",
         "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"]},
        {"architecture": "SCMP_ARCH_MIPSEL64N32",
         "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"]},
        {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
    ],
    "syscalls": [
        _allow(*_ALLOWED),
        # Since Linux 4.8 seccomp runs *after* ptrace, so ptrace can't rewrite a filtered call.
        _allow("process_vm_readv", "process_vm_writev", "ptrace", includes={"minKernel": "4.8"}),
        _arg0_is("socket", 40, "SCMP_CMP_NE"),  # any family but AF_VSOCK (host-guest sockets)
        _arg0_is("personality", 0x0),  # PER_LINUX
        _arg0_is("personality", 0x0008),  # UNAME26
        _arg0_is("personality", 0x20000),  # PER_LINUX32
        _arg0_is("personality", 0x20008),  # PER_LINUX32 | UNAME26
        _arg0_is("personality", _PERSONALITY_QUERY),
        _only_on(["ppc64le"], "sync_file_range2", "swapcontext"),
        _only_on(["arm", "arm64"], "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                 "breakpoint", "cacheflush", "set_tls"),
        _only_on(["amd64", "x32"], "arch_prctl"),
        _only_on(["amd64", "x32", "x86"], "modify_ldt"),
        _only_on(["s390", "s390x"], "s390_pci_mmio_read", "s390_pci_mmio_write",
                 "s390_runtime_instr"),
        _only_on(["riscv64"], "riscv_flush_icache"),
        _with_cap("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
        _with_cap("CAP_SYS_ADMIN", "bpf", "clone", "clone3", "fanotify_init", "fsconfig",
                  "fsmount", "fsopen", "fspick", "lookup_dcookie", "mount", "mount_setattr",
                  "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
                  "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2",
                  "unshare"),
        # Without CAP_SYS_ADMIN: clone only without namespace flags (its flags are the first
        # argument, except on s390)...
        _allow("clone",
               args=[{"index": 0, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}],
               excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}),
        _allow("clone",
               args=[{"index": 1, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}],
               comment="s390 parameter ordering for clone is different",
               includes={"arches": ["s390", "s390x"]}, excludes={"caps": ["CAP_SYS_ADMIN"]}),
        # ...and clone3, whose flags sit in a struct seccomp can't read, fails with ENOSYS so
        # that the C library falls back to clone.
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        _with_cap("CAP_SYS_BOOT", "reboot"),
        _with_cap("CAP_SYS_CHROOT", "chroot"),
        _with_cap("CAP_SYS_MODULE", "delete_module", "init_module", "finit_module"),
        _with_cap("CAP_SYS_PACCT", "acct"),
        _with_cap("CAP_SYS_PTRACE", "kcmp", "pidfd_getfd", "process_madvise",
                  "process_vm_readv", "process_vm_writev", "ptrace"),
        _with_cap("CAP_SYS_RAWIO", "iopl", "ioperm"),
        _with_cap("CAP_SYS_TIME", "settimeofday", "stime", "clock_settime", "clock_settime64"),
        _with_cap("CAP_SYS_TTY_CONFIG", "vhangup"),
        _with_cap("CAP_SYS_NICE", "get_mempolicy", "mbind", "set_mempolicy",
                  "set_mempolicy_home_node"),
        _with_cap("CAP_SYSLOG", "syslog"),
        _with_cap("CAP_BPF", "bpf"),
        _with_cap("CAP_PERFMON", "perf_event_open"),
    ],
}
# fmt: on
