"""Root's inotify instances, shared by every sandbox's systemd (pure: a /proc made here, and
the real one read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virt_sandbox_service import hostlimits
from virt_sandbox_service.doctor import checks


def fake_proc(tmp_path: Path, limit: int, procs: dict[int, tuple[int, int]]) -> Path:
    """procs: pid -> (real uid, inotify descriptors); each also holds a plain file."""
    (tmp_path / "sys/fs/inotify").mkdir(parents=True)
    (tmp_path / "sys/fs/inotify/max_user_instances").write_text(f"{limit}\n")
    for pid, (uid, count) in procs.items():
        fd = tmp_path / str(pid) / "fd"
        fd.mkdir(parents=True)
        (tmp_path / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t0\t0\n")
        os.symlink("/dev/null", fd / "0")
        for i in range(count):
            os.symlink("anon_inode:inotify", fd / str(i + 1))
    (tmp_path / "self").mkdir()  # not a pid: skipped
    return tmp_path


def test_only_roots_instances_count(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 128, {1: (0, 4), 200: (0, 5), 201: (0, 1), 300: (1000, 40)})
    use = hostlimits.inotify_use(proc)
    assert (use.limit, use.used) == (128, 10)
    assert use.room == (128 - 10) // hostlimits.PER_UNIT_SANDBOX == 19
    assert "room for about 19 more unit sandbox(es)" in use.describe()


def test_a_start_hint_names_the_limit_only_when_the_room_is_gone(tmp_path: Path) -> None:
    roomy = fake_proc(tmp_path / "a", 128, {1: (0, 100)})
    assert hostlimits.shortage_hint(roomy) is None  # 28 left: room for 4
    full = fake_proc(tmp_path / "b", 128, {1: (0, 125)})
    hint = hostlimits.shortage_hint(full)
    assert hint is not None
    assert "fs.inotify.max_user_instances is 128, 125 in use by root" in hint
    assert "sysctl -w fs.inotify.max_user_instances=1024" in hint
    assert hostlimits.shortage_hint(tmp_path / "missing") is None  # unreadable: no guess


def test_this_hosts_figures_are_read() -> None:
    use = hostlimits.inotify_use()
    assert use.limit == int(hostlimits.MAX_INSTANCES.read_text())
    assert use.used >= 0


@pytest.mark.root
def test_doctor_shows_the_room() -> None:
    (check,) = [c for c in checks() if c.name == "inotify"]
    assert "fs.inotify.max_user_instances is" in check.detail
    assert check.ok == (hostlimits.inotify_use().room >= 1)
