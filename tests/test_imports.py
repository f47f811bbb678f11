"""What a command loads is its time (issue 16): the paths every sandbox takes at each start
or run stay free of modules they never use. A module added back to one of these paths by a
top-level import fails here, with the module named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from virt_sandbox_service.config import new_machine_id

PKG = "virt_sandbox_service"


def loaded(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `modules`."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('\\n'.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return set(out.split())


# `start` of an LXC sandbox: the plan's types, the init's script, the file operations of
# create, the machinery of execute and a run's relay are other commands' modules.
NOT_IN_START = ("plantypes", "initscript", "apply.files", "apply.systemd", "users", "limits",
                "runtime.lxcexec", "runtime.stdiorelay", "runtime.readiness", "lxml", "jinja2",
                "uuid")


@pytest.mark.parametrize("module", NOT_IN_START)
def test_start_loads_no_more_than_it_uses(module: str) -> None:
    """Up to its domain's start: what cli.cmd_start imports (readiness loads once the domain
    runs, while the sandbox boots)."""
    name = module if module in ("lxml", "jinja2", "uuid") else f"{PKG}.{module}"
    assert name not in loaded(f"{PKG}.cli", f"{PKG}.config", f"{PKG}.runtime.lxc",
                              f"{PKG}.apply.libvirt")


def test_run_loads_neither_uuid_nor_hashlib() -> None:
    """`run` without a network: no hash of an interface name, no uuid module for the machine
    ID (new_machine_id)."""
    mods = loaded(f"{PKG}.cli", f"{PKG}.runtime.oneshot")
    assert "uuid" not in mods and "hashlib" not in mods


def test_a_machine_id_is_a_random_version_4_uuid() -> None:
    ids = {new_machine_id() for _ in range(64)}
    assert len(ids) == 64
    for mid in ids:
        assert len(mid) == 32 and int(mid, 16) >= 0
        assert mid[12] == "4" and mid[16] in "89ab"  # version 4, RFC 4122 variant
