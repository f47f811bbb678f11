"""Running sandboxes: start (readiness, console, exit status), stop, execute, reload.

One module per backend, each with the same functions:
    domain(conn, cfg) -> virDomain
    start(conn, cfg, paths, *, detach, timeout, tty) -> int
    stop(conn, cfg, paths, timeout) -> bool
    execute(dom, argv, env) -> int
    reload(dom, cfg, units) -> int
    sandbox_env(cfg) -> dict[str, str]
"""

from __future__ import annotations

from types import ModuleType

from ..config import Driver, SandboxConfig


def backend(cfg: SandboxConfig) -> ModuleType:
    if cfg.driver is Driver.LXC:
        from . import lxc

        return lxc
    from . import kvm

    return kvm
