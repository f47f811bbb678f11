"""--device: a host device node given to an LXC sandbox (libvirt's <hostdev mode=capabilities>).

A sandbox has none of the host's devices: libvirt gives an LXC container /dev/null, zero,
full, random, urandom, tty, console and ptmx, and its cgroup allows only those. A daemon that
needs one more (a VPN's /dev/net/tun, a UPS's serial port, a disk for a storage daemon) gets
it by name: libvirt makes the node at the same path inside and allows it in the sandbox's
device cgroup; nothing else of the host's /dev appears. Kept in the config as KIND:PATH (char
or block, read from the host at create), so the plan and the domain XML never read the host.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

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
    dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if stat.S_ISCHR(st.st_mode):
        if dev in RAW_MEMORY:
            raise UserError(f"--device {path} is the host's raw memory or I/O ports: a "
                            "sandbox's root could rewrite the running kernel through it",
                            "no daemon in a sandbox may have it")
        return Device("char", path)
    if stat.S_ISBLK(st.st_mode):
        if dev in host_in_use():
            raise UserError(f"--device {path} holds a file system the host has mounted (or "
                            "its swap): a sandbox's root could rewrite the host's files "
                            "under it", "give a disk or partition the host does not use")
        return Device("block", path)
    raise UserError(f"--device {path} is not a device node", _HINT)


# /dev/mem, /dev/kmem, /dev/port (devices.txt), whatever a node of them is named.
RAW_MEMORY = frozenset({(1, 1), (1, 2), (1, 4)})


def host_in_use(proc: str = "/proc", sys_dev: str = "/sys/dev/block") -> set[tuple[int, int]]:
    """The block devices under the host's mounted file systems and swap, and what each is
    built on: the disk a partition is on, a device-mapper or md device's members."""
    direct: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        for line in Path(proc, "self/mountinfo").read_text().splitlines():
            major, _, minor = line.split()[2].partition(":")
            if major != "0":  # 0: no device (tmpfs, overlay, proc, ...)
                direct.add((int(major), int(minor)))
    with contextlib.suppress(OSError):
        for line in Path(proc, "swaps").read_text().splitlines()[1:]:
            with contextlib.suppress(OSError, IndexError):
                rdev = os.stat(line.split()[0]).st_rdev
                direct.add((os.major(rdev), os.minor(rdev)))
    found: set[tuple[int, int]] = set()
    todo = list(direct)
    while todo:
        dev = todo.pop()
        if dev in found:
            continue
        found.add(dev)
        node = Path(sys_dev, f"{dev[0]}:{dev[1]}")
        under = [node / "slaves" / s for s in _names(node / "slaves")]
        if (node / "partition").exists():
            under.append(node.resolve().parent)
        todo += [d for d in (_devno(u) for u in under) if d is not None]
    return found


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _devno(node: Path) -> tuple[int, int] | None:
    """A /sys block device's major:minor, from its dev file."""
    try:
        major, _, minor = (node / "dev").read_text().strip().partition(":")
        return int(major), int(minor)
    except (OSError, ValueError):
        return None


def check_all(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The --device arguments, checked, as the config keeps them (duplicates once)."""
    return tuple(dict.fromkeys(str(check(p)) for p in paths))
