"""The confinement every sandboxed process runs under: a capability set and a seccomp filter.

Why this shape (see README, "Confinement"): without an LSM and without a user namespace, a
sandbox's root is the host's root held back only by capabilities, seccomp and namespaces.
libvirt's LXC driver drops capabilities from the container's init but installs no seccomp
filter, and the init needs CAP_SYS_ADMIN for its own mounts. So the sandbox's init, once its
mounts are done, execs this file, which
1. installs a seccomp filter (libseccomp, default allow, the calls below denied with EPERM),
2. shrinks the capability bounding, permitted, effective, inheritable and ambient sets to
   the confined set, and
3. execs the sandbox's systemd (unit sandboxes) or its command (generic sandboxes, `run`).
Everything started after that inherits both, for ever: the sandbox's own systemd included, so
a unit the service gets started through it (a transient unit over its private socket, a unit
file written into the private /etc) has no more than the service. `execute` and `connect`
apply the same in-process (apply()) before they exec inside a running sandbox.

A deny-list rather than podman's allow-list: a confined daemon may be anything the host has
installed, and what a root without CAP_SYS_ADMIN could still misuse is listed here; the
capability checks in the kernel gate the rest. Architectures other than the native one (i386
and x32 calls on x86_64) are killed, so no second syscall table slips past the list.

No NoNewPrivileges for the whole sandbox: the filter is installed with CAP_SYS_ADMIN, so a
setuid program cannot shed it, and the bounding set caps what a setuid program can gain;
setuid and setgid helpers (sendmail's postdrop, crontab, ping) keep working.

This file is run as a script by the host's own python (`python3 -I -S confine.py ...`) inside
the sandbox, before anything else of ours is importable there: standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Syscalls denied to every confined process, by group. A group whose capability is given back
# (--cap-add) is allowed with it; any group or call can be allowed by name (--syscall-allow).
GROUPS: dict[str, tuple[str, ...]] = {
    # Remounting the read-only host root, unmounting the private /etc, new cgroup hierarchies
    # (the release_agent route), new proc or sysfs instances: all through these.
    "mount": ("mount", "umount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick",
              "move_mount", "open_tree", "mount_setattr", "pivot_root"),
    # open_by_handle_at reaches any inode of a mounted file system by number ("shocker").
    "handles": ("open_by_handle_at",),
    "namespaces": ("setns",),  # and unshare/clone with namespace flags, clone3: see below
    "module": ("init_module", "finit_module", "delete_module", "create_module",
               "query_module", "get_kernel_syms"),
    "reboot": ("reboot", "kexec_load", "kexec_file_load"),
    "clock": ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime"),
    "swap": ("swapon", "swapoff"),
    "acct": ("acct",),
    "rawio": ("iopl", "ioperm"),
    "bpf": ("bpf",),
    "perf": ("perf_event_open",),
    "keyring": ("keyctl", "add_key", "request_key"),
    "userfaultfd": ("userfaultfd",),
    # io_uring performs file and socket operations the filter never sees.
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"),
    "syslog": ("syslog",),
    "quota": ("quotactl", "quotactl_fd"),
    "numa": ("mbind", "migrate_pages", "move_pages", "set_mempolicy"),
    "obsolete": ("uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "lookup_dcookie",
                 "vm86", "vm86old"),
    # socket() of any family but unix, inet, inet6, netlink and packet (see FAMILIES): the
    # rare ones are where the kernel loads modules on demand, and AF_VSOCK is in no network
    # namespace at all (it reaches the host's vsock services).
    "sockets": (),
}
# A capability given back lets the calls that exist for it through as well.
CAP_GROUPS: dict[str, tuple[str, ...]] = {
    "sys_time": ("clock",), "sys_module": ("module",), "sys_boot": ("reboot",),
    "sys_pacct": ("acct",), "sys_rawio": ("rawio",), "sys_ptrace": ("ptrace",),
    "syslog": ("syslog",), "sys_nice": ("numa",), "sys_admin": ("swap", "quota"),
}
# Namespace flags refused in clone and unshare (clone3's flags are in memory the filter
# cannot read: it gets ENOSYS, and the C library falls back to clone).
NS_FLAGS = {"CLONE_NEWTIME": 0x80, "CLONE_NEWNS": 0x20000, "CLONE_NEWCGROUP": 0x2000000,
            "CLONE_NEWUTS": 0x4000000, "CLONE_NEWIPC": 0x8000000,
            "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
            "CLONE_NEWNET": 0x40000000}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # typing into another's terminal
# Address families (linux/socket.h) refused unless @sockets is allowed; the rest, and every
# number from AF_MAX on, too. Kept: AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6, AF_NETLINK,
# AF_PACKET (which needs CAP_NET_RAW anyway).
FAMILIES = {
    "AF_AX25": 3, "AF_IPX": 4, "AF_APPLETALK": 5, "AF_NETROM": 6, "AF_BRIDGE": 7,
    "AF_ATMPVC": 8, "AF_X25": 9, "AF_ROSE": 11, "AF_DECnet": 12, "AF_NETBEUI": 13,
    "AF_SECURITY": 14, "AF_KEY": 15, "AF_ASH": 18, "AF_ECONET": 19, "AF_ATMSVC": 20,
    "AF_RDS": 21, "AF_SNA": 22, "AF_IRDA": 23, "AF_PPPOX": 24, "AF_WANPIPE": 25, "AF_LLC": 26,
    "AF_IB": 27, "AF_MPLS": 28, "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31, "AF_IUCV": 32,
    "AF_RXRPC": 33, "AF_ISDN": 34, "AF_PHONET": 35, "AF_IEEE802154": 36, "AF_CAIF": 37,
    "AF_ALG": 38, "AF_NFC": 39, "AF_VSOCK": 40, "AF_KCM": 41, "AF_QIPCRTR": 42, "AF_SMC": 43,
    "AF_XDP": 44, "AF_MCTP": 45,
}
AF_MAX = 46
# The capabilities a confined process keeps by default: what daemons use to start as root and
# drop to their user (podman's default set, plus audit_write for login and sshd).
CONFINED_CAPS = ("audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
                 "net_bind_service", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot")
CAP_NUMBERS = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin",
    "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot",
    "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource",
    "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
    "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend",
    "audit_read", "perfmon", "bpf", "checkpoint_restore",
)

ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
EPERM, ENOSYS = 1, 38
CMP_EQ, CMP_GE, CMP_MASKED_EQ = 4, 5, 7
ATTR_ACT_BADARCH, ATTR_CTL_NNP = 1, 3
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
CAPS_VERSION_3 = 0x20080522
LIBSECCOMP = "libseccomp.so.2"


def act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


def allowed_groups(caps: tuple[str, ...], allow: tuple[str, ...]) -> set[str]:
    """Groups let through: those of the given capabilities, and those named in `allow`."""
    out = {g for c in caps for g in CAP_GROUPS.get(c, ())}
    return out | {a.removeprefix("@") for a in allow if a.removeprefix("@") in GROUPS}


def denied_calls(caps: tuple[str, ...], allow: tuple[str, ...]) -> tuple[str, ...]:
    """The plain deny-list for these capabilities and allowances, in group order."""
    open_groups = allowed_groups(caps, allow)
    return tuple(call for group, calls in GROUPS.items() if group not in open_groups
                 for call in calls if call not in allow)


def restricts_namespaces(caps: tuple[str, ...], allow: tuple[str, ...]) -> bool:
    return "namespaces" not in allowed_groups(caps, allow)


def restricts_sockets(caps: tuple[str, ...], allow: tuple[str, ...]) -> bool:
    return "sockets" not in allowed_groups(caps, allow)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class ConfineError(Exception):
    pass


_LOADED: list[ctypes.CDLL] = []


def load_library() -> ctypes.CDLL:
    """libseccomp, loaded once. A process about to enter a sandbox calls this first: once in
    the sandbox's mount namespace, the dynamic loader would read the sandbox's own files (its
    writable /etc/ld.so.cache), and load a library its root planted, unconfined."""
    if not _LOADED:
        _LOADED.append(_lib())
    return _LOADED[0]


def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
    except OSError as e:
        raise ConfineError(f"cannot load {LIBSECCOMP} (the host's libseccomp): {e}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str,
          cmps: tuple[tuple[int, int, int, int], ...] = ()) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == -1:  # no such call on this architecture, or unknown to this libseccomp
        return
    arr = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    if rc < 0:
        raise ConfineError(f"seccomp rule for {name}: {os.strerror(-rc)}")


def _add_rules(lib: ctypes.CDLL, ctx: int, caps: tuple[str, ...],
               allow: tuple[str, ...]) -> None:
    deny = act_errno(EPERM)
    for name in denied_calls(caps, allow):
        _rule(lib, ctx, deny, name)
    if restricts_namespaces(caps, allow):
        for bit in NS_FLAGS.values():  # one rule per flag: any of them set is refused
            _rule(lib, ctx, deny, "unshare", ((0, CMP_MASKED_EQ, bit, bit),))
            _rule(lib, ctx, deny, "clone", ((0, CMP_MASKED_EQ, bit, bit),))
        _rule(lib, ctx, act_errno(ENOSYS), "clone3")
    for request in (TIOCSTI, TIOCLINUX):
        _rule(lib, ctx, deny, "ioctl", ((1, CMP_MASKED_EQ, 0xFFFFFFFF, request),))
    if restricts_sockets(caps, allow):
        for family in FAMILIES.values():
            _rule(lib, ctx, deny, "socket", ((0, CMP_EQ, family, 0),))
        _rule(lib, ctx, deny, "socket", ((0, CMP_GE, AF_MAX, 0),))


def install_filter(caps: tuple[str, ...], allow: tuple[str, ...]) -> None:
    """Install the filter on this process (needs CAP_SYS_ADMIN: no NoNewPrivileges)."""
    lib = load_library()
    ctx = lib.seccomp_init(ACT_ALLOW)
    if not ctx:
        raise ConfineError("seccomp_init failed")
    try:
        lib.seccomp_attr_set(ctx, ATTR_ACT_BADARCH, ACT_KILL_PROCESS)
        lib.seccomp_attr_set(ctx, ATTR_CTL_NNP, 0)
        _add_rules(lib, ctx, caps, allow)
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise ConfineError(f"cannot install the seccomp filter: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def cap_mask(caps: tuple[str, ...]) -> int:
    return sum(1 << CAP_NUMBERS.index(c) for c in caps if c in CAP_NUMBERS)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NUMBERS) - 1


def drop_capabilities(keep: int) -> None:
    """Bounding set, then permitted/effective/inheritable, then ambient: only `keep` stays."""
    libc = ctypes.CDLL(None, use_errno=True)
    for bit in range(_last_cap() + 1):
        if not keep >> bit & 1 and libc.prctl(PR_CAPBSET_DROP, bit, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err != 22:  # EINVAL: a capability this kernel does not have
                raise ConfineError(f"cannot drop capability {bit}: {os.strerror(err)}")
    header = _CapHeader(CAPS_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise ConfineError(f"capget: {os.strerror(ctypes.get_errno())}")
    for i in range(2):
        part = keep >> (32 * i) & 0xFFFFFFFF
        data[i].effective &= part
        data[i].permitted &= part
        data[i].inheritable &= part
    if libc.capset(ctypes.byref(header), data) != 0:
        raise ConfineError(f"capset: {os.strerror(ctypes.get_errno())}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def apply(caps: tuple[str, ...], allow: tuple[str, ...]) -> None:
    """Confine this process: the filter first (installing it needs CAP_SYS_ADMIN), then the
    capabilities. Its next exec runs confined."""
    install_filter(caps, allow)
    drop_capabilities(cap_mask(caps))


def default_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ from its start (a write then fails with EPIPE or
    EFBIG instead), and an ignored signal stays ignored across exec: a command started from
    Python would not end at a closed pipe (`yes | head -1` would write on, each write an
    error). Given back their default before every exec into a sandbox, as subprocess's
    restore_signals does."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _split(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def main(argv: list[str]) -> int:
    """confine.py --caps A,B --allow X,Y -- COMMAND ARGS..."""
    caps: tuple[str, ...] = CONFINED_CAPS
    allow: tuple[str, ...] = ()
    args = list(argv)
    while args and args[0] != "--":
        opt = args.pop(0)
        if opt in ("--caps", "--allow") and args:
            value = _split(args.pop(0))
            caps, allow = (value, allow) if opt == "--caps" else (caps, value)
        else:
            print(f"virt-sandbox-service confine: unknown option {opt}", file=sys.stderr)
            return 125
    if not args[1:]:
        print("virt-sandbox-service confine: no command after --", file=sys.stderr)
        return 125
    try:
        apply(caps, allow)
    except ConfineError as e:
        print(f"virt-sandbox-service confine: {e}", file=sys.stderr)
        return 125
    command = args[1:]
    default_signals()
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"virt-sandbox-service: {command[0]}: {e.strerror}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
