"""Entering a running LXC sandbox from the host: its init, its capability bounding set."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import libvirt

from .. import host
from ..errors import HostError
from .poweroff import InitProcess, controller_child

if TYPE_CHECKING:
    from ..limits import Jail

log = logging.getLogger(__name__)
PR_CAPBSET_DROP = 24
_libc = ctypes.CDLL(None, use_errno=True)


def init_pid(dom: libvirt.virDomain) -> int:
    """The sandbox's PID 1 as seen from the host: the child of libvirt's LXC controller,
    whose PID libvirt reports as the domain ID."""
    ctl = dom.ID()
    pid = controller_child(ctl)
    if pid is None:
        raise OSError(f"the LXC controller {ctl} of {dom.name()} has no init process")
    return pid


def init_process(dom: libvirt.virDomain) -> InitProcess | None:
    """The domain's init held by a pidfd, or None if it has none (yet, or any more)."""
    try:
        return InitProcess.of_pid(init_pid(dom))
    except (OSError, libvirt.libvirtError) as e:
        log.debug("no pidfd for the init of %s: %s", dom.name(), e)
        return None


def match_bounding_set(pid: int) -> None:
    """Drop from our bounding set every capability the sandbox's init (host PID) lacks.
    Called before any setns(), so limits.py loads from the host's files."""
    from ..limits import CAP_NUMBERS, bounding_set  # not in start's path (issue 16)

    limit_bounding_set(bounding_set(pid), CAP_NUMBERS)


def limit_bounding_set(keep: int, names: tuple[str, ...]) -> None:
    """Drop from our bounding set every capability not in the mask `keep` (`names`: the
    capabilities by number, limits.CAP_NUMBERS).

    setns() keeps the caller's capabilities; without this, a command run with `execute`
    could do what the sandbox itself cannot (load a module, set the clock). Exec as root then
    gives the command exactly the sandbox's set.
    """
    for bit in range(len(names)):
        if not keep >> bit & 1 and _libc.prctl(PR_CAPBSET_DROP, bit, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err != 22:  # EINVAL: the kernel does not know this capability
                raise OSError(err, f"cannot drop capability {names[bit]}: "
                                   f"{os.strerror(err)}")


def prepare_confinement(jail: Jail | None) -> None:
    """Before entering a sandbox's mount namespace: load what confine_self needs from the
    host's files (see confine.load_library)."""
    if jail is not None:
        from .. import confine

        confine.load_library()


def confine_self(jail: Jail | None) -> None:
    """In a process that entered a sandbox, just before it execs there: the sandbox's seccomp
    filter and capability set, so that nothing the tool runs inside can do more than the
    sandbox's own processes (or be used by them: a planted /etc/ld.so.preload, say)."""
    if jail is not None:
        from .. import confine

        confine.apply(*jail)


def lsm_label(init: int | None) -> tuple[str, str] | None:
    """The LSM label the sandbox's init runs with ("apparmor" or "selinux", label), read from
    the host's /proc before entering: what execute, connect and reload run there must carry it,
    as everything the sandbox runs itself does. None where no LSM confines the sandbox."""
    if init is None:
        return None
    for lsm, path in (("apparmor", f"/proc/{init}/attr/apparmor/current"),
                      ("selinux", f"/proc/{init}/attr/current")):
        if not (host.apparmor_enabled() if lsm == "apparmor" else host.selinux_enabled()):
            continue
        try:
            label = Path(path).read_text().strip("\0\n ")
            ours = Path(path.replace(f"/{init}/", "/self/")).read_text().strip("\0\n ")
        except OSError:
            continue
        if lsm == "apparmor":  # "libvirt-UUID (enforce)": the profile's name
            label = label.rsplit(" (", 1)[0]
        if label and label not in ("unconfined", ours):
            return lsm, label
    return None


def enter_lsm_label(label: tuple[str, str] | None) -> None:
    """In the process that is about to exec inside the sandbox: its next program runs with
    the sandbox's label (aa_change_onexec / setexeccon, through /proc/self/attr)."""
    if label is None:
        return
    lsm, text = label
    if lsm == "apparmor":
        own = Path("/proc/self/attr/apparmor/exec")
        path, data = (own if own.exists() else Path("/proc/self/attr/exec")), f"exec {text}"
    else:
        path, data = Path("/proc/self/attr/exec"), text
    try:
        path.write_text(data)
    except OSError as e:
        raise OSError(e.errno, f"cannot take the sandbox's {lsm} label {text}: "
                               f"{e.strerror}") from e


CLONE_NEWCGROUP = 0x02000000


def v2_cgroup(pid: int) -> str:
    """The cgroup v2 path of `pid` as the host sees it ("/" where it has none)."""
    own = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next((line[3:] for line in own if line.startswith("0::")), "/")


def pids_cgroup(pid: int) -> Path | None:
    """The host path of the v1 pids cgroup `pid` is in; None at the hierarchy's root (where
    libvirt leaves containers started without --tasks) or without a pids hierarchy."""
    return v1_cgroup(pid, "pids")


def v1_cgroup(pid: int, controller: str) -> Path | None:
    """The host path of the v1 `controller` cgroup `pid` is in; None at the hierarchy's root
    or without such a hierarchy."""
    mount = host.v1_mount(controller)
    if mount is None:
        return None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctl, path = line.split(":", 2)
        if controller in ctl.split(",") and path != "/":
            return mount / path.lstrip("/")
    return None


def join_pids_cgroup(init: int) -> None:
    """Move this process into the pids cgroup of the sandbox's init (made for --tasks): a
    process entering the sandbox counts against its tasks limit like the sandbox's own.

    On a pure cgroup v2 host, into the init's own cgroup: there libvirt's lxcEnterCGroup
    (9.0) leaves the process where it was (seen on the test host VM: what `execute` ran
    stayed in the caller's session scope, outside the sandbox's memory and tasks limits)."""
    cg = pids_cgroup(init)
    v2 = cg is None and host.cgroup_layout().kind == "v2"
    if v2:
        rel = v2_cgroup(init)
        cg = Path("/sys/fs/cgroup") / rel.lstrip("/") if rel != "/" else None
    if cg is not None:
        (cg / "cgroup.procs").write_text(f"{os.getpid()}\n")
    if v2:
        # And its cgroup namespace: from the host's, the sandbox's own cgroup2 mount shows
        # the sandbox's limits as writable files (the escape suite raised memory.max that way
        # on the test host); inside it, nsdelegate keeps its namespace root's files read-only.
        fd = os.open(f"/proc/{init}/ns/cgroup", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWCGROUP) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns(cgroup): {os.strerror(err)}")
        finally:
            os.close(fd)


def open_namespaces(dom: libvirt.virDomain, wait: float = 5.0) -> list[int]:
    """File descriptors of the running sandbox's namespaces (libvirt_lxc.lxcOpenNamespace).

    Right after a start, libvirtd may not have heard the init's PID from the sandbox's
    controller yet ("Init pid is not yet available"), most of all on a loaded host: wait for
    it a little instead of failing a command that came a moment early."""
    import libvirt_lxc

    deadline = time.monotonic() + wait
    while True:
        try:
            # The annotation says int; the glue returns the list of descriptors.
            return cast(list[int], libvirt_lxc.lxcOpenNamespace(dom, 0))
        except libvirt.libvirtError as e:
            early = e.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and \
                "not yet available" in (e.get_error_message() or "")
            if not early or time.monotonic() > deadline:
                raise HostError(f"cannot enter sandbox '{dom.name()}': "
                                f"{e.get_error_message()}") from e
            time.sleep(0.05)
