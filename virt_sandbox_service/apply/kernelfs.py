"""The file systems a sandbox's init mounts itself, registered before a domain starts.

The kernel loads a file system's module on its first mount, but only for a caller allowed to
ask: SELinux denies svirt_lxc_net_t `module_request` (by design, a container may not load
kernel modules) and a user namespace never triggers the load. On a host where nothing has
mounted an overlay since boot, the init's overlay /etc then fails with "unknown filesystem
type". So the host side, root and unconfined, loads them first, as an administrator would
with modules-load.d.
"""

from __future__ import annotations

import logging
import shutil

from ..errors import HostError
from ..util import run

log = logging.getLogger(__name__)

# initscript.py mounts these inside the container (the overlay /etc and the copy-up trees).
INIT_FILESYSTEMS = ("overlay",)


def registered(fstype: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == fstype for line in f if line.strip())
    except OSError:
        return False


def load(fstypes: tuple[str, ...] = INIT_FILESYSTEMS) -> tuple[str, ...]:
    """Load each file system's module that is not registered yet; what was loaded. Best
    effort: create already refused a sandbox that needs an overlay on a kernel without one
    (host.has_overlayfs), and a failure here shows as the init's own error."""
    loaded = []
    for fstype in fstypes:
        if registered(fstype):
            continue
        modprobe = shutil.which("modprobe") or "/sbin/modprobe"
        try:
            run((modprobe, "-q", fstype), check=True)
        except HostError as e:
            log.warning("the kernel has no %s file system: %s", fstype, e.message)
            continue
        if registered(fstype):
            loaded.append(fstype)
            log.info("loaded the kernel's %s file system for the sandbox's init", fstype)
    return tuple(loaded)
