"""A sandbox's PID 1 held by a pidfd, asked to power off; and `stop`'s first step, taken
before libvirt's binding is even loaded.

The sandbox's services take about 0.1 s to drain once its systemd is asked to power off.
`stop` used to ask only after loading the binding and its own runtime (about 0.05 s of
imports) and connecting: that time was spent in turn. Now, for a local LXC sandbox, the
request goes first; the rest of `stop` loads while the sandbox drains, then goes on as
before with the same pidfd (runtime/lxcstop.py). Nothing here imports libvirt.

What the request needs of the sandbox's config (its URI and kind) is read from the config file
itself: the config module (a frozen dataclass of ~50 fields) loads after the request too.
`stop` loads and checks the whole file right after; a sandbox whose file is damaged
elsewhere is still asked to stop, which is what its admin asked for.

The sandbox's init is found from what libvirt's LXC driver keeps for a running domain (its
controller's PID in NAME.pid of its state directory), and believed only if that process is
this domain's `libvirt_lxc` controller and the init its child: a stale or foreign PID, a
remote or non-default libvirt, a sandbox still starting (its init is not systemd yet) all
leave the request to the libvirt path, as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

from ..apply.txn import pause_after
from ..hostpaths import FORMAT_VERSION, Kind, Paths

log = logging.getLogger(__name__)
# libvirt's LXC driver (system instance): NAME.pid holds a running domain's controller PID.
LXC_STATE_DIR = Path("/run/libvirt/lxc")
LOCAL_LXC = "lxc:///"  # only this URI is the libvirtd whose state directory that is
STOPPING_DIR = ".stopping"  # under paths.run_dir; no sandbox name starts with a dot
REQUEST_STEP = "power-off request without libvirt"  # (for VSS_PAUSE_AFTER)


def stop_marker(paths: Paths, name: str) -> Path:
    """Written by `stop`: an end somebody asked for (host-only, outside the sandbox's
    channel, whose files are the sandbox's to replace)."""
    return paths.run_dir / STOPPING_DIR / name


def mark_stopping(paths: Paths, name: str) -> None:
    marker = stop_marker(paths, name)
    marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.write_text("stop requested\n")


def clear_stop_marker(paths: Paths, name: str) -> None:
    marker = stop_marker(paths, name)
    marker.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another sandbox's marker may be there
        marker.parent.rmdir()


class InitProcess:
    """A sandbox's PID 1, held by a pidfd (a recycled PID can never be signalled, and a wait
    on it wakes the moment it exits): `stop` and create's set-up domain (maintscripts.py)."""

    def __init__(self, pidfd: int, pid: int) -> None:
        self.pidfd, self.pid = pidfd, pid

    @classmethod
    def of_pid(cls, pid: int) -> InitProcess:
        return cls(os.pidfd_open(pid), pid)

    def is_systemd(self) -> bool:
        """Whether PID 1 is systemd by now (our init execs it)."""
        try:
            return Path(f"/proc/{self.pid}/comm").read_text().strip() == "systemd"
        except OSError:
            return False

    def power_off(self) -> bool:
        """SIGRTMIN+4 (systemd's "power off") if PID 1 is systemd by now; False otherwise."""
        return self.is_systemd() and self.send_power_off()

    def send_power_off(self) -> bool:
        """SIGRTMIN+4, for a caller that saw PID 1 is systemd (is_systemd); False if it
        could not be sent (the init has exited)."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGRTMIN + 4)
        except OSError:
            return False
        return True

    def wait(self, seconds: float) -> bool:
        """Whether it exited within `seconds`."""
        import select

        return bool(select.select([self.pidfd], [], [], max(0.0, seconds))[0])

    def close(self) -> None:
        os.close(self.pidfd)


def is_controller(pid: int, name: str) -> bool:
    """Whether `pid` is, in this process's PID namespace, libvirt's LXC controller of the
    domain `name` (libvirt_lxc --name NAME ...)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"libvirt_lxc" and name.encode() in argv


def controller_child(ctl: int) -> int | None:
    """The controller's first child: the sandbox's init."""
    children = Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()
    return int(children[0]) if children else None


def request(paths: Paths, name: str, config_text: str) -> InitProcess | None:
    """Ask a running local LXC service sandbox's systemd to power off, without libvirt; the
    stop marker is written first. `config_text`: its config file, as `stop` read it once
    (hostpaths.read_config_text, which also refuses a name that is no sandbox's). Returns
    its init (for `stop` to wait on), or None when it could not be found for certain: then
    nothing was sent nor written."""
    if not local_lxc_service(config_text):
        return None
    init = _init_of(name)
    if init is None:
        return None
    if not init.is_systemd():  # still starting: the libvirt path handles that
        init.close()
        return None
    mark_stopping(paths, name)
    if not init.send_power_off():
        init.close()
        return None
    log.debug("asked sandbox %s (init %d) to power off", name, init.pid)
    pause_after(REQUEST_STEP)
    return init


def local_lxc_service(config_text: str) -> bool:
    """Whether a config file (its text) is a service sandbox's, of the local LXC driver, in
    the current format: only then is the request sent here. A remote or other libvirtd's
    domain is not the one in LXC_STATE_DIR; a VM's init is not the host's to signal; a
    generic sandbox is destroyed, not shut down; anything else goes the libvirt way."""
    try:
        data = json.loads(config_text)
    except ValueError:
        return False
    return (isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION
            and data.get("kind") == Kind.SERVICE.value and data.get("uri") == LOCAL_LXC)


def _init_of(name: str) -> InitProcess | None:
    try:
        ctl = int((LXC_STATE_DIR / f"{name}.pid").read_text())
        if not is_controller(ctl, name):
            return None
        pid = controller_child(ctl)
        if pid is None:
            return None
        init = InitProcess.of_pid(pid)
    except (OSError, ValueError) as e:
        log.debug("no early stop request for %s: %s", name, e)
        return None
    # The pidfd is of whatever has that PID now: still the controller's child, it is the
    # init (a PID reused in between would have another parent).
    if _parent(init.pid) != ctl:
        init.close()
        return None
    return init


def _parent(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None
