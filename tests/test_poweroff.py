"""stop's request without libvirt (runtime/poweroff.py): sent only to what is, for certain,
the sandbox's systemd; otherwise nothing is sent and nothing written, and stop goes the
libvirt way. No root needed: a stand-in "controller" (a process whose argv is libvirt_lxc's)
and its child play the domain, through a pid file in a temporary state directory."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service import cli
from virt_sandbox_service.config import Kind, Paths, SandboxConfig
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.runtime import poweroff

NAME = "web1"


def config(**kw: object) -> SandboxConfig:
    base = SandboxConfig(name=NAME, kind=Kind.SERVICE, uri="lxc:///",
                         state_dir="/var/lib/virt-sandbox-service/web1",
                         units=("apache2.service",))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setattr(poweroff, "LXC_STATE_DIR", tmp_path / "libvirt-lxc")
    (tmp_path / "libvirt-lxc").mkdir()
    return Paths(config_dir=tmp_path / "etc", state_parent=tmp_path / "state",
                 unit_dir=tmp_path / "units", run_dir=tmp_path / "run")


def fake_domain(tmp_path: Path, init_name: str, name: str = NAME) -> subprocess.Popen[bytes]:
    """A process whose argv is `libvirt_lxc --name NAME`, with one child whose command name
    (comm) is `init_name`: what libvirt's controller and the sandbox's init look like."""
    init = tmp_path / init_name
    shutil.copy("/bin/sleep", init)
    script = f'"{init}" 60 & echo started; wait'
    ctl = subprocess.Popen(["libvirt_lxc", "-c", script, "--name", name], executable="/bin/sh",
                           stdout=subprocess.PIPE)
    assert ctl.stdout is not None and ctl.stdout.readline() == b"started\n"
    return ctl


@pytest.fixture
def domains(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for ctl in made:
        if ctl.poll() is None:
            for child in children(ctl.pid):
                os.kill(child, signal.SIGKILL)
            ctl.kill()
        ctl.wait()


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def request(paths: Paths, cfg: SandboxConfig) -> poweroff.InitProcess | None:
    """poweroff.request of a sandbox whose config file is `cfg`'s."""
    return poweroff.request(paths, cfg.name, cfg.to_json())


def write_pid_file(pid: int | str, name: str = NAME) -> None:
    (poweroff.LXC_STATE_DIR / f"{name}.pid").write_text(f"{pid}")


def test_asks_the_sandboxs_systemd_and_marks_the_stop(
        paths: Paths, tmp_path: Path, domains: list[subprocess.Popen[bytes]]) -> None:
    ctl = fake_domain(tmp_path, "systemd")
    domains.append(ctl)
    (init_pid,) = children(ctl.pid)
    write_pid_file(ctl.pid)
    init = request(paths, config())
    assert init is not None and init.pid == init_pid
    try:
        assert init.wait(5), "SIGRTMIN+4 did not reach the init"
    finally:
        init.close()
    assert ctl.wait(5) == 0  # the stand-in controller's `wait` returned with its child
    assert poweroff.stop_marker(paths, NAME).exists()


@pytest.mark.parametrize("case", ["not systemd yet", "another domain's controller",
                                  "not a controller", "no such process", "garbage",
                                  "no pid file"])
def test_sends_nothing_and_writes_nothing_unless_certain(
        case: str, paths: Paths, tmp_path: Path,
        domains: list[subprocess.Popen[bytes]]) -> None:
    ctl = fake_domain(tmp_path, "systemd" if case != "not systemd yet" else "apache2",
                      name="other" if case == "another domain's controller" else NAME)
    domains.append(ctl)
    pids: dict[str, int | str] = {"not a controller": os.getpid(),
                                  "no such process": 2**22 + 1, "garbage": "12x"}
    pid = pids.get(case, ctl.pid)
    if case != "no pid file":
        write_pid_file(pid)
    assert request(paths, config()) is None
    assert not poweroff.stop_marker(paths, NAME).exists()
    time.sleep(0.05)
    assert len(children(ctl.pid)) == 1, "the init was signalled"


@pytest.mark.parametrize("change", [
    {"uri": "lxc+ssh://elsewhere/"}, {"uri": "lxc:///?socket=/run/other"},
    {"uri": "qemu:///system"}, {"kind": Kind.GENERIC, "units": (), "command": ("/bin/true",)},
], ids=["remote", "another-libvirtd", "kvm", "generic"])
def test_only_a_local_lxc_service_sandbox(
        change: dict[str, object], paths: Paths, tmp_path: Path,
        domains: list[subprocess.Popen[bytes]]) -> None:
    """A remote or other libvirtd's domain is not the one in this state directory; a VM's
    init is not the host's to signal; a generic sandbox is destroyed, not shut down."""
    ctl = fake_domain(tmp_path, "systemd")
    domains.append(ctl)
    write_pid_file(ctl.pid)
    assert request(paths, config(**change)) is None
    assert not poweroff.stop_marker(paths, NAME).exists()
    assert len(children(ctl.pid)) == 1


@pytest.mark.parametrize("text", ["{", "[]", '{"kind": "service", "uri": "lxc:///"}',
                                  '{"format_version": 0, "kind": "service", "uri": "lxc:///"}'],
                         ids=["not json", "not an object", "no version", "older format"])
def test_a_config_file_it_cannot_vouch_for_goes_the_libvirt_way(
        text: str, paths: Paths, tmp_path: Path,
        domains: list[subprocess.Popen[bytes]]) -> None:
    """The request reads only the config file's URI and kind: a file it cannot be sure of
    is left to `stop`'s full load, which says what is wrong with it."""
    ctl = fake_domain(tmp_path, "systemd")
    domains.append(ctl)
    write_pid_file(ctl.pid)
    assert poweroff.request(paths, NAME, text) is None
    assert not poweroff.stop_marker(paths, NAME).exists()
    assert len(children(ctl.pid)) == 1


@pytest.mark.parametrize("name", ["../web1", "nosuch"])
def test_a_name_that_is_no_sandboxs_is_an_error_before_anything(
        name: str, paths: Paths, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`stop` reads the config file before its request: a bad or unknown name is refused
    there, with the usage status, before anything is sent or written."""
    for var, path in (("VSS_CONFIG_DIR", paths.config_dir), ("VSS_STATE_DIR", paths.state_parent),
                      ("VSS_UNIT_DIR", paths.unit_dir), ("VSS_RUN_DIR", paths.run_dir)):
        monkeypatch.setenv(var, str(path))
    monkeypatch.setattr(poweroff, "request", lambda *a: pytest.fail("requested"))
    assert cli.main(["stop", name]) == UserError.exit_status
    assert "error: " in capsys.readouterr().err
    assert not (paths.run_dir / poweroff.STOPPING_DIR).exists()


def test_the_request_loads_neither_the_config_module_nor_libvirt() -> None:
    """What makes the request early: `stop` loads these only after it (cli.cmd_stop)."""
    code = ("import sys; import virt_sandbox_service.cli, virt_sandbox_service.runtime.poweroff; "
            "print(sorted(m for m in ('virt_sandbox_service.config', 'dataclasses', 'libvirt') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]"
