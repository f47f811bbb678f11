"""The host end of the sandbox's notify socket (sd_notify protocol, AF_UNIX datagrams)."""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

SOCKCREATE = "/proc/thread-self/attr/sockcreate"


def low_level_context(context: str) -> str | None:
    """`user:role:type:s0-s0:c0.c1023` -> `user:role:type:s0`: the same identity at the low
    end of its range. None for a context without a range (no MLS/MCS, nothing to lower)."""
    parts = context.split(":", 3)
    if len(parts) < 4 or "-" not in parts[3]:
        return None
    return ":".join([*parts[:3], parts[3].split("-", 1)[0]])


def current_context() -> str:
    """This thread's LSM label; "" where no LSM answers."""
    try:
        with open("/proc/thread-self/attr/current") as f:
            return f.read().strip("\0\n ")
    except OSError:
        return ""


@contextlib.contextmanager
def sockets_at_low_level() -> Iterator[None]:
    """Sockets made inside are labelled at the low end of this process's MLS range (s0).
    An administrator's shell runs at s0-s0:c0.c1023; under MCS a sandbox at s0:cA,cB may send
    only to a socket whose level it dominates, so one made at the full range refuses it
    (SELinux's mlsconstrain on unix sockets). Nothing changes where SELinux is off."""
    low = low_level_context(current_context())
    if low is None:
        yield
        return
    try:
        _write_attr(SOCKCREATE, low)
    except OSError:
        yield  # not ours to lower (the policy forbids setsockcreate): as before
        return
    try:
        yield
    finally:
        _write_attr(SOCKCREATE, "")  # back to the default: the process's own context


def _write_attr(path: str, value: str) -> None:
    """A write to an existing /proc attr file. Not open(path, "w"): its O_CREAT asks SELinux
    for `create` in procfs, which is refused (and logged), so the write never happened."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class NotifyListener:
    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists() or path.is_symlink():
            path.unlink()
        with sockets_at_low_level():
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # The socket path may be longer than sun_path allows; bind relative to its directory.
        cwd = os.open(".", os.O_RDONLY)
        try:
            os.chdir(path.parent)
            self.sock.bind(path.name)
        finally:
            os.fchdir(cwd)
            os.close(cwd)
        # The sandbox's services run as any user; they must be able to send.
        os.chmod(path, 0o777)

    def receive(self, timeout: float) -> dict[str, str] | None:
        """One message as KEY=VALUE pairs, or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(
                65536, socket.CMSG_SPACE(16 * array.array("i").itemsize))
        except TimeoutError:
            return None
        _close_passed_fds(ancdata)
        out = {}
        for line in data.decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _close_passed_fds(ancdata: list[tuple[int, int, bytes]]) -> None:
    """systemd-notify sends BARRIER=1 with a pipe fd and waits until it is closed."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)


def notify_host_manager(**states: str) -> None:
    """Tell the systemd that runs us (if any) our state: READY=1, STATUS=..."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    from pystemd.daemon import notify

    notify(False, *[f"{k.upper()}={v}" for k, v in states.items()])


def status(text: str) -> None:
    """STATUS= for the systemd that runs us: what `systemctl status` shows while a sandbox
    starts (a TCG boot takes seconds)."""
    notify_host_manager(status=text)
