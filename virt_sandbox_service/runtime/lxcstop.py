"""Stopping an LXC sandbox: its systemd asked to power off (SIGRTMIN+4 through a pidfd, or
initctl while it starts), waited for without polling libvirt, then destroyed if it must be."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from pathlib import Path

import libvirt

from .. import host
from ..apply.txn import pause_after
from ..config import Kind, SandboxConfig
from ..errors import HostError
from .enter import init_process
from .poweroff import InitProcess

log = logging.getLogger(__name__)
POLL = 0.05  # seconds between domain state checks: cheap, and well under any human wait
REASK = 0.5  # seconds between poweroff requests to a sandbox that has not begun to stop


def _stop_domain(dom: libvirt.virDomain, cfg: SandboxConfig, timeout: float,
                 asked: InitProcess | None = None) -> None:
    if cfg.kind is Kind.SERVICE:
        _graceful_stop(dom, timeout, asked)
    else:
        _force_stop(dom)


def _graceful_stop(dom: libvirt.virDomain, timeout: float,
                   asked: InitProcess | None = None) -> None:
    """Ask the sandbox's systemd to power off; it ignores SIGTERM. Then destroy.

    Once the sandbox's PID 1 is systemd, the request is SIGRTMIN+4 (systemd's "power off"),
    sent through a pidfd of that process: immediate, where initctl has systemd start
    systemd-initctl.service first. Before (a stop while it starts) the request is initctl,
    which libvirt refuses then ("Init process ID is not yet known") or which is dropped before
    systemd listens on its FIFO: so ask again every REASK seconds (poweroff requests merge)
    instead of waiting out the whole timeout before a destroy. The wait is on the pidfd,
    which wakes the moment the init exits: no libvirt call while libvirtd is busy with the
    domain (each isActive then waits about 40 ms for its lock).

    `asked`: the init, already sent SIGRTMIN+4 before libvirt was loaded (poweroff.py); the
    first request is then not sent again, and its pidfd is this stop's (closed here).
    """
    deadline = time.monotonic() + timeout
    _resume_if_paused(dom)
    init = asked or init_process(dom)
    drain: Drain | None = None
    try:
        while time.monotonic() < deadline:
            if not _active(dom):
                return
            if init is not None and (init is asked or init.power_off()):
                asked = None  # asked again at the next round, as any other
                drain = drain or Drain.of(dom, init)
            else:
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
                except libvirt.libvirtError as e:
                    log.debug("initctl shutdown of %s: %s", dom.name(), e)
            ask_again = min(deadline, time.monotonic() + REASK)
            while time.monotonic() < ask_again:
                if init is not None and drain is not None:
                    if drain.wait(init, ask_again - time.monotonic()) and drain.end(dom, init):
                        return
                    if not drain.usable:
                        drain.close()
                        drain = None
                    continue
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
    finally:  # every way out closes the pidfds (a foreground start lives on after a stop)
        if drain is not None:
            drain.close()
        if init is not None:
            init.close()


def _resume_if_paused(dom: libvirt.virDomain) -> None:
    """A paused sandbox (virsh suspend, or a stop interrupted between its pause and destroy)
    cannot shut down: its processes are frozen. Thawed, it stops as any other."""
    with contextlib.suppress(libvirt.libvirtError):
        if int(dom.state()[0]) == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()


class Drain:
    """The end of a sandbox whose services its systemd has stopped, without libvirt's
    200 ms round (libvirt 9.0).

    When a container's init exits, its controller closes libvirt's monitor while it is
    still in the domain's cgroup, and libvirtd signals it and sleeps 200 ms before it
    looks again (virCgroupKillPainfully, in its event loop). A paused domain's destroy has
    no such round: SIGKILL to what is left, thaw, done. So once the sandbox's systemd has
    stopped every service (its system.slice and every other cgroup but its own init.scope
    empty: the services, journald with its last lines written), only its PID 1's own final
    steps are left, which change nothing on disk: the domain is paused and destroyed. That
    cleanup runs before the killed processes have left their cgroups, so libvirt leaves the
    domain's (then empty) cgroup directories behind: removed here once they are gone.
    Anything unexpected (no cgroup2 tree of the sandbox's systemd, a pause or destroy
    refused) leaves `usable` False: the stop then waits for the init's exit, as before. So
    does a host without the v1 freezer hierarchy (pure cgroup v2), where libvirt cannot
    pause a container.
    """

    def __init__(self, events: int, root: Path, controller: int, cgroups: list[Path]) -> None:
        self.events, self.root, self.cgroups = events, root, cgroups
        self.controller = controller
        self.usable = True

    @classmethod
    def of(cls, dom: libvirt.virDomain, init: InitProcess) -> Drain | None:
        if host.v1_mount("freezer") is None:
            # libvirt (9.0) pauses an LXC domain only through the v1 freezer: on a pure
            # cgroup v2 host its suspend fails ("Suspend operation failed", seen on the
            # standard test host), so the stop waits for the init's exit there.
            return None
        try:
            root = _systemd_root(init.pid)
            if root is None:
                return None
            controller = dom.ID()
            cgroups = _domain_cgroups(controller, dom.name())
            events = os.open(root / "system.slice" / "cgroup.events", os.O_RDONLY)
        except (OSError, libvirt.libvirtError) as e:
            log.debug("no drain watch for %s: %s", dom.name(), e)
            return None
        drain = cls(events, root, controller, cgroups)
        if drain._drained():
            # Drained before it was watched (stop's request goes before libvirt is loaded:
            # a sandbox with little to stop may be done by now). How far its PID 1's last
            # steps are, or whether libvirt is already ending the domain, is unknown then:
            # no pause of a domain in that state; the stop waits for the init's exit.
            log.debug("%s drained before it was watched", dom.name())
            drain.close()
            return None
        return drain

    def wait(self, init: InitProcess, seconds: float) -> bool:
        """Whether the services are all down within `seconds`; False also when the init
        exited first (then `usable` is False)."""
        poller = select.poll()
        poller.register(init.pidfd, select.POLLIN)
        poller.register(self.events, select.POLLPRI | select.POLLERR)
        end = time.monotonic() + seconds
        while True:
            if self._drained():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            ready = dict(poller.poll(left * 1000))
            if init.pidfd in ready:
                self.usable = False
                return False
            if self.events in ready:  # read it through this fd: kernfs re-arms the wait then
                try:
                    os.lseek(self.events, 0, os.SEEK_SET)
                    os.read(self.events, 4096)
                except OSError:  # ENODEV: systemd removed the emptied slice (checked above)
                    poller.unregister(self.events)

    def _drained(self) -> bool:
        try:
            return all(not _populated(child) for child in self.root.iterdir()
                       if child.is_dir() and child.name != "init.scope")
        except OSError:
            return False

    def end(self, dom: libvirt.virDomain, init: InitProcess) -> bool:
        """Pause and destroy the drained domain; whether it is gone."""
        if init.wait(0):  # its init has exited: libvirt's end
            self.usable = False
            return False
        try:
            ctl = os.pidfd_open(self.controller)
        except OSError:
            self.usable = False
            return False
        paused = False
        try:
            dom.suspend()
            paused = True
            pause_after(PAUSE_STEP)
            dom.destroy()
            paused = False
            for pidfd in (init.pidfd, ctl):  # SIGKILLed by libvirt: gone in a moment
                select.select([pidfd], [], [], GONE_WAIT)
        except libvirt.libvirtError as e:
            log.debug("pause and destroy of %s: %s", dom.name(), e)
            self.usable = False
            return False
        finally:  # a failure or Ctrl-C between the two: the sandbox goes on shutting down
            if paused:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.resume()
            os.close(ctl)
        _remove_leftovers(self.cgroups)
        return True

    def close(self) -> None:
        os.close(self.events)


GONE_WAIT = 2.0  # seconds for the SIGKILLed init and controller to be gone
PAUSE_STEP = "pause of the drained sandbox"


def _populated(cgroup: Path) -> bool:
    for line in (cgroup / "cgroup.events").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() != "0"
    return True


def _systemd_root(init: int) -> Path | None:
    """The host path of the cgroup2 tree the sandbox's systemd manages (its cgroup
    namespace's root, where its PID 1 sits in init.scope)."""
    unified = host.cgroup_layout().unified_mount
    if unified is None:
        return None
    for line in Path(f"/proc/{init}/cgroup").read_text().splitlines():
        hier, _, path = line.split(":", 2)
        if hier == "0" and path.endswith("/init.scope"):
            return unified / path.lstrip("/").removesuffix("/init.scope").rstrip("/")
    return None


def _domain_cgroups(controller: int, name: str) -> list[Path]:
    """The host paths of libvirt's cgroups of the domain, read from its controller's
    /proc/PID/cgroup: only those named for this very controller and domain."""
    want = f"lxc-{controller}-{name}.libvirt-lxc"
    layout = host.cgroup_layout()
    out = []
    for line in Path(f"/proc/{controller}/cgroup").read_text().splitlines():
        hier, ctls, path = line.split(":", 2)
        if os.path.basename(path) != want:
            continue
        mount = layout.unified_mount if hier == "0" else host.v1_mount(ctls.split(",")[0])
        if mount is not None:
            out.append(mount / path.lstrip("/"))
    return out


def _remove_leftovers(cgroups: list[Path]) -> None:
    from .lxccgroups import remove_as_they_empty

    for c in remove_as_they_empty([c for c in cgroups if c.exists()]):
        log.warning("cgroup %s of a destroyed sandbox still has processes; it stays", c)


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
