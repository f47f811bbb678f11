"""`execute` in an LXC sandbox: join its namespaces, cgroups, bounding set and LSM label, then
run a command there under the sandbox's confinement. Apart from runtime/lxc.py so that `start`
and `stop`, which enter nothing, do not load this (issue 16: every import before a start's
domain is start time).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import TYPE_CHECKING

import libvirt

from ..confine import default_signals
from ..errors import UserError
from . import stdiorelay
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
from .lxc import NS_ORDER, sees_controller

if TYPE_CHECKING:
    from ..limits import Jail

_libc = ctypes.CDLL(None, use_errno=True)


def execute(dom: libvirt.virDomain, argv: list[str], env: dict[str, str], *,
            jail: Jail | None = None, namespaces: tuple[str, ...] = NS_ORDER,
            cgroup: bool = True) -> int:
    """Run argv inside the running sandbox; its stdio is ours, its exit status is returned.

    `jail`: the sandbox's confinement (limits.jail), which the command runs under.
    `namespaces` (a subset of NS_ORDER) and `cgroup` choose what is entered; the default is
    everything, so that the command sees the sandbox as its own processes do.
    """

    if not dom.isActive():
        raise UserError(f"sandbox '{dom.name()}' is not running",
                        f"start it: virt-sandbox-service start {dom.name()}")
    # The child reads the init's bounding set and cgroups before entering its mount namespace
    # (then /proc is the sandbox's). Beside libvirtd's PID namespace (see reload) the init is
    # not visible; nothing to match.
    init = init_pid(dom) if sees_controller(dom) else None
    fds = open_namespaces(dom)
    relay = stdiorelay.Relay() if stdiorelay.needed() else None
    pid = os.fork()
    if pid == 0:
        if relay is not None:
            relay.child_side()
        _child_enter_and_run(dom, fds, argv, env, namespaces, cgroup, init, jail)
    for fd in fds:
        os.close(fd)
    if relay is None:
        return _wait_status(pid)
    relay.parent_side()
    try:
        return _wait_status(pid)
    finally:
        relay.finish()


def _child_enter_and_run(dom: libvirt.virDomain, fds: list[int], argv: list[str],
                         env: dict[str, str], namespaces: tuple[str, ...],
                         cgroup: bool, init: int | None, jail: Jail | None) -> None:
    try:
        import libvirt_lxc

        if cgroup:
            libvirt_lxc.lxcEnterCGroup(dom, 0)
            if init is not None:  # libvirt's cgroups do not include the one --tasks made
                join_pids_cgroup(init)
        if init is not None:
            match_bounding_set(init)
        prepare_confinement(jail)
        label = lsm_label(init)
        by_type = {os.readlink(f"/proc/self/fd/{fd}").split(":")[0]: fd for fd in fds}
        for ns in NS_ORDER:
            if ns in namespaces and ns in by_type and _libc.setns(by_type[ns], 0) != 0:
                err = ctypes.get_errno()
                if ns == "user":  # EINVAL: it is already ours (no user namespace in use)
                    continue
                why = os.strerror(err)
                if ns == "pid" and err == errno.EINVAL:
                    why += (" (the sandbox's PID namespace is not below ours: run this in the "
                            "PID namespace of libvirtd, not in a container beside it)")
                raise OSError(err, f"setns({ns}): {why}")
        # A new pid namespace applies to children only: fork once more.
        pid = os.fork()
        if pid == 0:
            os.chdir("/")
            enter_lsm_label(label)
            confine_self(jail)
            default_signals()
            try:
                os.execvpe(argv[0], argv, env)
            except OSError as e:
                print(f"virt-sandbox-service: {argv[0]}: {e.strerror}", file=sys.stderr)
                os._exit(127 if isinstance(e, FileNotFoundError) else 126)
        os._exit(_wait_status(pid))
    except BaseException as e:  # never return into the parent's code in a forked child
        print(f"virt-sandbox-service: cannot enter the sandbox: {e}", file=sys.stderr)
        os._exit(125)


def _wait_status(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
