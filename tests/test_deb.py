"""make deb: a Debian package of the committed tree (debhelper, pybuild), with the CLI, the
package data, the man page, the completion and the policy sources in their usual places, and a
working tool: unpacked outside the checkout and run by Debian's own python3 with the
package's Depends (python3-libvirt, python3-lxml, ...), it creates, starts and deletes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Env, need, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
DIST = "usr/lib/python3/dist-packages"
DEPENDS = ("python3-libvirt", "python3-lxml", "python3-jinja2", "python3-pystemd")
SHIPPED = (
    "usr/bin/virt-sandbox-service",
    f"{DIST}/virt_sandbox_service/cli.py",
    f"{DIST}/virt_sandbox_service/confine.py",
    f"{DIST}/virt_sandbox_service/data/units/sandbox.service.j2",
    f"{DIST}/virt_sandbox_service/data/initrd/init",
    f"{DIST}/virt_sandbox_service/data/libexec/virtiofsd-ro",
    "usr/share/man/man1/virt-sandbox-service.1.gz",
    "usr/share/bash-completion/completions/virt-sandbox-service",
    "usr/share/virt-sandbox-service/policy/virt_sandbox_service.te",
    "usr/lib/systemd/system-generators/virt-sandbox-service-generator",
)


def installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True)
    return proc.stdout == "install ok installed"


@pytest.fixture(scope="module")
def deb(built_deb: Path) -> Path:
    return built_deb


def test_the_package_holds_everything_in_its_place(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    paths = {line.split()[-1].removeprefix("./") for line in listing.splitlines()}
    assert set(SHIPPED) <= paths, set(SHIPPED) - paths
    modes = {line.split()[-1].removeprefix("./"): line.split()[0]
             for line in listing.splitlines()}
    assert modes[f"{DIST}/virt_sandbox_service/data/libexec/virtiofsd-ro"] == "-rwxr-xr-x"
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    assert all(d in depends for d in (*DEPENDS, "libvirt-daemon-driver-lxc")), depends


def test_the_packaged_tool_creates_starts_and_deletes(deb: Path, env: Env,
                                                      tmp_path: Path) -> None:
    need(all(map(installed, DEPENDS)),
         f"the package's Depends: apt-get install {' '.join(DEPENDS)}")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    tool = root / "usr/bin/virt-sandbox-service"
    assert tool.read_text().startswith("#!/usr/bin/python3\n")  # Debian's python, not ours
    environ = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env.vars,
               "PYTHONPATH": str(root / DIST)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(tool), *args], capture_output=True, text=True, cwd="/",
                              env=environ, timeout=300)
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        return proc

    where = run("--version")
    assert "virt-sandbox-service" in where.stdout
    name = unique_name("deb")
    run("create", "-u", "apache2.service", name)
    assert f"ExecStart={tool} start {name}" in (env.base / "units" /
                                                 f"{name}_sandbox.service").read_text()
    run("start", "--detach", name)
    page = run("execute", name, "--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
               "http://localhost/")
    assert page.stdout == "200"
    run("delete", "--force", name)
    assert not env.state(name).exists()


def test_the_packaged_generator_writes_a_sandbox_files_unit(deb: Path, tmp_path: Path) -> None:
    """Unpacked, run by Debian's python3 as systemd runs a generator (three directories)."""
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    gen = root / "usr/lib/systemd/system-generators/virt-sandbox-service-generator"
    assert gen.read_text().startswith("#!/usr/bin/python3\n") and os.access(gen, os.X_OK)
    files = tmp_path / "sandboxes.d"
    files.mkdir()
    (files / "pkg1.sandbox").write_text("[Sandbox]\nExec=/usr/bin/true\n")
    out = [tmp_path / d for d in ("n", "e", "l")]
    for d in out:
        d.mkdir()
    environ = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
               "PYTHONPATH": str(root / DIST), "VSS_SANDBOXES_DIR": str(files)}
    subprocess.run([str(gen), *map(str, out)], check=True, env=environ, cwd="/", timeout=60)
    assert "ExecStart=" in (out[0] / "pkg1_sandbox.service").read_text()
    assert "apply" in (out[0] / "pkg1_sandbox.service.d" / "50-sandbox-file.conf").read_text()
