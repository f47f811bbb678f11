"""Shared fixtures and test tiers.

Tiers are markers: root, libvirt, kvm, systemd. A test whose part cannot exist here skips with
the reason; with VSS_REQUIRE_ALL=1 (set by .ci/run) such a skip is an error instead, because CI
installs and starts every part and a skipped tier there would hide a broken set-up.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .systemd_host import pid1_is_systemd

# Started in the background by a non-interactive shell (nohup CMD &), this process inherits
# SIGINT ignored, and so would every CLI the tests run, though the Ctrl-C tests signal them:
# a handler here makes their SIGINT the default again (exec resets handlers, not SIG_IGN).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
CLI = [sys.executable, "-m", "virt_sandbox_service.cli"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regenerate-output", action="store_true",
                     help="rewrite the golden files from the current output")


@pytest.fixture
def regenerate(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regenerate-output"))


def need(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) when a part the test needs is missing."""
    if condition:
        return
    if os.environ.get("VSS_REQUIRE_ALL") == "1":
        pytest.fail(f"required part missing in CI: {reason}")
    pytest.skip(reason)


def libvirt_lxc_reachable() -> bool:
    try:
        import libvirt

        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        libvirt.open("lxc:///").close()
        return True
    except Exception:
        return False


def pytest_runtest_setup(item: pytest.Item) -> None:
    marks = {m.name for m in item.iter_markers()}
    if marks & {"root", "libvirt", "systemd", "kvm"}:
        need(os.geteuid() == 0, "needs root")
    if "standard_host" in marks and not pid1_is_systemd():
        # Not a part this machine can have: its PID 1 is not systemd. CI runs these inside the
        # standard test host VM instead (tests/test_testhost.py), where they cannot skip.
        pytest.skip("needs a standard host (systemd as PID 1, cgroup v2): "
                    "tests/test_testhost.py runs it inside the test host VM")
    if "libvirt" in marks:
        need(libvirt_lxc_reachable(), "needs libvirtd with the LXC driver (scripts/setup.sh)")


@dataclass
class Env:
    """An isolated set of tool paths (config, state, units, run) under a temp dir."""

    base: Path

    @property
    def vars(self) -> dict[str, str]:
        return {
            "VSS_CONFIG_DIR": str(self.base / "config"),
            "VSS_STATE_DIR": str(self.base / "state"),
            "VSS_UNIT_DIR": str(self.base / "units"),
            "VSS_RUN_DIR": str(self.base / "run"),
        }

    def state(self, name: str) -> Path:
        return self.base / "state" / name

    def run(self, *args: str, check: bool = False, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.vars, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=ROOT, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def snapshot(self) -> dict[str, object]:
        """Everything the tool may leave behind: its dirs, and libvirt's domains."""
        # The run dir itself (volatile, like /run/libvirt) holds the tool's lock; what matters
        # is what lies in it and elsewhere.
        files = sorted(str(p.relative_to(self.base)) for p in self.base.rglob("*")
                       if p.name != ".lock" and p != self.base / "run")
        return {"files": files, "domains": sorted(domain_names(under=self.base))}


def domain_names(under: Path | None = None) -> list[str]:
    """Domains on lxc:///; with `under`, only those whose sandbox state lies below it (the
    libvirtd is shared with other tests running at the same time)."""
    try:
        import libvirt

        conn = libvirt.open("lxc:///")
    except Exception:
        return []
    try:
        doms = conn.listAllDomains(0)
        if under is None:
            return [d.name() for d in doms]
        out = []
        for d in doms:
            try:  # a domain another test removes right now is gone, not an error
                if f"<vss:state>{under}/" in d.XMLDesc(0):
                    out.append(d.name())
            except libvirt.libvirtError:
                continue
        return out
    finally:
        conn.close()


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def tool_env(base: Path) -> Iterator[Env]:
    """An Env under `base`; afterwards, whatever sandboxes were made in it are deleted, so
    nothing is left behind. For fixtures of any scope."""
    e = Env(base)
    e.base.mkdir()
    yield e
    sandboxes = e.base / "config" / "sandboxes"
    if sandboxes.is_dir():
        for cfg in sandboxes.glob("*.json"):
            e.run("delete", "--force", cfg.stem)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from tool_env(tmp_path / "vss")


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb`'s package of the committed tree, built once per run (test_deb.py examines
    and runs it; the standard test host installs it)."""
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(["make", "-C", str(ROOT), "deb"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "VSS_DEB_OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (found,) = out.glob("virt-sandbox-service_*_all.deb")
    return found

