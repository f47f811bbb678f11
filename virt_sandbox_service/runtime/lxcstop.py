"""Stopping an LXC sandbox: its systemd asked to power off (SIGRTMIN+4 through a pidfd, or
initctl while it starts), waited for without polling libvirt, then destroyed if it must be."""

from __future__ import annotations

import logging
import time

import libvirt

from ..config import Kind, SandboxConfig
from ..errors import HostError
from .enter import InitProcess

log = logging.getLogger(__name__)
POLL = 0.05  # seconds between domain state checks: cheap, and well under any human wait
REASK = 0.5  # seconds between poweroff requests to a sandbox that has not begun to stop


def _stop_domain(dom: libvirt.virDomain, cfg: SandboxConfig, timeout: float) -> None:
    if cfg.kind is Kind.SERVICE:
        _graceful_stop(dom, timeout)
    else:
        _force_stop(dom)


def _graceful_stop(dom: libvirt.virDomain, timeout: float) -> None:
    """Ask the sandbox's systemd to power off; it ignores SIGTERM. Then destroy.

    Once the sandbox's PID 1 is systemd, the request is SIGRTMIN+4 (systemd's "power off"),
    sent through a pidfd of that process: immediate, where initctl has systemd start
    systemd-initctl.service first. Before (a stop while it starts) the request is initctl,
    which libvirt refuses then ("Init process ID is not yet known") or which is dropped before
    systemd listens on its FIFO: so ask again every REASK seconds (poweroff requests merge)
    instead of waiting out the whole timeout before a destroy. The wait is on the pidfd,
    which wakes the moment the init exits: no libvirt call while libvirtd is busy with the
    domain (each isActive then waits about 40 ms for its lock).
    """
    deadline = time.monotonic() + timeout
    init = InitProcess.of(dom)
    try:
        while time.monotonic() < deadline:
            if not _active(dom):
                return
            if init is None or not init.power_off():
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
                except libvirt.libvirtError as e:
                    log.debug("initctl shutdown of %s: %s", dom.name(), e)
            ask_again = min(deadline, time.monotonic() + REASK)
            while time.monotonic() < ask_again:
                if init is not None and init.wait(ask_again - time.monotonic()):
                    init.close()
                    init = None
                    _wait_inactive(dom, deadline)
                    break
                if init is None:
                    if not _active(dom):
                        return
                    time.sleep(POLL)
        _force_stop(dom)
    finally:  # every way out closes the pidfd (a foreground start lives on after a stop)
        if init is not None:
            init.close()


def _wait_inactive(dom: libvirt.virDomain, deadline: float) -> None:
    """The init has exited: libvirt ends the domain at once (its controller sees the exit)."""
    while _active(dom) and time.monotonic() < deadline:
        time.sleep(0.005)


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


# libvirt kills a container's processes with SIGTERM, then SIGKILL, and gives up after some
# seconds ("Some processes refused to die"). A process in uninterruptible sleep, such as one
# waiting on a throttled or slow disk, dies only when that I/O ends: ask again, as an admin
# would, before reporting the sandbox as unstoppable.
DESTROY_TRIES = 3


def _force_stop(dom: libvirt.virDomain) -> None:
    for attempt in range(1, DESTROY_TRIES + 1):
        try:
            if dom.isActive():
                dom.destroy()
            return
        except libvirt.libvirtError as e:
            if not _active(dom):
                return
            if attempt == DESTROY_TRIES:
                raise HostError(f"cannot stop {dom.name()}: {e.get_error_message()}",
                                "a process in it is stuck in the kernel (see its state in "
                                "ps); try again once its I/O ends") from e
            log.debug("destroy of %s, attempt %d: %s", dom.name(), attempt, e)
