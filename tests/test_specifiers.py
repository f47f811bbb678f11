"""systemd's specifiers (systemd.unit(5), "Specifiers"), resolved by unitfile.py as the
sandbox's own systemd resolves them: compared with that systemd's answer (`systemctl show`
inside a running unit sandbox) for every specifier, and used by create (%H, %m)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service.errors import UserError
from virt_sandbox_service.unitfile import load_unit

from .conftest import Env, unique_name

# Every specifier of systemd 252's table, as VAR=%x (the letter doubled for capitals).
LETTERS = "aAbBCdEfgGhHiIjJlLmMnNopPqsStTuUvVwWyY"
ENVIRONMENT = " ".join(f'"{c.lower() * (1 + c.isupper())}=%{c}"' for c in LETTERS)


def probe_unit(name: str) -> str:
    return ("[Unit]\nDescription=specifier probe\n[Service]\nType=simple\n"
            "ExecStart=/bin/sleep infinity\nStateDirectory=vssspec/%H\n"
            f"Environment={ENVIRONMENT}\n[Install]\nWantedBy=multi-user.target\n")


@pytest.fixture
def host_unit() -> Iterator[str]:
    """A unit of our own among the host's (the host's systemd, if any, never starts it)."""
    name = f"vssspec{secrets.token_hex(3)}.service"
    path = Path("/etc/systemd/system") / name
    path.write_text(probe_unit(name))
    try:
        yield name
    finally:
        path.unlink()


def environment(values: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for v in values for w in shlex.split(v))


def test_every_specifier_resolves(tmp_path: Path) -> None:
    (tmp_path / "p.service").write_text(probe_unit("p.service"))
    unit = load_unit("p.service", (tmp_path,), hostname="web1.example.org",
                     machine_id="ab" * 16)
    env = environment(unit.values("Service", "Environment"))
    assert len(env) == len(LETTERS)
    assert (env["hh"], env["h"], env["l"], env["q"]) == ("web1.example.org", "/", "web1",
                                                          "web1")
    assert env["d"] == "/run/credentials/p.service"
    assert env["v"] == os.uname().release and env["a"] and len(env["b"]) == 32


def test_pretty_hostname_needs_the_callers_values(tmp_path: Path) -> None:
    (tmp_path / "q.service").write_text("[Service]\nA=%q\n")
    with pytest.raises(UserError, match="host name and machine ID are not known here"):
        load_unit("q.service", (tmp_path,)).values("Service", "A")


@pytest.mark.root
@pytest.mark.libvirt
def test_specifiers_agree_with_the_sandboxs_systemd(env: Env, host_unit: str) -> None:
    """The create's view (%H the sandbox's name, %m its machine-id) is the sandbox's: its own
    systemd, started in it, resolves each specifier of the unit the same way."""
    name = unique_name("spec")
    env.run("create", "-u", host_unit, name, check=True)
    cfg = json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())
    ours = environment(load_unit(host_unit, hostname=name, machine_id=cfg["machine_id"])
                       .values("Service", "Environment"))
    env.run("start", "--detach", name, check=True)
    proc = env.run("execute", name, "--", "systemctl", "show", "-p", "Environment",
                   host_unit, check=True)
    theirs = environment([proc.stdout.strip().removeprefix("Environment=")])
    assert ours == theirs
    # %H in StateDirectory= was evidence: the sandbox's /var has its own directory
    assert (env.state(name) / "var" / "lib" / "vssspec" / name).is_dir()
    env.run("delete", "--force", name, check=True)


@pytest.mark.root
@pytest.mark.libvirt
def test_create_resolves_host_name_and_machine_id(env: Env, host_unit: str) -> None:
    """A unit whose directives name %H was refused before ("the sandbox's host name and
    machine ID are not known here")."""
    name = unique_name("spec")
    proc = env.run("create", "--dry-run", "-u", host_unit, name)
    assert proc.returncode == 0, proc.stderr
    assert f"/var/lib/vssspec/{name}" in proc.stdout
