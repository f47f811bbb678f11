"""libvirt's per-domain logs: a transient domain's go once the domain is gone, a sandbox's
with delete; nobody else's are touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from virt_sandbox_service.apply import domainlogs

from .conftest import Env, unique_name


@pytest.mark.parametrize(("filename", "ours"), [
    ("web1.log", True), ("web1.log.3", True), ("web1-fs0-virtiofsd.log", True),
    ("web10.log", False), ("web1-old.log", False), ("xweb1.log", False),
    ("web1-fs0-virtiofsd.log.1", True), ("web1.logx", False),
])
def test_a_sandboxs_logs_are_its_own_name_only(filename: str, ours: bool) -> None:
    assert domainlogs._is_log_of(filename, "web1") is ours


def test_where_each_daemon_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/home/u/.c")
    assert domainlogs.log_dir("lxc:///") == Path("/var/log/libvirt/lxc")
    assert domainlogs.log_dir("qemu:///system") == Path("/var/log/libvirt/qemu")
    assert domainlogs.log_dir("qemu:///session") == Path("/home/u/.c/libvirt/qemu/log")
    assert domainlogs.log_dir("test:///default") is None


@pytest.mark.root
@pytest.mark.libvirt
def test_the_sweep_takes_only_gone_transient_domains_old_logs(tmp_path: Path) -> None:
    import libvirt

    conn = libvirt.open("lxc:///")
    try:
        alive = next((d.name() for d in conn.listAllDomains()), "")
        old = time.time() - 2 * domainlogs.FRESH_SECONDS
        names = {"vss-run-0a1b2c3d.log": False, "vss-setup-0a1b2c3d.log.1": False,
                 "vss-learn-0a1b2c3d-fs0-virtiofsd.log": False, "web1.log": True,
                 "vss-run-old.log": True, "vss-runner.log": True}
        if alive:  # any domain libvirt has: its log stays, whatever its name
            names[f"{alive}.log"] = True
        for n in names:
            (tmp_path / n).write_text("x\n")
            os.utime(tmp_path / n, (old, old))
        (tmp_path / "vss-run-99999999.log").write_text("a run that just started\n")
        names["vss-run-99999999.log"] = True
        domainlogs.sweep_transient(conn, "lxc:///", tmp_path)
    finally:
        conn.close()
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in names.items() if kept}


@pytest.mark.root
@pytest.mark.libvirt
def test_delete_removes_the_sandboxs_libvirt_log(env: Env) -> None:
    name = unique_name("logs")
    env.run("create", name, "--", "/bin/true", check=True)
    env.run("start", name, check=True, timeout=120)
    log = Path("/var/log/libvirt/lxc") / f"{name}.log"
    assert log.exists()
    env.run("delete", name, check=True)
    assert not log.exists()


def test_a_transient_domain_libvirt_still_has_keeps_its_log(tmp_path: Path) -> None:
    """Through libvirt's test driver: an old log of a vss-run domain it has stays, one of a
    domain it has not goes; the sweep looks up only those (never lists every domain, which
    waits on each one's lock)."""
    import libvirt

    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")
        xml = dom.XMLDesc().replace("<name>test</name>", "<name>vss-run-0badc0de</name>")
        xml = "".join(line for line in xml.splitlines() if "<uuid>" not in line)
        conn.defineXML(xml)
        old = time.time() - 2 * domainlogs.FRESH_SECONDS
        for n in ("vss-run-0badc0de.log", "vss-run-0dead000.log"):
            (tmp_path / n).write_text("x\n")
            os.utime(tmp_path / n, (old, old))
        domainlogs.sweep_transient(conn, "test:///default", tmp_path)
    finally:
        conn.close()
    assert [p.name for p in tmp_path.iterdir()] == ["vss-run-0badc0de.log"]
