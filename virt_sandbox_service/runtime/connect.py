"""connect: an interactive login shell in a running LXC sandbox, on a terminal of its own
(a KVM sandbox's is its login console: runtime/console.py).

The shell gets a pseudo-terminal as its controlling terminal (setsid + TIOCSCTTY), so job
control, Ctrl-C and Ctrl-Z work as on a console. The pty pair is allocated inside the
sandbox, in its own devpts instance (libvirt mounts a new one), and only the master side is
passed back to us over a socket (SCM_RIGHTS): a pty of the host's devpts works as a byte
stream but is no terminal the sandbox can name, so `tty` says "not a tty" and ttyname()
fails. We put the caller's terminal in raw mode, relay bytes both ways, forward window size
changes (SIGWINCH) and always restore the terminal.

Ctrl-] detaches (the shell is hung up); the shell exiting ends the connection. Neither touches
the sandbox itself, which keeps running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

import libvirt

from ..apply import libvirt as lv
from ..config import Driver, SandboxConfig
from ..confine import default_signals
from ..errors import HostError, UserError
from ..limits import Jail, jail
from . import common, lxc
from .enter import (
    confine_self,
    enter_lsm_label,
    init_pid,
    join_pids_cgroup,
    lsm_label,
    match_bounding_set,
    open_namespaces,
    prepare_confinement,
)
from .notify import sockets_at_low_level

ESCAPE = b"\x1d"  # Ctrl-], as in virsh console and telnet
FALLBACK_SHELL = "/bin/sh"
DETACH_WAIT = 2.0  # seconds to wait for a hung-up shell to go
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Login:
    """Who the shell runs as: the sandbox's root, from the sandbox's own /etc/passwd."""

    shell: str
    home: str
    note: str = ""  # why the passwd entry's shell was not used, if it was not


def parse_root_entry(passwd: str) -> tuple[str, str] | None:
    """(shell, home) of root (uid 0, preferring the name 'root') in passwd(5) text."""
    entries = [line.split(":") for line in passwd.splitlines()]
    root = [f for f in entries if len(f) >= 7 and f[2] == "0"]
    root.sort(key=lambda f: f[0] != "root")
    return (root[0][6].strip(), root[0][5].strip()) if root else None


def choose_login(passwd: str | None, usable: Callable[[str], bool]) -> Login:
    """Root's login shell if the sandbox can run it, else FALLBACK_SHELL (with a note)."""
    entry = parse_root_entry(passwd) if passwd is not None else None
    if entry is None:
        return Login(FALLBACK_SHELL, "/root", "the sandbox's /etc/passwd has no root entry")
    shell, home = entry
    home = home if home.startswith("/") else "/root"
    if shell.startswith("/") and usable(shell):
        return Login(shell, home)
    return Login(FALLBACK_SHELL, home, f"root's shell '{shell}' is not executable in the sandbox")


def shell_env(cfg: SandboxConfig, login: Login) -> dict[str, str]:
    env = lxc.sandbox_env(cfg)  # PATH, HOSTNAME, container=, TERM passed through
    env.update(HOME=login.home, SHELL=login.shell, USER="root", LOGNAME="root")
    return env


def connect(cfg: SandboxConfig, stdin: int = 0, stdout: int = 1) -> int:
    """Attach the caller's terminal to a login shell in the sandbox; the shell's exit status
    (0 after a detach)."""
    if not os.isatty(stdin):
        raise UserError("connect needs a terminal: standard input is not one",
                        f"from scripts use 'virt-sandbox-service execute {cfg.name} -- CMD'")
    if cfg.driver is Driver.KVM:
        from . import console  # a VM: its login console, not a shell we spawn

        return console.connect(cfg, stdin, stdout)
    dom = common.domain(lv.connect(cfg.uri), cfg)
    if not dom.isActive():
        raise UserError(f"sandbox '{cfg.name}' is not running",
                        f"start it: virt-sandbox-service start --detach {cfg.name}")
    try:
        init = init_pid(dom)
    except OSError as e:
        raise HostError(f"cannot find the init process of sandbox '{cfg.name}': {e}",
                        "run connect where libvirtd's PID namespace is visible (the host)") from e
    login = choose_login(_read_sandbox_passwd(init), lambda p: _executable_in(init, p))
    if login.note:
        print(f"virt-sandbox-service: {login.note}; using {login.shell}", file=sys.stderr)
    master, pid = _spawn(dom, init, login, shell_env(cfg, login), _winsize(stdin), jail(cfg))
    print(f"Connected to sandbox {cfg.name}: {login.shell} -l. Escape character is ^] "
          "(the sandbox keeps running).", file=sys.stderr, flush=True)
    try:
        with _raw(stdin), _forward_winch(stdin, master):
            detached = _relay(master, stdin, stdout, lambda: _exited(pid))
    finally:
        os.close(master)  # hangs up the shell if it still runs (a detach)
    if detached:
        print(f"\nDetached from sandbox {cfg.name}; it keeps running.", file=sys.stderr)
        _reap(pid, DETACH_WAIT)
        return 0
    return _reap(pid, None) or 0


def _read_sandbox_passwd(init: int) -> str | None:
    # Through the sandbox's root: a symlink it made resolves inside the sandbox, not on the host.
    try:
        with open(f"/proc/{init}/root/etc/passwd", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _executable_in(init: int, path: str) -> bool:
    full = f"/proc/{init}/root{path}"
    return os.path.isfile(full) and os.access(full, os.X_OK)


# --- the shell, inside ---------------------------------------------------------------------------


def _spawn(dom: libvirt.virDomain, init: int, login: Login, env: dict[str, str],
           winsize: bytes, confinement: Jail) -> tuple[int, int]:
    """Start the shell in the sandbox on a pty of its own; returns (pty master, child pid)."""

    fds = open_namespaces(dom)
    # The shell sends its pty's master back through this: made at s0, which a sandbox at its
    # MCS pair may write to (notify.sockets_at_low_level).
    with sockets_at_low_level():
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        ours.close()
        _child(dom, init, fds, theirs, login, env, winsize, confinement)
    for fd in fds:
        os.close(fd)
    theirs.close()
    with ours:
        _, got, _, _ = socket.recv_fds(ours, 16, 1)
    if not got:  # the child failed before it had a terminal, and said why on stderr
        status = _reap(pid, None)
        raise HostError(f"could not start a shell in sandbox '{dom.name()}' (exit {status})")
    return got[0], pid


def _child(dom: libvirt.virDomain, init: int, fds: list[int], sock: socket.socket,
           login: Login, env: dict[str, str], winsize: bytes, confinement: Jail) -> None:
    """In the forked child: enter the sandbox, fork into its PID namespace, run the shell."""
    try:
        import libvirt_lxc

        # The bounding set first, while /proc is still the host's: what the shell may ever
        # have is what the sandbox's init has (setns keeps our capabilities otherwise).
        match_bounding_set(init)
        libvirt_lxc.lxcEnterCGroup(dom, 0)
        join_pids_cgroup(init)
        prepare_confinement(confinement)
        label = lsm_label(init)
        _enter_namespaces(fds)
        pid = os.fork()  # a new PID namespace applies to children only
        if pid == 0:
            enter_lsm_label(label)
            confine_self(confinement)
            _shell(sock, login, env, winsize)
        sock.close()
        os._exit(_reap(pid, None) or 0)
    except BaseException as e:  # never return into the parent's code in a forked child
        print(f"virt-sandbox-service: cannot enter the sandbox: {e}", file=sys.stderr)
        os._exit(125)


def _enter_namespaces(fds: list[int]) -> None:
    # As runtime.lxc.execute does: in NS_ORDER, the user namespace only if the sandbox has one.
    by_type = {os.readlink(f"/proc/self/fd/{fd}").split(":")[0]: fd for fd in fds}
    for ns in lxc.NS_ORDER:
        if ns in by_type and _libc.setns(by_type[ns], 0) != 0:
            err = ctypes.get_errno()
            if ns == "user" and err == errno.EINVAL:
                continue  # no user namespace in use: it is ours already
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")


def _shell(sock: socket.socket, login: Login, env: dict[str, str], winsize: bytes) -> None:
    """Inside the sandbox: a pty from its devpts, the master to the host, the shell on the
    slave as its controlling terminal."""
    try:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
        socket.send_fds(sock, [b"pty"], [master])
        os.close(master)
        sock.close()
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
        try:
            os.chdir(login.home)
        except OSError:
            os.chdir("/")
    except BaseException as e:
        print(f"virt-sandbox-service: cannot set up a terminal in the sandbox: {e}",
              file=sys.stderr)
        os._exit(125)
    default_signals()
    try:
        os.execve(login.shell, [login.shell, "-l"], env)
    except OSError as e:
        print(f"virt-sandbox-service: {login.shell}: {e.strerror}", file=sys.stderr)
    os._exit(127)


def _reap(pid: int, timeout: float | None) -> int | None:
    """The exit status of child `pid` (128+N for signal N); None if it is still running after
    `timeout` seconds (None: wait for as long as it takes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


# --- the caller's terminal ------------------------------------------------------------------------


def _winsize(fd: int) -> bytes:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return struct.pack("HHHH", 24, 80, 0, 0)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _forward_winch(stdin: int, master: int) -> Iterator[None]:
    """A window size change of the caller's terminal reaches the shell's (and its SIGWINCH)."""
    def on_winch(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(stdin))

    old = signal.signal(signal.SIGWINCH, on_winch)
    try:
        on_winch(signal.SIGWINCH, None)  # a change between spawn and here
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def _relay(master: int, stdin: int, stdout: int, ended: Callable[[], bool],
           escape_char: bytes | None = ESCAPE) -> bool:
    """Copy bytes both ways until the shell's side closes (False) or the caller types the
    escape character or its terminal goes away (True: detached). `ended`: whether the shell
    is gone (asked when nothing moves); no `escape_char`: every byte is the shell's (run -t)."""
    os.set_blocking(master, False)
    pending = b""  # typed, not yet taken by the pty (never block on it: the shell may be
    # blocked writing output we have not read yet)
    while True:
        readers = [master] if pending else [master, stdin]
        writers = [master] if pending else []
        r, w, _ = select.select(readers, writers, [], 0.5)
        if master in r and not _copy_out(master, stdout):
            return False
        if stdin in r:
            try:
                data = os.read(stdin, 4096)
            except OSError:  # EIO: the caller's terminal hung up
                data = b""
            if not data:
                return True
            before, escape, _ = (data.partition(escape_char) if escape_char
                                 else (data, b"", b""))
            pending += before
            if escape:
                _flush(master, pending)
                return True
        if master in w:
            with contextlib.suppress(BlockingIOError):
                pending = pending[os.write(master, pending):]
        if not r and not w and ended():
            # The shell is gone but something it started still holds the terminal: end
            # here (closing the master hangs that up, as a logout would).
            return False


def _exited(pid: int) -> bool:
    """Whether child `pid` has ended, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _copy_out(master: int, stdout: int) -> bool:
    try:
        data = os.read(master, 65536)
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno != errno.EIO:  # EIO: every holder of the slave side closed it
            raise
        return False
    if not data:
        return False
    view = memoryview(data)
    while view:
        view = view[os.write(stdout, view):]
    return True


def _flush(master: int, pending: bytes) -> None:
    """What was typed before the escape character still goes to the shell, if it can."""
    deadline = time.monotonic() + 1
    while pending and time.monotonic() < deadline:
        try:
            pending = pending[os.write(master, pending):]
        except BlockingIOError:
            time.sleep(0.01)
