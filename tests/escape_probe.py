"""Escape attempts a root inside a sandbox might make, each proven without doing damage.

    /usr/bin/python3 -I -S escape_probe.py [OPTIONS] [ATTEMPT...]

Standard library only (raw system calls through ctypes), x86_64. It runs inside sandboxes and,
to show that each attempt would work where nothing stops it, on the host in a plain private
mount and PID namespace. One line per attempt, then a summary:

    NAME allowed [ERRNO]       it worked; with ERRNO: the call failed, but only after the
                               kernel's permission check had passed (e.g. EINVAL for a bad
                               reboot magic), which is the proof wanted
    NAME denied ERRNO|WHY      refused (EPERM from seccomp or a missing capability, EROFS, ...)
    NAME absent WHY            what it needs is not there (no such device, no such kernel
                               feature): neither allowed nor denied
    NAME error WHY             the probe itself failed
    SUMMARY allowed=N denied=N absent=N error=N

Nothing is damaged where an attempt succeeds: calls are made with an argument the kernel
rejects only after its permission check (a bad reboot magic, a clock tick of 1, a garbage
module, a nonexistent swap or accounting file, a remote address in page 0); files are opened
for writing and closed unwritten; mounts go on scratch directories made here and come off
again; a read-only mount made read-write is made read-only again; namespace changes happen in
a child that exits; PID 1 is never stopped (PTRACE_SEIZE from a child that exits detaches it).

The attacks on the sandbox's own mounts need targets: --in-sandbox takes the sandbox's (/ as
the read-only root, /proc/sys, /sys, and its /etc, /var or /tmp to unmount) and also rewrites
the sandbox's memory cgroup limit with the value it already has. Without --in-sandbox, on a
host, give the targets (a read-only bind of / and so on, in a private mount namespace); the
cgroup write is not made there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable

Outcome = tuple[str, str]  # (verdict, detail)

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

NR = {
    "clone": 56, "ptrace": 101, "syslog": 103, "capget": 125, "capset": 126,
    "pivot_root": 155, "adjtimex": 159, "acct": 163, "settimeofday": 164, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "set_mempolicy": 238,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320,
    "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
    "quotactl_fd": 443,
}

AT_FDCWD = -100
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND = 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
MOUNT_ATTR_RDONLY = 1
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUSER = 0x20000, 0x2000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
SIGCHLD = 17
PTRACE_SEIZE = 0x4206
TIOCSTI = 0x5412
AF_VSOCK = 40
CAP_SYS_ADMIN = 21
Q_XGETQUOTA_USR = 0x5803 << 8  # QCMD(Q_XGETQUOTA, USRQUOTA)
NOWHERE = "/nonexistent-vss-escape-probe"


def ename(err: int | None) -> str:
    return errno.errorcode.get(err or 0, f"errno{err}")


def allowed(past: int | None = None) -> Outcome:
    return ("allowed", ename(past) if past else "")


def denied(why: int | str | None) -> Outcome:
    return ("denied", why if isinstance(why, str) else ename(why))


def absent(why: str) -> Outcome:
    return ("absent", why)


def _arg(a: object) -> object:
    if isinstance(a, bool) or not isinstance(a, int | str | bytes | None):
        return a
    if a is None:
        return ctypes.c_void_p(None)
    if isinstance(a, str):
        return ctypes.c_char_p(os.fsencode(a))
    if isinstance(a, bytes):
        return ctypes.c_char_p(a)
    return ctypes.c_long(a)


def sc(name: str, *args: object) -> int:
    """A raw system call; OSError with its errno when it fails."""
    rc = libc.syscall(ctypes.c_long(NR[name]), *[_arg(a) for a in args])
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(rc)


def outcome(call: Callable[[], object], past: tuple[int, ...] = (),
            missing: tuple[int, ...] = (errno.ENOSYS,)) -> Outcome:
    """Run `call`: success is allowed; an errno in `past` (only possible once the permission
    check passed) is allowed too; one in `missing` means the kernel or the object lacks the
    feature; any other errno is a denial."""
    try:
        call()
    except OSError as e:
        if e.errno in past:
            return allowed(e.errno)
        if e.errno in missing:
            return absent(f"{ename(e.errno)} (not in this kernel or not here)")
        return denied(e.errno)
    return allowed()


def in_child(call: Callable[[], object]) -> None:
    """Run `call` in a forked child (namespace changes stay there); re-raise its errno."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            call()
        except OSError as e:
            code = e.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise OSError(code, os.strerror(code))


def closing(fd: int) -> None:
    os.close(fd)


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class Probe:
    def __init__(self, opts: dict[str, str | None], in_sandbox: bool) -> None:
        self.in_sandbox = in_sandbox
        default = (lambda p: p) if in_sandbox else (lambda p: None)
        self.root_ro = opts.get("--root-ro") or default("/")
        self.proc_sys = opts.get("--proc-sys") or default("/proc/sys")
        self.sys = opts.get("--sys") or default("/sys")
        self.etc_given = opts.get("--etc")
        self.handle = opts.get("--handle")
        self.scratch = tempfile.mkdtemp(prefix="vss-probe-", dir=opts.get("--scratch") or "/tmp")
        self.made: list[str] = []  # scratch entries, removed in reverse order

    # --- scratch ----------------------------------------------------------------------------

    def dir(self, name: str) -> str:
        path = os.path.join(self.scratch, name)
        os.mkdir(path)
        self.made.append(path)
        return path

    def file(self, name: str, data: bytes = b"") -> str:
        path = os.path.join(self.scratch, name)
        with open(path, "wb") as f:
            f.write(data)
        self.made.append(path)
        return path

    def node(self, name: str, mode: int, dev: int) -> str:
        path = os.path.join(self.scratch, name)
        os.mknod(path, mode, dev)
        self.made.append(path)
        return path

    def cleanup(self) -> None:
        """Unmount what an attempt left on a scratch directory, then remove each entry made
        here by name: never a recursive delete, which would follow a mount still there."""
        for path in reversed(self.made):
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    if os.path.ismount(path):
                        sc("umount2", path, MNT_DETACH)
                    os.rmdir(path)
                else:
                    os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)

    # --- the mount family -------------------------------------------------------------------

    def remount_rw(self, path: str | None, what: str) -> Outcome:
        """`mount -o remount,bind,rw PATH`: clear a read-only mount's flag (then set it back)."""
        if not path:
            return absent(f"no target given for {what}")
        flags = mount_flags(path)
        if not flags & MS_RDONLY:
            return ("allowed", "already-read-write")
        try:
            sc("mount", None, path, None, MS_REMOUNT | MS_BIND | (flags & ~MS_RDONLY), None)
        except OSError as e:
            return denied(e.errno)
        sc("mount", None, path, None, MS_REMOUNT | MS_BIND | flags, None)
        return allowed()

    def remount_root_rw(self) -> Outcome:
        return self.remount_rw(self.root_ro, "the read-only root (--root-ro)")

    def mount_setattr_root_rw(self) -> Outcome:
        """The new-API way to the same: mount_setattr(MOUNT_ATTR_RDONLY cleared)."""
        if not self.root_ro:
            return absent("no target given for the read-only root (--root-ro)")
        if not mount_flags(self.root_ro) & MS_RDONLY:
            return ("allowed", "already-read-write")

        def attr(set_: int, clr: int) -> ctypes.Array[ctypes.c_char]:
            return ctypes.create_string_buffer(struct.pack("4Q", set_, clr, 0, 0), 32)

        try:
            sc("mount_setattr", AT_FDCWD, self.root_ro, 0, attr(0, MOUNT_ATTR_RDONLY), 32)
        except OSError as e:
            return denied(e.errno)
        sc("mount_setattr", AT_FDCWD, self.root_ro, 0, attr(MOUNT_ATTR_RDONLY, 0), 32)
        return allowed()

    def remount_proc_sys_rw(self) -> Outcome:
        return self.remount_rw(self.proc_sys, "a read-only /proc/sys (--proc-sys)")

    def remount_sys_rw(self) -> Outcome:
        return self.remount_rw(self.sys, "a read-only /sys (--sys)")

    def mount_on_scratch(self, source: str | None, fstype: str | None, flags: int = 0,
                         data: str | None = None, name: str = "mnt") -> Outcome:
        target = self.dir(name)

        def call() -> None:
            sc("mount", source, target, fstype, flags, data)
            sc("umount2", target, MNT_DETACH)

        return outcome(call, missing=(errno.ENOSYS, errno.ENODEV))

    def bind_mount(self) -> Outcome:
        return self.mount_on_scratch(self.dir("bind-src"), None, MS_BIND, name="bind-dst")

    def mount_cgroup_v1(self) -> Outcome:
        """A new cgroup v1 hierarchy: the release_agent route out of a container."""
        return self.mount_on_scratch("vssprobe", "cgroup", 0, "none,name=vssprobe", "cgroup")

    def mount_proc(self) -> Outcome:
        return self.mount_on_scratch("proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                                     name="proc")

    def mount_sysfs(self) -> Outcome:
        return self.mount_on_scratch("sysfs", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                                     name="sysfs")

    def mount_tmpfs(self) -> Outcome:
        return self.mount_on_scratch("tmpfs", "tmpfs", 0, "size=64k", "tmpfs")

    def pivot_root(self) -> Outcome:
        """pivot_root onto a directory that is no mount point: EINVAL (or EBUSY, where it is
        on the root's mount), but only once the permission check has passed."""
        new = self.dir("pivot")
        return outcome(lambda: sc("pivot_root", new, new), past=(errno.EINVAL, errno.EBUSY))

    def fsopen_tmpfs(self) -> Outcome:
        return outcome(lambda: closing(sc("fsopen", "tmpfs", 1)))

    def fsmount_tmpfs(self) -> Outcome:
        """fsopen, create, fsmount: a detached tmpfs mount, dropped with its descriptor. Where
        fsopen is refused, fsmount on no descriptor: EBADF only past its permission check."""
        try:
            fs = sc("fsopen", "tmpfs", 1)
        except OSError:
            return outcome(lambda: sc("fsmount", -1, 1, 0), past=(errno.EBADF,))
        def call() -> None:
            sc("fsconfig", fs, 6, None, None, 0)  # FSCONFIG_CMD_CREATE
            closing(sc("fsmount", fs, 1, 0))

        try:
            return outcome(call)
        finally:
            os.close(fs)

    def fspick_root(self) -> Outcome:
        """A reconfiguration context for the root's superblock (closed unused)."""
        return outcome(lambda: closing(sc("fspick", AT_FDCWD, "/", 1)))

    def open_tree(self) -> Outcome:
        src = self.dir("tree-src")
        return outcome(lambda: closing(sc("open_tree", AT_FDCWD, src, 1 | os.O_CLOEXEC)))

    def move_mount(self) -> Outcome:
        """Attach a cloned tree with move_mount (then detach it); where open_tree is refused,
        move_mount from no descriptor: EBADF only past its permission check."""
        src, dst = self.dir("move-src"), self.dir("move-dst")
        try:
            tree = sc("open_tree", AT_FDCWD, src, 1 | os.O_CLOEXEC)
        except OSError:
            tree = -1
        try:
            def call() -> None:
                sc("move_mount", tree, "", AT_FDCWD, dst, 4)  # MOVE_MOUNT_F_EMPTY_PATH
                sc("umount2", dst, MNT_DETACH)

            return outcome(call, past=(errno.EBADF,))
        finally:
            if tree >= 0:
                os.close(tree)

    def umount_private_mount(self) -> Outcome:
        """Unmount one of the sandbox's own mounts to uncover the host's tree below it: its
        /etc (an overlay) where that is a mount, else its /var, else its /tmp."""
        if self.etc_given:
            targets: tuple[str, ...] = (self.etc_given,)
        elif self.in_sandbox:
            targets = ("/etc", "/var", "/tmp")
        else:
            return absent("no target given for a mount to remove (--etc)")
        target = next((t for t in targets if os.path.ismount(t)), None)
        if target is None:
            return absent(f"none of {', '.join(targets)} is a mount point")
        return outcome(lambda: sc("umount2", target, MNT_DETACH))

    # --- reaching host files and devices ------------------------------------------------------

    def open_by_handle(self, handle: bytes) -> int:
        """open_by_handle_at against the root's file system: the "shocker" call, which reaches
        any inode of a mounted file system by number, whatever is mounted over its path."""
        mount_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = sc("open_by_handle_at", mount_fd, ctypes.create_string_buffer(handle),
                    os.O_RDONLY)
        finally:
            os.close(mount_fd)
        try:
            return 0 if stat.S_ISDIR(os.fstat(fd).st_mode) else len(os.read(fd, 4096))
        finally:
            os.close(fd)

    def open_by_handle_at(self) -> Outcome:
        try:
            handle = name_to_handle("/")
        except OSError as e:
            return absent(f"name_to_handle_at: {ename(e.errno)}")
        return outcome(lambda: self.open_by_handle(handle))

    def open_by_handle_given(self) -> Outcome:
        """--handle TYPE:HEX (from handle_of() on the host): a file this context must not reach
        by any path."""
        if not self.handle:
            return absent("no --handle given")
        kind, _, raw = self.handle.partition(":")
        data = bytes.fromhex(raw)
        try:
            n = self.open_by_handle(struct.pack("Ii", len(data), int(kind)) + data)
        except OSError as e:
            return denied(e.errno)
        return ("allowed", f"read-{n}-bytes")

    def open_for_write(self, *paths: str) -> Outcome:
        path = next((p for p in paths if os.path.exists(p)), None)
        if path is None:
            return absent(f"no {' or '.join(paths)}")
        return outcome(lambda: closing(os.open(path, os.O_WRONLY | os.O_CLOEXEC)))

    def open_sysrq_trigger_write(self) -> Outcome:
        """Opened for writing and closed: one written byte would reboot or crash the host."""
        return self.open_for_write("/proc/sysrq-trigger")

    def open_core_pattern_write(self) -> Outcome:
        """core_pattern runs a program as the host's root on the next crash (opened only)."""
        return self.open_for_write("/proc/sys/kernel/core_pattern")

    def open_sysfs_write(self) -> Outcome:
        return self.open_for_write("/sys/kernel/rcu_expedited",
                                   "/sys/kernel/mm/transparent_hugepage/enabled",
                                   "/sys/kernel/uevent_helper")

    def open_proc_kmsg(self) -> Outcome:
        """The host's kernel log, opened and closed unread (a read would take the messages
        from the host's own reader)."""
        if not os.path.exists("/proc/kmsg"):
            return absent("no /proc/kmsg")
        return outcome(lambda: closing(os.open("/proc/kmsg", os.O_RDONLY | os.O_NONBLOCK)))

    def read_kcore(self) -> Outcome:
        if not os.path.exists("/proc/kcore"):
            return absent("no /proc/kcore in this kernel")
        return outcome(lambda: read1("/proc/kcore"))

    def device(self, paths: tuple[str, ...], mode: int, dev: int | None) -> Outcome:
        """Read a byte of the first device node there is; with none, make one (mknod in the
        scratch directory: what a root with CAP_MKNOD could do wherever its /dev lacks it)."""
        path = next((p for p in paths if os.path.exists(p)), None)
        if path is None:
            if dev is None:
                return absent("no device to try")
            try:
                path = self.node(f"dev{len(self.made)}", mode | 0o600, dev)
            except OSError as e:
                return denied(e.errno)
        return outcome(lambda: read1(path, 0), missing=(errno.ENXIO, errno.ENODEV))

    def open_dev_mem(self) -> Outcome:
        return self.device(("/dev/mem",), 0o020000, os.makedev(1, 1))

    def read_raw_disk(self) -> Outcome:
        """The block device of the host's root file system (read one byte)."""
        root = os.stat("/").st_dev
        dev = root if os.major(root) else None
        return self.device(("/dev/sda", "/dev/vda", "/dev/xvda", "/dev/nvme0n1"), 0o060000,
                           dev)

    def mknod_block_device(self) -> Outcome:
        def call() -> None:
            self.node("blk", 0o060600, os.makedev(7, 0))

        return outcome(call)

    # --- other processes ------------------------------------------------------------------------

    def ptrace_seize_pid1(self) -> Outcome:
        """PTRACE_SEIZE (no stop) from a child that exits at once, which detaches it."""
        return outcome(lambda: in_child(lambda: sc("ptrace", PTRACE_SEIZE, 1, 0, 0)))

    def process_vm(self, call: str) -> Outcome:
        """process_vm_readv/writev of PID 1 at address 0x10, in page 0, which nothing can map
        (mmap_min_addr): EFAULT once the permission check has passed."""
        low = read_text("/proc/sys/vm/mmap_min_addr")
        if low is None or int(low) < 4096:
            return absent("page 0 may be mapped here (mmap_min_addr)")
        local = ctypes.create_string_buffer(1)
        liov = (ctypes.c_void_p * 2)(ctypes.cast(local, ctypes.c_void_p), 1)
        riov = (ctypes.c_void_p * 2)(0x10, 1)
        return outcome(lambda: sc(call, 1, liov, 1, riov, 1, 0), past=(errno.EFAULT,))

    def process_vm_readv_pid1(self) -> Outcome:
        return self.process_vm("process_vm_readv")

    def process_vm_writev_pid1(self) -> Outcome:
        return self.process_vm("process_vm_writev")

    def kcmp_pid1(self) -> Outcome:
        return outcome(lambda: sc("kcmp", os.getpid(), 1, 1, 0, 0))  # KCMP_VM

    def pidfd_getfd_pid1(self) -> Outcome:
        """A duplicate of PID 1's descriptor 0 (closed); EBADF if it has none."""
        try:
            pidfd = sc("pidfd_open", 1, 0)
        except OSError as e:
            return denied(e.errno)
        try:
            return outcome(lambda: closing(sc("pidfd_getfd", pidfd, 0, 0)),
                           past=(errno.EBADF,))
        finally:
            os.close(pidfd)

    def setns_pid1_mnt(self) -> Outcome:
        def call() -> None:
            sc("setns", os.open("/proc/1/ns/mnt", os.O_RDONLY), CLONE_NEWNS)

        return outcome(lambda: in_child(call))

    # --- namespaces -----------------------------------------------------------------------------

    def unshare(self, flag: int) -> Outcome:
        return outcome(lambda: in_child(lambda: sc("unshare", flag)))

    def unshare_user(self) -> Outcome:
        return self.unshare(CLONE_NEWUSER)

    def unshare_mount(self) -> Outcome:
        return self.unshare(CLONE_NEWNS)

    def unshare_pid(self) -> Outcome:
        return self.unshare(CLONE_NEWPID)

    def unshare_net(self) -> Outcome:
        return self.unshare(CLONE_NEWNET)

    def unshare_cgroup(self) -> Outcome:
        return self.unshare(CLONE_NEWCGROUP)

    def clone_newpid(self) -> Outcome:
        """clone(CLONE_NEWPID) itself; the child exits at once."""
        def call() -> None:
            pid = sc("clone", CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0)
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        return outcome(call)

    def clone3_newns(self) -> Outcome:
        """clone3 with a namespace flag (a filter cannot read clone3's flags: ENOSYS for all
        of it is a denial; every kernel this runs on has clone3)."""
        args = ctypes.create_string_buffer(struct.pack("8Q", CLONE_NEWNS, 0, 0, 0, SIGCHLD,
                                                       0, 0, 0), 64)

        def call() -> None:
            pid = sc("clone3", args, 64)
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        return outcome(call, missing=())

    # --- kernel facilities ----------------------------------------------------------------------

    def keyctl_join_session(self) -> Outcome:
        """A new anonymous session keyring for this process (the keyring is not namespaced)."""
        return outcome(lambda: sc("keyctl", 1, None))  # KEYCTL_JOIN_SESSION_KEYRING

    def add_key(self) -> Outcome:
        return outcome(lambda: sc("add_key", "user", "vssprobe", b"x", 1, -2))  # process ring

    def request_key(self) -> Outcome:
        return outcome(lambda: sc("request_key", "user", "vssprobe-none", None, -2),
                       past=(errno.ENOKEY,))

    def init_module(self) -> Outcome:
        garbage = ctypes.create_string_buffer(b"\0vssprobe" * 8)
        return outcome(lambda: sc("init_module", garbage, len(garbage), ""),
                       past=(errno.ENOEXEC, errno.EINVAL, errno.EFAULT, errno.EBADMSG))

    def finit_module(self) -> Outcome:
        path = self.file("module.ko", b"\0vssprobe" * 8)
        fd = os.open(path, os.O_RDONLY)
        try:
            return outcome(lambda: sc("finit_module", fd, "", 0),
                           past=(errno.ENOEXEC, errno.EINVAL, errno.EFAULT, errno.EBADMSG))
        finally:
            os.close(fd)

    def delete_module(self) -> Outcome:
        return outcome(lambda: sc("delete_module", "vssprobe_none", os.O_NONBLOCK),
                       past=(errno.ENOENT,))

    def kexec_load(self) -> Outcome:
        """Unknown flags and too many segments: EINVAL past the permission check (never zero
        segments, which would unload a loaded crash kernel)."""
        return outcome(lambda: sc("kexec_load", 0, 17, None, 0x8000), past=(errno.EINVAL,))

    def kexec_file_load(self) -> Outcome:
        return outcome(lambda: sc("kexec_file_load", -1, -1, 0, None, 0x80000000),
                       past=(errno.EINVAL, errno.EBADF))

    def reboot_bad_magic(self) -> Outcome:
        return outcome(lambda: sc("reboot", 0, 0, 0, None), past=(errno.EINVAL,))

    def settimeofday(self) -> Outcome:
        """No time, and a time zone 1000 hours west: EINVAL past the permission check."""
        tz = ctypes.create_string_buffer(struct.pack("ii", 60000, 0))
        return outcome(lambda: sc("settimeofday", None, tz), past=(errno.EINVAL,))

    def adjtimex(self) -> Outcome:
        return outcome(lambda: sc("adjtimex", timex_bad_tick()), past=(errno.EINVAL,))

    def clock_adjtime(self) -> Outcome:
        return outcome(lambda: sc("clock_adjtime", 0, timex_bad_tick()),
                       past=(errno.EINVAL,))

    def bpf_map_create(self) -> Outcome:
        attr = ctypes.create_string_buffer(struct.pack("4I", 2, 4, 4, 1), 128)  # ARRAY 4/4/1
        return outcome(lambda: closing(sc("bpf", 0, attr, 128)))

    def bpf_prog_load(self) -> Outcome:
        """A socket filter "r0 = 0; exit", loaded and dropped."""
        insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
        lic = ctypes.create_string_buffer(b"GPL")
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))
        return outcome(lambda: closing(sc("bpf", 5, attr, 128)))

    def perf_event_open(self) -> Outcome:
        """A system-wide software counter on CPU 0 (what perf_event_paranoid keeps from
        unprivileged users), closed unread."""
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("IIQ", attr, 0, 1, 128, 9)  # PERF_TYPE_SOFTWARE, size, SW_DUMMY
        return outcome(lambda: closing(sc("perf_event_open", attr, -1, 0, -1, 8)))

    def userfaultfd(self) -> Outcome:
        return outcome(lambda: closing(sc("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK)))

    def io_uring_setup(self) -> Outcome:
        params = ctypes.create_string_buffer(120)
        return outcome(lambda: closing(sc("io_uring_setup", 1, params)))

    def fanotify_init(self) -> Outcome:
        """A content-class fanotify group (what could watch and hold the host's file
        accesses once marked), closed unmarked."""
        return outcome(lambda: closing(sc("fanotify_init", 0x08 | 0x01, os.O_RDONLY)))

    def swapon(self) -> Outcome:
        return outcome(lambda: sc("swapon", NOWHERE, 0), past=(errno.ENOENT,))

    def swapoff(self) -> Outcome:
        return outcome(lambda: sc("swapoff", NOWHERE), past=(errno.ENOENT,))

    def acct(self) -> Outcome:
        """acct on a file that is not there (acct(NULL) would switch the host's off)."""
        return outcome(lambda: sc("acct", NOWHERE), past=(errno.ENOENT,))

    def iopl(self) -> Outcome:
        def call() -> None:
            sc("iopl", 3)
            sc("iopl", 0)

        return outcome(call)

    def ioperm(self) -> Outcome:
        def call() -> None:
            sc("ioperm", 0x80, 1, 1)
            sc("ioperm", 0x80, 1, 0)

        return outcome(call)

    def syslog(self) -> Outcome:
        """SYSLOG_ACTION_SIZE_UNREAD: a privileged action that only counts."""
        return outcome(lambda: sc("syslog", 9, None, 0))

    def quotactl_fd(self) -> Outcome:
        """Q_XGETQUOTA (a read, so no read-write mount needed) of a user that is not us, on
        the root's file system: ESRCH with quotas off, past the permission check."""
        buf = ctypes.create_string_buffer(128)
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            return outcome(lambda: sc("quotactl_fd", fd, Q_XGETQUOTA_USR, 54321, buf),
                           past=(errno.ESRCH,))
        finally:
            os.close(fd)

    def quotactl(self) -> Outcome:
        """The same through the device node of the root's file system."""
        root = os.stat("/").st_dev
        special = next((p for p in block_nodes() if os.stat(p).st_rdev == root), NOWHERE)
        buf = ctypes.create_string_buffer(128)
        return outcome(lambda: sc("quotactl", Q_XGETQUOTA_USR, special, 54321, buf),
                       past=(errno.ESRCH,),
                       missing=(errno.ENOSYS, errno.ENOENT, errno.ENOTBLK, errno.ENODEV))

    def set_mempolicy(self) -> Outcome:
        return outcome(lambda: sc("set_mempolicy", 0, None, 0))  # MPOL_DEFAULT: no change

    # --- terminals, sockets, capabilities, cgroups -------------------------------------------

    def tiocsti_pty(self) -> Outcome:
        """Push a byte into the input of a new pty of our own (not our controlling tty)."""
        try:
            master, slave = os.openpty()
        except OSError as e:
            return absent(f"openpty: {ename(e.errno)}")
        try:
            return outcome(lambda: fcntl.ioctl(slave, TIOCSTI, b"x"))
        finally:
            os.close(master)
            os.close(slave)

    def socket_vsock(self) -> Outcome:
        """AF_VSOCK is not network-namespaced: it reaches the host's (or hypervisor's) vsock
        services."""
        # The kernel has vsock where its misc device is registered (sysfs shows it in a
        # sandbox too): EAFNOSUPPORT then comes from a filter (systemd's
        # RestrictAddressFamilies=), a denial.
        has_vsock = os.path.exists("/sys/class/misc/vsock")
        return outcome(lambda: socket.socket(AF_VSOCK, socket.SOCK_STREAM).close(),
                       missing=() if has_vsock else (errno.EAFNOSUPPORT,))

    def capset_sys_admin(self) -> Outcome:
        """Put CAP_SYS_ADMIN into the permitted and effective sets."""
        header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0))
        data = ctypes.create_string_buffer(24)
        sc("capget", header, data)
        eff, prm, inh = struct.unpack_from("3I", data, 0)
        struct.pack_into("3I", data, 0, eff | 1 << CAP_SYS_ADMIN, prm | 1 << CAP_SYS_ADMIN, inh)
        return outcome(lambda: sc("capset", header, data))

    def file_caps_sys_admin(self) -> Outcome:
        """Give a copy of cat the file capability CAP_SYS_ADMIN (effective), run it, and look
        at what it holds: the bounding set must keep it out (exec fails with EPERM)."""
        cat = shutil.which("cat", path="/usr/bin:/bin")
        if cat is None:
            return absent("no cat")
        # Where file capabilities count: not on a nosuid mount (a sandbox's /tmp is one).
        where = next((d for d in (self.scratch, "/var/tmp") if os.access(d, os.W_OK)
                      and not os.statvfs(d).f_flag & os.ST_NOSUID), None)
        if where is None:
            return denied("nosuid-everywhere")
        path = os.path.join(where, f"vss-probe-capcat-{os.getpid()}")
        self.made.append(path)
        shutil.copyfile(cat, path)
        os.chmod(path, 0o755)
        blob = struct.pack("<5I", 0x02000000 | 1, 1 << CAP_SYS_ADMIN, 0, 0, 0)  # v2, effective
        try:
            os.setxattr(path, "security.capability", blob)
        except OSError as e:
            return denied(e.errno)
        try:
            out = subprocess.run([path, "/proc/self/status"], capture_output=True, text=True,
                                 check=False).stdout
        except OSError as e:
            return denied(e.errno)
        eff = next((int(line.split()[1], 16) for line in out.splitlines()
                    if line.startswith("CapEff:")), 0)
        return allowed() if eff >> CAP_SYS_ADMIN & 1 else denied("no-CAP_SYS_ADMIN")

    def cgroup_memory_write(self) -> Outcome:
        """Write the sandbox's own memory limit (the value it already has). Only inside a
        sandbox: on a host this would be the host's cgroups."""
        if not self.in_sandbox:
            return absent("not attempted outside a sandbox")
        own = next((line.split(":", 2)[2] for line in (read_text("/proc/self/cgroup") or "")
                    .splitlines() if line.startswith("0::")), "/").strip()
        # The sandbox's own limit: on cgroup v2 its cgroup namespace's root. A unit's own
        # cgroup below it is systemd's delegated subtree (writable by design, and bounded by
        # the root's limit), so it is tried last.
        limits = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max",
                  f"/sys/fs/cgroup{own.rstrip('/')}/memory.max")
        found = next(((p, v) for p in limits if (v := read_text(p)) is not None), None)
        if found is None:
            return absent("no memory cgroup visible")
        return outcome(lambda: write_back(*found))


def mount_flags(path: str) -> int:
    """The mount's flags as mount(2) takes them (statvfs's ST_* are the same bits)."""
    keep = (os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME
            | os.ST_NODIRATIME | os.ST_RELATIME)
    flags = os.statvfs(path).f_flag & keep
    return (flags & ~os.ST_RELATIME) | (MS_RELATIME if flags & os.ST_RELATIME else 0)


def timex_bad_tick() -> ctypes.Array[ctypes.c_char]:
    """A struct timex asking for a clock tick of 1 (more than 10% off: EINVAL once the
    permission check has passed)."""
    buf = ctypes.create_string_buffer(256)
    struct.pack_into("I", buf, 0, 0x4000)  # modes = ADJ_TICK
    struct.pack_into("q", buf, 88, 1)  # tick, after modes and ten other fields
    return buf


def read1(path: str, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


def write_back(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def block_nodes() -> list[str]:
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    out = []
    for name in sorted(names):
        path = f"/dev/{name}"
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                out.append(path)
        except OSError:
            continue
    return out


def name_to_handle(path: str) -> bytes:
    """A file's struct file_handle (name_to_handle_at): size, type, the handle's bytes."""
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("I", buf, 0, 128)
    mount_id = ctypes.c_int()
    sc("name_to_handle_at", AT_FDCWD, path, buf, ctypes.byref(mount_id), 0)
    size = struct.unpack_from("I", buf, 0)[0]
    return buf.raw[:8 + size]


def handle_of(path: str) -> str:
    """TYPE:HEX of a file's handle, as --handle takes it."""
    handle = name_to_handle(path)
    return f"{struct.unpack_from('i', handle, 4)[0]}:{handle[8:].hex()}"


# The attempts, in the order they run: the one that would change the sandbox for good
# (unmounting one of its mounts) last.
ATTEMPTS: dict[str, Callable[[Probe], Outcome]] = {
    "remount-root-rw": Probe.remount_root_rw,
    "mount-setattr-root-rw": Probe.mount_setattr_root_rw,
    "remount-proc-sys-rw": Probe.remount_proc_sys_rw,
    "remount-sys-rw": Probe.remount_sys_rw,
    "bind-mount": Probe.bind_mount,
    "mount-cgroup-v1": Probe.mount_cgroup_v1,
    "mount-proc": Probe.mount_proc,
    "mount-sysfs": Probe.mount_sysfs,
    "mount-tmpfs": Probe.mount_tmpfs,
    "pivot-root": Probe.pivot_root,
    "fsopen-tmpfs": Probe.fsopen_tmpfs,
    "fsmount-tmpfs": Probe.fsmount_tmpfs,
    "fspick-root": Probe.fspick_root,
    "open-tree": Probe.open_tree,
    "move-mount": Probe.move_mount,
    "open-by-handle-at": Probe.open_by_handle_at,
    "open-by-handle-given": Probe.open_by_handle_given,
    "open-sysrq-trigger-write": Probe.open_sysrq_trigger_write,
    "open-core-pattern-write": Probe.open_core_pattern_write,
    "open-sysfs-write": Probe.open_sysfs_write,
    "open-proc-kmsg": Probe.open_proc_kmsg,
    "read-kcore": Probe.read_kcore,
    "open-dev-mem": Probe.open_dev_mem,
    "read-raw-disk": Probe.read_raw_disk,
    "mknod-block-device": Probe.mknod_block_device,
    "ptrace-seize-pid1": Probe.ptrace_seize_pid1,
    "process-vm-readv-pid1": Probe.process_vm_readv_pid1,
    "process-vm-writev-pid1": Probe.process_vm_writev_pid1,
    "kcmp-pid1": Probe.kcmp_pid1,
    "pidfd-getfd-pid1": Probe.pidfd_getfd_pid1,
    "setns-pid1-mnt": Probe.setns_pid1_mnt,
    "unshare-user": Probe.unshare_user,
    "unshare-mount": Probe.unshare_mount,
    "unshare-pid": Probe.unshare_pid,
    "unshare-net": Probe.unshare_net,
    "unshare-cgroup": Probe.unshare_cgroup,
    "clone-newpid": Probe.clone_newpid,
    "clone3-newns": Probe.clone3_newns,
    "keyctl-join-session": Probe.keyctl_join_session,
    "add-key": Probe.add_key,
    "request-key": Probe.request_key,
    "init-module": Probe.init_module,
    "finit-module": Probe.finit_module,
    "delete-module": Probe.delete_module,
    "kexec-load": Probe.kexec_load,
    "kexec-file-load": Probe.kexec_file_load,
    "reboot-bad-magic": Probe.reboot_bad_magic,
    "settimeofday": Probe.settimeofday,
    "adjtimex": Probe.adjtimex,
    "clock-adjtime": Probe.clock_adjtime,
    "bpf-map-create": Probe.bpf_map_create,
    "bpf-prog-load": Probe.bpf_prog_load,
    "perf-event-open": Probe.perf_event_open,
    "userfaultfd": Probe.userfaultfd,
    "io-uring-setup": Probe.io_uring_setup,
    "fanotify-init": Probe.fanotify_init,
    "swapon": Probe.swapon,
    "swapoff": Probe.swapoff,
    "acct": Probe.acct,
    "iopl": Probe.iopl,
    "ioperm": Probe.ioperm,
    "syslog": Probe.syslog,
    "quotactl": Probe.quotactl,
    "quotactl-fd": Probe.quotactl_fd,
    "set-mempolicy": Probe.set_mempolicy,
    "tiocsti-pty": Probe.tiocsti_pty,
    "socket-vsock": Probe.socket_vsock,
    "capset-sys-admin": Probe.capset_sys_admin,
    "file-caps-sys-admin": Probe.file_caps_sys_admin,
    "cgroup-memory-write": Probe.cgroup_memory_write,
    "umount-private-mount": Probe.umount_private_mount,
}
OPTIONS = ("--root-ro", "--proc-sys", "--sys", "--etc", "--scratch", "--handle")


def parse(argv: list[str]) -> tuple[dict[str, str | None], bool, list[str]]:
    opts: dict[str, str | None] = {}
    flags, names = set(), []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in OPTIONS and args:
            opts[arg] = args.pop(0)
        elif arg in ("--in-sandbox", "--list"):
            flags.add(arg)
        elif arg in ATTEMPTS:
            names.append(arg)
        else:
            raise SystemExit(f"escape_probe: unknown argument {arg!r}")
    if "--list" in flags:
        print("\n".join(ATTEMPTS))
        raise SystemExit(0)
    return opts, "--in-sandbox" in flags, names or list(ATTEMPTS)


def main(argv: list[str]) -> int:
    if os.uname().machine != "x86_64":
        print("escape_probe: x86_64 only (system call numbers)", file=sys.stderr)
        return 2
    opts, in_sandbox, names = parse(argv)
    probe = Probe(opts, in_sandbox)
    counts = dict.fromkeys(("allowed", "denied", "absent", "error"), 0)
    try:
        for name in names:
            try:
                verdict, detail = ATTEMPTS[name](probe)
            except Exception as e:  # the probe's own failure, shown as such
                verdict, detail = "error", f"{type(e).__name__}:{e}".replace(" ", "_")
            counts[verdict] += 1
            print(f"{name} {verdict} {detail}".rstrip(), flush=True)
    finally:
        probe.cleanup()
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
