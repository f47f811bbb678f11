"""libvirt's per-domain log files, which libvirt itself never removes.

libvirtd writes a log for every domain it starts, named after the domain, in the driver's log
directory (/var/log/libvirt/lxc, /var/log/libvirt/qemu with one more per virtiofsd), and
keeps it after the domain is gone, undefined or transient. Each `run`, each create's set-up
domain and each `learn` has a name of its own, so their logs pile up for ever: this machine
had 11,600 in /var/log/libvirt/lxc, 5,400 of them from set-up domains. So:
- a transient domain's logs (vss-run-*, vss-setup-*, vss-learn-*) go once the domain is gone.
  A run returns as soon as its command's status is known, while libvirt still tears the
  domain down and may still append to the log (qemu's "shutting down" line): they are swept
  after the next command that makes one, for every such domain libvirt no longer has (and
  whose log is a minute old: one started meanwhile by another command is still fresh);
- a sandbox's own logs go with `delete`, as the rest of it does.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import libvirt

from ..errors import HostError
from .libvirt import lookup

# A log this fresh may be a domain's that started after libvirt listed the living ones.
FRESH_SECONDS = 60
SYSTEM_LOG_DIRS = {"lxc": "/var/log/libvirt/lxc", "qemu": "/var/log/libvirt/qemu"}
# The tool's transient domains: the prefixes of their names (oneshot, maintscripts, learn).
TRANSIENT = re.compile(r"^(?P<name>vss-(?:run|setup|learn)-[0-9a-f]+)"
                       r"(?:-fs\d+-virtiofsd)?\.log(?:\.\d+)?$")


def log_dir(uri: str) -> Path | None:
    """Where the daemon behind `uri` keeps its domains' logs: the system daemon's directory,
    or a session daemon's under the user's cache (as libvirt's virGetUserCacheDirectory)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if uri.rstrip("/").endswith("/session"):
        cache = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(cache) if cache.startswith("/") else Path.home() / ".cache"
        return base / "libvirt" / scheme / "log"
    where = SYSTEM_LOG_DIRS.get(scheme)
    return Path(where) if where else None


def _is_log_of(filename: str, name: str) -> bool:
    """NAME.log, NAME-fsN-virtiofsd.log, and their rotations (.N): not another domain's
    whose name starts with NAME."""
    return re.fullmatch(re.escape(name) + r"(?:-fs\d+-virtiofsd)?\.log(?:\.\d+)?",
                        filename) is not None


def remove_logs(uri: str, name: str) -> None:
    """A deleted sandbox's logs."""
    where = log_dir(uri)
    if where is None or not where.is_dir():
        return
    for entry in os.scandir(where):
        if _is_log_of(entry.name, name):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def sweep_transient(conn: libvirt.virConnect, uri: str, where: Path | None = None) -> None:
    """The logs of the tool's transient domains that libvirt no longer has (`where`: the
    daemon's log directory, found from `uri` when not given).

    Only a log a minute old is a candidate, and only a candidate's domain is looked up, by
    name. Listing every domain instead waited for each one's lock: right after a `run`, on
    the lock of the run's own domain, which libvirt holds through a 200 ms round of its
    teardown, so every run took 0.2 s longer."""
    where = where or log_dir(uri)
    if where is None or not where.is_dir():
        return
    old = time.time() - FRESH_SECONDS
    alive: dict[str, bool] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(where):
            m = TRANSIENT.match(entry.name)
            if not m:
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime >= old:
                    continue
                name = m["name"]
                if name not in alive:
                    alive[name] = _has(conn, name)
                if not alive[name]:
                    os.unlink(entry.path)


def _has(conn: libvirt.virConnect, name: str) -> bool:
    """Whether libvirt has a domain of that name; True where it cannot say (keep its log)."""
    try:
        return lookup(conn, name) is not None
    except HostError:
        return True
