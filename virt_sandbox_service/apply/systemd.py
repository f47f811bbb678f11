"""Host unit files and the host's systemd (through pystemd over D-Bus, where systemd runs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import HostError, UserError
from .files import write_file
from .txn import Transaction

log = logging.getLogger(__name__)


def systemd_running() -> bool:
    """The test sd_booted(3) uses: /run/systemd/system exists only under a systemd PID 1."""
    return os.path.isdir("/run/systemd/system")


def unit_state(unit: str) -> tuple[str | None, str | None]:
    """The host unit's ActiveState and UnitFileState ("enabled", "disabled", ...), asked of
    the host's systemd over D-Bus; (None, None) where no systemd runs or it cannot say."""
    if not systemd_running():
        return None, None
    from pystemd.systemd1 import Unit

    try:
        with Unit(unit.encode()) as u:
            return u.Unit.ActiveState.decode(), u.Unit.UnitFileState.decode() or None
    except Exception as e:
        log.debug("state of %s: %s", unit, e)
        return None, None


def install_unit(path: Path, text: str, txn: Transaction) -> None:
    if os.path.lexists(path):
        raise UserError(f"unit file {path} already exists", "delete the old sandbox first")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, text, 0o644)
    txn.did(f"wrote {path}", path.unlink)


def daemon_reload() -> None:
    if not systemd_running():
        log.debug("no systemd PID 1 here: skipping daemon-reload")
        return
    from pystemd.systemd1 import Manager

    try:
        with Manager() as manager:
            manager.Manager.Reload()
    except Exception as e:
        raise HostError(f"systemd daemon-reload failed: {e}") from e


def disable_and_remove(unit_dir: Path, unit: str) -> None:
    """Disable (remove its enablement links) and remove the unit file."""
    if systemd_running() and unit_dir == Path("/etc/systemd/system"):
        from pystemd.systemd1 import Manager

        try:
            with Manager() as manager:
                manager.Manager.DisableUnitFiles([unit.encode()], False)
        except Exception as e:  # the links are removed below anyway
            log.debug("DisableUnitFiles(%s): %s", unit, e)
    for link in unit_dir.glob(f"*/{unit}"):
        if link.is_symlink():
            link.unlink()
    path = unit_dir / unit
    if path.exists() or path.is_symlink():
        path.unlink()
    if systemd_running():  # a failed state outlives its file: `systemctl --failed` forgets it
        from pystemd.systemd1 import Manager

        try:
            with Manager() as manager:
                manager.Manager.ResetFailedUnit(unit.encode())
        except Exception as e:  # not loaded, or never failed
            log.debug("ResetFailedUnit(%s): %s", unit, e)


def set_tasks_max(cgroup: Path, tasks: int) -> None:
    """pids.max of a cgroup libvirt made for a domain: through systemd (TasksMax=, runtime)
    where it manages that cgroup as a unit, so that it does not put its own value back;
    directly elsewhere."""
    if systemd_running() and cgroup.name.endswith((".scope", ".service", ".slice")):
        from pystemd.systemd1 import Manager

        try:
            with Manager() as manager:
                manager.Manager.SetUnitProperties(cgroup.name.encode(), True,
                                                  {b"TasksMax": tasks})
            return
        except Exception as e:
            raise HostError(f"systemd could not limit {cgroup.name} to {tasks} tasks: {e}") from e
    try:
        (cgroup / "pids.max").write_text(f"{tasks}\n")
    except OSError as e:
        raise HostError(f"cannot limit {cgroup} to {tasks} tasks: {e.strerror}") from e
