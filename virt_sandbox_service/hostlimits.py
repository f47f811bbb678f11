"""Kernel limits every sandbox draws on together: inotify instances.

A sandbox's processes are the host's root (without --userns), and the kernel counts inotify
instances per user: fs.inotify.max_user_instances (128 by default) is shared by root's own
daemons and by every sandbox. A unit sandbox's systemd takes five (its unit-file, cgroup and
path watches) and its D-Bus one, measured on Debian 12's systemd 252. With 128, about 20 unit
sandboxes boot; the next one's systemd cannot watch what it needs, and stalls or exits while
starting, with nothing in its journal saying why. `doctor` shows the room left and
`doctor --fix` raises the limit; a start that fails where the room is gone says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
PER_UNIT_SANDBOX = 6  # systemd 5 + dbus-daemon 1 (systemd 252)
# What doctor --fix sets (where the limit is lower): room for about 170 unit sandboxes beside
# the host's own use, as container hosts commonly configure it (LXD/Incus: 1024).
FIX_TO = 1024
SYSCTL_FILE = Path("/etc/sysctl.d/60-virt-sandbox-service.conf")


@dataclass(frozen=True)
class InotifyUse:
    limit: int
    used: int  # by processes whose real user is root

    @property
    def room(self) -> int:
        """Unit sandboxes that can still start."""
        return max(self.limit - self.used, 0) // PER_UNIT_SANDBOX

    def describe(self) -> str:
        return (f"fs.inotify.max_user_instances is {self.limit}, {self.used} in use by root: "
                f"room for about {self.room} more unit sandbox(es) (each sandbox's systemd "
                f"and D-Bus take about {PER_UNIT_SANDBOX})")


def inotify_use(proc: Path = Path("/proc")) -> InotifyUse:
    """The limit and root's instances now: each process's inotify descriptors (an instance
    shared by a fork is counted twice: an upper bound)."""
    limit = int((proc / "sys/fs/inotify/max_user_instances").read_text())
    used = 0
    for pid in (p for p in proc.iterdir() if p.name.isdigit()):
        try:
            if _real_uid(pid) != 0:
                continue
            used += sum(1 for fd in (pid / "fd").iterdir()
                        if os.readlink(fd) == "anon_inode:inotify")
        except OSError:  # gone meanwhile, or a descriptor closed under us
            continue
    return InotifyUse(limit, used)


def _real_uid(pid: Path) -> int:
    for line in (pid / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return -1


def shortage_hint(proc: Path = Path("/proc")) -> str | None:
    """A start's hint where the room is gone (None where it is not, or cannot be read)."""
    try:
        use = inotify_use(proc)
    except (OSError, ValueError):
        return None
    if use.room >= 1:
        return None
    return (f"{use.describe()}; raise it: sysctl -w fs.inotify.max_user_instances="
            f"{max(FIX_TO, use.limit * 2)} (or 'virt-sandbox-service doctor --fix', which "
            "also keeps it across reboots)")


def raise_limit(limit: int = FIX_TO) -> list[str]:
    """doctor --fix: the limit up to `limit` now, and kept in sysctl.d (never lowered)."""
    done = []
    current = int(MAX_INSTANCES.read_text())
    if current < limit:
        MAX_INSTANCES.write_text(f"{limit}\n")
        done.append(f"fs.inotify.max_user_instances {current} -> {limit}")
    line = f"fs.inotify.max_user_instances = {max(current, limit)}\n"
    text = ("# virt-sandbox-service doctor --fix: root's inotify instances are shared by every "
            "sandbox's\n# systemd (about 6 each); the default 128 fits about 20.\n" + line)
    if not SYSCTL_FILE.exists() or SYSCTL_FILE.read_text() != text:
        SYSCTL_FILE.parent.mkdir(parents=True, exist_ok=True)
        SYSCTL_FILE.write_text(text)
        done.append(f"kept in {SYSCTL_FILE}")
    return done
