"""Running sandboxes: start (readiness, console, exit status), stop, execute, reload.

One module per backend (lxc.py, kvm.py); each is a `Backend`, which mypy checks of the module
itself (a module can implement a Protocol), so a backend missing a function or taking other
arguments is a type error, not a crash at the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

# Not config: runtime.poweroff (stop's first step) comes through here before it loads.
from ..hostpaths import Driver, Paths

if TYPE_CHECKING:
    import libvirt

    from ..config import SandboxConfig
    from ..limits import Jail
    from .poweroff import InitProcess


class Backend(Protocol):
    """What cli.py and manage.py ask of a runtime backend."""

    def domain(self, conn: libvirt.virConnect, cfg: SandboxConfig) -> libvirt.virDomain: ...

    def start(self, conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths, *,
              detach: bool = False, timeout: float = 90, tty: bool = False) -> int: ...

    def stop(self, conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths,
             timeout: float = 30, asked: InitProcess | None = None) -> bool: ...

    def execute(self, dom: libvirt.virDomain, argv: list[str], env: dict[str, str], *,
                jail: Jail | None = None) -> int: ...

    def reload(self, dom: libvirt.virDomain, cfg: SandboxConfig, units: list[str]) -> int: ...

    def sandbox_env(self, cfg: SandboxConfig) -> dict[str, str]: ...


def backend(cfg: SandboxConfig) -> Backend:
    if cfg.driver is Driver.LXC:
        from . import lxc

        return lxc
    from . import kvm

    return kvm
