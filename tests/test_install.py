"""`pip install .` (not editable) gives a working tool: the unit template, the KVM guest's init
and the read-only virtiofsd wrapper are package data, found where the package is installed,
never in the checkout. Installed into a throw-away venv and run from outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service.resources import data_path

from .conftest import ROOT, Env, need, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
SHIPPED = (("units", "sandbox.service.j2"), ("initrd", "init"), ("libexec", "virtiofsd-ro"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with the project pip-installed from the checkout (a wheel built from it)."""
    top = tmp_path_factory.mktemp("installed")
    where, source = top / "venv", top / "source"
    # A copy of the checkout: pip builds in the source tree, and the checkout stays clean.
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"))
    venv.create(where, with_pip=True)
    proc = subprocess.run([str(where / "bin" / "pip"), "install", "--quiet", str(source)],
                          capture_output=True, text=True, timeout=600)
    need(proc.returncode == 0, f"pip install of the checkout failed: {proc.stderr[-800:]}")
    yield where


def run(tool: Path, env: Env, *args: str, extra: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(tool / "bin" / "virt-sandbox-service"), *args],
                          capture_output=True, text=True, timeout=300, cwd="/",
                          env={**environ, **env.vars, **(extra or {})})
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def test_the_data_is_package_data() -> None:
    for parts in SHIPPED:
        assert data_path(*parts).is_file(), parts
        assert data_path(*parts).resolve().is_relative_to(ROOT / "virt_sandbox_service")
    assert os.access(data_path("libexec", "virtiofsd-ro"), os.X_OK)


def test_installed_tool_uses_its_own_files(installed: Path) -> None:
    code = ("import virt_sandbox_service.resources as r, virt_sandbox_service as p; "
            "print(p.__file__); "
            + "; ".join(f"print(r.data_path({a!r}, {b!r}))" for a, b in SHIPPED))
    proc = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd="/",
                          capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    paths = [Path(p) for p in proc.stdout.split()]
    assert all(p.is_relative_to(installed) and p.exists() for p in paths), paths
    assert os.access(paths[-1], os.X_OK)  # the wrapper libvirt runs


def test_installed_tool_creates_starts_and_deletes(installed: Path, env: Env) -> None:
    name = unique_name("pip")
    plan = run(installed, env, "create", "--dry-run", "-u", "apache2.service", name)
    assert f"ExecStart={installed}/bin/virt-sandbox-service start {name}" in plan.stdout
    run(installed, env, "create", "-u", "apache2.service", name)
    run(installed, env, "start", "--detach", name)
    page = run(installed, env, "execute", name, "--", "curl", "-sS", "-o", "/dev/null", "-w",
               "%{http_code}", "http://localhost/")
    assert page.stdout == "200"
    run(installed, env, "delete", "--force", name)
    assert not env.state(name).exists()


@pytest.mark.kvm
def test_installed_tool_boots_a_kvm_run(installed: Path, env: Env, tmp_path: Path) -> None:
    """The guest's init comes from the installed package (a cache of its own: the checkout's
    boot files must not serve it)."""
    proc = run(installed, env, "run", "-c", "qemu:///system", "--", "/bin/sh", "-c", "exit 3",
               extra={"VSS_CACHE_DIR": str(tmp_path / "cache")}, check=False)
    assert proc.returncode == 3, proc.stderr
    assert (tmp_path / "cache" / "kvm" / "initrd.img").is_file()


def test_nothing_refers_to_the_source_tree() -> None:
    """The modules find shipped files through resources.data_path only."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "virt_sandbox_service").rglob("*.py")
                 if "parent.parent" in p.read_text()]
    assert not offenders, offenders
