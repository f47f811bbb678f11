"""The README's second command, `make demo`: two apache2 sandboxes with different pages,
started, each answering (on this machine; the standard test host runs the reboot and the
package instead, tests/test_testhost.py)."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
DEMO = ("demo-web1", "demo-web2")
TOOL = "/usr/local/bin/virt-sandbox-service"


def exists(name: str) -> bool:
    return subprocess.run([TOOL, "inspect", name], capture_output=True).returncode == 0


def test_make_demo_runs_the_main_job() -> None:
    mine = [n for n in DEMO if not exists(n)]  # the admin's own demo sandboxes stay theirs
    try:
        r = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        for name in DEMO:
            assert f"== {name} answers:\n<h1>Hello from {name}</h1>" in r.stdout, r.stdout
            assert any(line.split()[:1] == [name] and "running" in line.split()
                       for line in r.stdout.splitlines()), r.stdout
    finally:
        for name in mine:
            subprocess.run([TOOL, "delete", "--force", name], capture_output=True)
