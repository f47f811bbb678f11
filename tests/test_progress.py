"""Progress lines for long steps, on a terminal only; STATUS= to the systemd that runs start."""

from __future__ import annotations

import os
import pty
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from virt_sandbox_service import progress
from virt_sandbox_service.runtime.notify import NotifyListener

from .conftest import CLI, ROOT, Env, unique_name


def read_all(fd: int) -> str:
    out = b""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, TextIO]]:
    """A pty: the side to read from, and a stream on the other for sys.stderr. The test sets
    it itself: pytest puts its capture back on sys.stderr between set-up and the test."""
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    monkeypatch.setattr(progress, "_settings", {"quiet": False})
    yield master, stream
    stream.close()
    os.close(master)


def test_a_long_step_shows_its_time_on_a_terminal(terminal: tuple[int, TextIO],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    master, stream = terminal
    monkeypatch.setattr(sys, "stderr", stream)
    with progress.step("copying /x"):
        time.sleep(1.3)
    text = read_all(master)
    assert "virt-sandbox-service: copying /x... 1 s" in text
    assert text.rstrip().endswith("\x1b[K")
    assert "virt-sandbox-service: copying /x: 1." in text


def test_a_failed_step_says_so(terminal: tuple[int, TextIO],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    master, stream = terminal
    monkeypatch.setattr(sys, "stderr", stream)
    with pytest.raises(RuntimeError), progress.step("writing /img"):
        time.sleep(1.2)
        raise RuntimeError("no")
    assert "writing /img: failed after 1." in read_all(master)


def test_short_steps_and_quiet_show_nothing(terminal: tuple[int, TextIO],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    master, stream = terminal
    monkeypatch.setattr(sys, "stderr", stream)
    with progress.step("quick"):
        time.sleep(0.1)
    progress.set_quiet(True)
    with progress.step("quiet"):
        time.sleep(1.2)
    assert read_all(master) == ""


def test_not_a_terminal_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress, "_settings", {"quiet": False})
    with progress.step("piped"):
        time.sleep(1.2)
    stream.close()
    assert os.read(r, 1000) == b""
    os.close(r)


@pytest.fixture
def big_tree() -> Iterator[Path]:
    """A private host tree to copy: its step is shown after 0.05 s (VSS_PROGRESS_DELAY), so
    the test does not depend on this machine taking more than progress's second for it."""
    top = Path(f"/var/lib/vss-progress-{secrets.token_hex(3)}")
    for d in range(20):
        sub = top / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(300):
            (sub / f"f{f}").write_bytes(b"x")
    yield top
    shutil.rmtree(top)


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize("quiet", [False, True])
def test_create_copy_shows_progress_on_a_terminal(env: Env, big_tree: Path,
                                                  quiet: bool) -> None:
    master, slave = pty.openpty()
    name = unique_name("pg")
    args = [*CLI, *(["--quiet"] if quiet else []), "create", "-C", "--private", str(big_tree),
            "-u", "apache2.service", name]
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, text=True, cwd=ROOT,
                              env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT),
                                   "VSS_PROGRESS_DELAY": "0.05"},
                              timeout=300)
        err = read_all(master)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, err
    line = f"virt-sandbox-service: copying {big_tree}: "
    assert (line in err) is not quiet, err
    assert f"created sandbox {name}" in proc.stdout  # stdout stays as it was


@pytest.mark.root
@pytest.mark.libvirt
def test_start_reports_its_phases_to_systemd(env: Env, tmp_path: Path) -> None:
    """start under systemd (NOTIFY_SOCKET): STATUS= for each phase, then READY=1."""
    name = unique_name("st")
    env.run("create", "-u", "apache2.service", name, check=True)
    listener = NotifyListener(tmp_path / "notify")
    try:
        proc = subprocess.run([*CLI, "start", "--detach", name], capture_output=True,
                              text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT),
                                   "NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert proc.returncode == 0, proc.stderr
        messages = []
        while (msg := listener.receive(0.2)) is not None:
            messages.append(msg)
    finally:
        listener.close()
        env.run("stop", name)
    statuses = [m["STATUS"] for m in messages if "STATUS" in m]
    assert statuses == [f"Starting sandbox {name}: its domain.",
                        f"Starting sandbox {name}: waiting for its systemd to boot.",
                        f"Starting sandbox {name}: checking apache2.service.",
                        f"Sandbox {name} is ready."], messages
    assert messages[-1].get("READY") == "1"
