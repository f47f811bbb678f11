"""The host side of an LXC sandbox's cgroups: what its init made, removed once it has
stopped; its tasks limit and v1 device throttles changed while it runs (the init's own
layout: initscript._cgroup_prologue)."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import libvirt

from .. import host
from ..errors import HostError
from ..layout import PAYLOAD_CGROUP
from .enter import init_pid, pids_cgroup, v1_cgroup

log = logging.getLogger(__name__)

# After its domain ended, a sandbox's last processes may still be in their exit path for a
# moment (a delete killed midway and run again comes straight after the destroy): its cgroups
# are removed as they empty, for at most this long.
CGROUP_DRAIN_SECONDS = 3.0


def remove_cgroups(name: str, drain: float = CGROUP_DRAIN_SECONDS) -> None:
    """Remove the empty cgroup directories a stopped sandbox left behind: those its systemd
    made in cgroup2, and those its init made in the v1 pids hierarchy for --tasks.

    Only directories our sandbox init made (machine/lxc-PID-NAME.libvirt-lxc, see plan.py) are
    touched, and only when empty: rmdir fails on a cgroup that still has processes. One that
    stays populated longer than `drain` seconds stays, with a warning naming it.
    """
    layout = host.cgroup_layout()
    roots = [host.v1_mount("pids")]
    if layout.kind == "hybrid":
        roots.append(layout.unified_mount)
    pattern = re.compile(rf"lxc-\d+-{re.escape(name)}\.libvirt-lxc")
    tops = [top for root in roots if root is not None and (root / "machine").is_dir()
            for top in (root / "machine").iterdir() if pattern.fullmatch(top.name)]
    for top in remove_as_they_empty(tops, drain, 0.05):
        print(f"virt-sandbox-service: warning: cgroup {top} still has processes; it stays",
              file=sys.stderr)


def remove_as_they_empty(tops: list[Path], drain: float = CGROUP_DRAIN_SECONDS,
                         every: float = 0.01) -> list[Path]:
    """rmdir each cgroup tree as it empties, for at most `drain` seconds; those that stay."""
    deadline = time.monotonic() + drain
    while True:
        tops = [top for top in tops if not _rmdir_tree(top)]
        if not tops or time.monotonic() >= deadline:
            return tops
        time.sleep(every)


def _rmdir_tree(top: Path) -> bool:
    """rmdir top and what is below it, deepest first; whether top is gone."""
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("cgroup %s stays: %s", dirpath, e)
    return not top.exists()


def set_tasks_live(dom: libvirt.virDomain, tasks: int) -> None:
    """Change a running sandbox's tasks limit where its init put it (plan._cgroup_prologue):
    pids.max of the container's v1 pids cgroup, the parent of the cgroup its init moved into
    and made its cgroup namespace root, so the sandbox itself cannot raise it."""
    cg = pids_cgroup(init_pid(dom))
    if cg is None:
        raise HostError(f"the init of {dom.name()} is in no pids cgroup of its own",
                        "was the sandbox started with --tasks? the new limit applies at the "
                        "next start")
    target = (cg.parent if cg.name == PAYLOAD_CGROUP else cg) / "pids.max"
    try:
        target.write_text(f"{tasks}\n")
    except OSError as e:
        raise HostError(f"cannot write {target}: {e.strerror}") from e


def copy_throttles_live(dom: libvirt.virDomain) -> None:
    """After libvirt changed the device I/O throttles of a running sandbox's cgroup, the same
    in the child its init moved into (plan._cgroup_prologue): v1's throttles do not reach a
    child. Writing "MAJ:MIN 0" removes one."""
    cg = v1_cgroup(init_pid(dom), "blkio")
    if cg is None or cg.name != PAYLOAD_CGROUP:
        return
    for parent in cg.parent.glob("blkio.throttle.*_device"):
        want, have = _throttle_rules(parent), _throttle_rules(cg / parent.name)
        for dev in sorted(set(want) | set(have)):
            if want.get(dev, "0") != have.get(dev, "0"):
                try:
                    (cg / parent.name).write_text(f"{dev} {want.get(dev, '0')}\n")
                except OSError as e:
                    raise HostError(f"cannot write {cg / parent.name}: {e.strerror}") from e


def _throttle_rules(path: Path) -> dict[str, str]:
    return dict(line.split()[:2] for line in path.read_text().splitlines() if line.strip())
