"""--device: a host device node given to an LXC sandbox (libvirt's <hostdev mode=capabilities>).

A sandbox has none of the host's devices: libvirt gives an LXC container /dev/null, zero,
full, random, urandom, tty, console and ptmx, and its cgroup allows only those. A daemon that
needs one more (a VPN's /dev/net/tun, a UPS's serial port, a disk for a storage daemon) gets
it by name: libvirt makes the node at the same path inside and allows it in the sandbox's
device cgroup; nothing else of the host's /dev appears. Kept in the config as KIND:PATH (char
or block, read from the host at create), so the plan and the domain XML never read the host.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .errors import UserError

KINDS = ("char", "block")
# The nodes libvirt gives every LXC container (capneeds adds its /dev/pts and /dev/shm).
LXC_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
               "/dev/tty", "/dev/console", "/dev/ptmx")
_HINT = "give a device node under /dev, e.g. --device /dev/net/tun"


@dataclass(frozen=True)
class Device:
    kind: str  # "char" or "block"
    path: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse(text: str) -> Device:
    """A config's KIND:PATH."""
    kind, sep, path = text.partition(":")
    if not sep or kind not in KINDS or not path.startswith("/dev/"):
        raise UserError(f"device '{text}' in the config is not KIND:PATH (char or block)",
                        "was the config edited by hand? recreate it with --device")
    return Device(kind, path)


def check(path: str) -> Device:
    """A --device argument: a device node of this host, named by its own path."""
    if not path.startswith("/dev/") or os.path.normpath(path) != path:
        raise UserError(f"--device {path!r} is not a plain path under /dev", _HINT)
    if path in LXC_DEVICES:
        raise UserError(f"--device {path}: every sandbox has it already",
                        "leave it out")
    try:
        st = os.lstat(path)
    except OSError as e:
        raise UserError(f"--device {path}: {e.strerror.lower() if e.strerror else e}",
                        "is its driver loaded? (e.g. modprobe tun for /dev/net/tun)") from None
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"--device {path} is a link to {os.path.realpath(path)}",
                        "give the device node itself; the sandbox sees it at that path")
    if stat.S_ISCHR(st.st_mode):
        return Device("char", path)
    if stat.S_ISBLK(st.st_mode):
        return Device("block", path)
    raise UserError(f"--device {path} is not a device node", _HINT)


def check_all(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The --device arguments, checked, as the config keeps them (duplicates once)."""
    return tuple(dict.fromkeys(str(check(p)) for p in paths))
