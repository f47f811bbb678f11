"""run by a normal user: what each URI needs is said in one line, before anything is tried.

A throw-away user (made here, removed after) runs the tool with Debian's own python3 (the
venv's interpreter may live in root's home, which no other user can enter) and the checkout
on PYTHONPATH, as an unprivileged user with the tool installed would.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from .conftest import ROOT, need

pytestmark = [pytest.mark.root]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def user() -> Iterator[str]:
    need(os.path.exists("/usr/sbin/useradd"), "needs useradd (passwd)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt, lxml, jinja2"],
                           capture_output=True)
    need(probe.returncode == 0, "needs Debian's python3-libvirt, -lxml, -jinja2 "
                                "(scripts/setup.sh)")
    name = f"vssu{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=True)


def run_as(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", f"PYTHONPATH={ROOT}", "PYTHONDONTWRITEBYTECODE=1",
         SYSTEM_PYTHON, "-m", "virt_sandbox_service.cli", *args],
        capture_output=True, text=True, timeout=120, cwd="/")


@pytest.mark.parametrize(("uri", "message", "hint"), [
    ("lxc:///", "run -c lxc:/// needs root: libvirt's LXC driver starts containers only "
                "for root", "run it as root (sudo)"),
    ("qemu:///system", "run -c qemu:///system needs root: qemu:///system is the root-only "
                       "system daemon", "run it as root (sudo)"),
    ("qemu:///session", "run -c qemu:///session is not available yet: a run's micro-VM needs "
                        "the system daemon (qemu as root, to read the host's files for it)",
     "ask an administrator to run it, as root, with -c qemu:///system"),
])
def test_a_normal_user_is_told_what_each_uri_needs(user: str, uri: str, message: str,
                                                   hint: str) -> None:
    proc = run_as(user, "run", "-c", uri, "--", "/bin/date")
    assert proc.returncode == 125, proc
    assert proc.stderr.splitlines() == [f"virt-sandbox-service: error: {message}",
                                        f"virt-sandbox-service: hint: {hint}"]
    assert proc.stdout == ""


def test_root_is_pointed_from_the_session_to_the_system_daemon() -> None:
    from .conftest import CLI

    proc = subprocess.run([*CLI, "run", "-c", "qemu:///session", "--", "/bin/date"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 125
    assert proc.stderr.splitlines()[1] == ("virt-sandbox-service: hint: as root: run -c "
                                           "qemu:///system")
