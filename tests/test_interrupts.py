"""Ctrl-C midway rolls back; kill -9 midway leaves something `delete` cleans completely."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .conftest import CLI, ROOT, Env, domain_names, unique_name
from .systemd_host import setup_cgroups

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
STEPS = ["wrote ", "made ", "defined domain", "_sandbox.service"]


def paused_create(env: Env, name: str, step: str) -> subprocess.Popen[str]:
    """A create that stops right after `step` (VSS_PAUSE_AFTER), so we can signal it there."""
    proc = subprocess.Popen(
        [*CLI, "create", "-u", "apache2.service", name], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT), "VSS_PAUSE_AFTER": step})
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the pause is reached
    assert "paused after" in line, line
    return proc


def only_infrastructure(before: dict[str, object], after: dict[str, object]) -> None:
    assert after["domains"] == before["domains"]
    new = set(after["files"]) - set(before["files"])  # type: ignore[arg-type]
    assert new <= {"config", "config/sandboxes", "state", "units"}, new


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_midway_rolls_back(env: Env, step: str) -> None:
    before = env.snapshot()
    proc = paused_create(env, unique_name("int"), step)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    only_infrastructure(before, env.snapshot())


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_midway_then_delete_cleans_up(env: Env, step: str) -> None:
    other = unique_name("bystander")
    env.run("create", "-u", "apache2.service", other, check=True)
    before, cgroups = env.snapshot(), setup_cgroups()
    name = unique_name("kill")
    proc = paused_create(env, name, step)
    proc.kill()
    proc.wait(timeout=30)
    # The name is taken until deleted: a second create says so, clearly.
    again = env.run("create", "-u", "apache2.service", name)
    assert again.returncode == 2 and "already exists" in again.stderr
    env.run("delete", name, check=True)
    only_infrastructure(before, env.snapshot())
    # Killed while the fresh instance's set-up ran (the later steps run beside it): what its
    # domain's init made in the cgroup tree goes with the delete too.
    assert setup_cgroups() <= cgroups
    assert other in domain_names() and env.state(other).is_dir()
    # ... and the name is free again.
    env.run("create", "-u", "apache2.service", name, check=True)


CLONE_STEPS = ["wrote ", "made ", "defined domain", "_sandbox.service"]


@pytest.mark.parametrize("step", CLONE_STEPS)
def test_kill_9_midway_through_clone_then_delete_cleans_up(env: Env, step: str) -> None:
    src = unique_name("csrc")
    env.run("create", "-u", "apache2.service", src, check=True)
    env.run("start", "--detach", src, check=True)
    before = env.snapshot()
    dest = unique_name("cdst")
    proc = subprocess.Popen(
        [*CLI, "clone", src, dest], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT), "VSS_PAUSE_AFTER": step})
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "paused after" in line, line
    proc.kill()
    proc.wait(timeout=30)
    env.run("delete", dest, check=True)
    only_infrastructure(before, env.snapshot())
    # The source was only read: still running and serving.
    out = env.run("execute", src, "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                  "http://localhost/")
    assert out.stdout == "200", out


def test_a_ctrl_c_as_libvirt_defines_the_domain_leaves_no_domain(env: Env) -> None:
    """The signal lands while libvirt's define runs: Python raises it the moment the call
    returns, before anything after it. The domain libvirt made must still be taken back
    (the undo is registered before the define)."""
    from unittest import mock

    import libvirt

    from virt_sandbox_service.config import Paths
    from virt_sandbox_service.create import CreateRequest, create

    real = libvirt.virConnect.defineXMLFlags

    def define_then_interrupted(self: libvirt.virConnect, xml: str, flags: int = 0
                                ) -> libvirt.virDomain:
        real(self, xml, flags)
        raise KeyboardInterrupt

    name = unique_name("sig")
    before = env.snapshot()
    with mock.patch.object(libvirt.virConnect, "defineXMLFlags", define_then_interrupted), \
         pytest.raises(KeyboardInterrupt):
        create(CreateRequest(name=name, units=("apache2.service",)), Paths.from_env(env.vars))
    assert name not in domain_names()
    only_infrastructure(before, env.snapshot())
