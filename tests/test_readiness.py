"""`start` succeeds only once the confined units are really up (runtime/readiness.py).

The sandbox's systemd sends READY=1 once its boot jobs are done, which a unit in its
auto-restart loop, or a Type=simple unit about to die, passes too. The judge and the wait are
checked on their own; end to end, a throw-away host unit that fails again after each restart
must make `start --detach` (and `start`) fail, naming it, while apache2 still starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service.runtime import readiness
from virt_sandbox_service.runtime.readiness import UnitState, Verdict, judge

from .conftest import Env, unique_name

UP, PENDING, FAILED = Verdict.UP, Verdict.PENDING, Verdict.FAILED


def svc(active: str, sub: str, type_: str = "simple", *, result: str = "success",
        restarts: int = 0, age: float | None = 10.0, load: str = "loaded",
        job: bool = False) -> UnitState:
    return UnitState("x.service", load, active, sub, type_, result, restarts, age, job)


@pytest.mark.parametrize(("state", "verdict"), [
    (svc("active", "running", "forking"), UP),
    (svc("active", "running", "notify", age=0.01), UP),  # it said READY=1 itself
    (svc("reloading", "reload", "notify"), UP),
    (svc("active", "exited", "oneshot"), UP),  # RemainAfterExit=yes
    (svc("inactive", "dead", "oneshot"), UP),  # ran to its end, in success
    (UnitState("x.socket", "loaded", "active", "listening"), UP),
    (svc("active", "running", age=2.0), UP),
    (svc("active", "running", age=0.05), PENDING),  # Type=simple: may yet die
    (svc("active", "running", "exec", age=0.05, restarts=1), PENDING),
    (svc("activating", "auto-restart", result="exit-code"), PENDING),  # its first restart
    (svc("activating", "start", "notify"), PENDING),
    (svc("deactivating", "stop-sigterm"), PENDING),
    (svc("activating", "auto-restart", result="exit-code", restarts=1), FAILED),
    # Its restart under way: the counter is raised before the unit leaves auto-restart.
    (svc("activating", "auto-restart", result="exit-code", restarts=1, job=True), PENDING),
    (svc("inactive", "dead", result="exit-code", restarts=1, job=True), PENDING),
    (svc("active", "running", age=0.1, restarts=2), FAILED),  # restart 1 failed too
    (svc("failed", "failed", result="exit-code"), FAILED),
    (svc("inactive", "dead"), FAILED),  # a daemon that is not running
    (svc("inactive", "dead", "oneshot", result="exit-code"), FAILED),
    (svc("inactive", "dead", "", load="not-found"), FAILED),
])
def test_judge(state: UnitState, verdict: Verdict) -> None:
    assert judge(state)[0] is verdict


def test_a_young_simple_unit_is_asked_again_once_steady() -> None:
    verdict, wait = judge(svc("active", "running", age=0.2))
    assert verdict is PENDING and wait == pytest.approx(readiness.STEADY - 0.2)


def test_wait_until_up_asks_until_up_and_reports_a_failure(
        capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter([[svc("activating", "auto-restart", result="exit-code")],
                    [svc("active", "running", "forking", restarts=1)]])
    waits: list[float] = []

    def reports(seconds: float) -> list[str]:
        waits.append(seconds)
        return []

    far = time.monotonic() + 60
    assert readiness.wait_until_up("box", lambda: next(answers), reports, far) == []
    assert waits == [readiness.RECHECK]

    answers = iter([[svc("activating", "auto-restart", result="exit-code")],
                    [svc("activating", "auto-restart", result="exit-code", restarts=1)]])
    assert readiness.wait_until_up("box", lambda: next(answers), reports, far) == ["x.service"]
    assert "x.service is not up in sandbox box: activating/auto-restart, result exit-code, " \
           "restarted 1 time" in capsys.readouterr().err
    # An OnFailure= report ends the wait at once; a unit still pending at the deadline failed.
    pending = [svc("activating", "auto-restart")]
    assert readiness.wait_until_up("box", lambda: pending, lambda _s: ["y.service"],
                                   far) == ["y.service"]
    assert readiness.wait_until_up("box", lambda: pending, reports,
                                   time.monotonic()) == ["x.service"]


def test_parse_show_reads_the_guests_answer() -> None:
    text = ("12.50\n"
            "LoadState=loaded\nActiveState=active\nSubState=running\nJob=\nType=simple\n"
            "Result=success\nNRestarts=1\nExecMainStartTimestampMonotonic=12300000\n\n"
            "LoadState=loaded\nActiveState=activating\nSubState=start\nJob=42\n\n")
    a, b = readiness.parse_show(text, ["a.service", "b.socket"])
    assert a == UnitState("a.service", "loaded", "active", "running", "simple", "success", 1,
                          pytest.approx(0.2), False)
    assert (b.name, b.active, b.type, b.restarts, b.age, b.job) == \
        ("b.socket", "activating", "", 0, None, True)
    with pytest.raises(readiness.ReadinessUnknown):
        readiness.parse_show(text, ["a.service"])
    with pytest.raises(readiness.ReadinessUnknown):
        readiness.parse_show("Failed to connect to bus\n", ["a.service"])


# --- end to end (root, libvirtd) --------------------------------------------------------------

RESTARTING = """[Unit]
Description=virt-sandbox-service test: fails 0.3 s in, restarts, fails again

[Service]
Type=simple
ExecStart=/bin/sh -c 'sleep 0.3; exit 3'
Restart=on-failure
RestartSec=0.2
StartLimitBurst=3
"""
DYING = """[Unit]
Description=virt-sandbox-service test: dies 0.2 s in, no restart

[Service]
Type=simple
ExecStart=/bin/sh -c 'sleep 0.2; exit 3'
"""
FAIL_BUDGET = 20.0  # s: boot, READY=1, a restart and the stop, with a wide margin


def host_unit(text: str) -> Iterator[str]:
    """A throw-away unit in the host's /etc/systemd/system, for `create -u`."""
    name = f"{unique_name('vss-readiness-')}.service"
    path = Path("/etc/systemd/system") / name
    path.write_text(text)
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture(params=[RESTARTING, DYING], ids=["restarting", "dying"])
def failing_unit(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from host_unit(request.param)


def state(env: Env, name: str) -> str:
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    return str(rows[name]["state"])


@pytest.mark.root
@pytest.mark.libvirt
def test_start_fails_while_a_unit_fails_after_ready(env: Env, failing_unit: str) -> None:
    name = unique_name("rdy")
    env.run("create", "-u", failing_unit, name, check=True)
    for detach in (["--detach"], []):
        began = time.monotonic()
        proc = env.run("start", *detach, name, timeout=120)
        took = time.monotonic() - began
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert f"{failing_unit} failed in sandbox '{name}'" in proc.stderr
        assert "Traceback" not in proc.stderr and "is ready" not in proc.stdout
        assert took < FAIL_BUDGET
        assert state(env, name) == "stopped"


@pytest.mark.root
@pytest.mark.libvirt
def test_start_of_a_healthy_unit_still_succeeds(env: Env) -> None:
    name = unique_name("rdy")
    env.run("create", "-u", "apache2.service", name, check=True)
    proc = env.run("start", "--detach", name, check=True)
    assert f"sandbox {name} is ready" in proc.stdout and "not up" not in proc.stderr
    proc = env.run("execute", name, "--", "systemctl", "is-active", "apache2.service")
    assert proc.stdout.strip() == "active"
    env.run("stop", name, check=True)


@pytest.fixture
def restarting_unit() -> Iterator[str]:
    yield from host_unit(RESTARTING)


@pytest.mark.root
@pytest.mark.kvm
def test_kvm_start_fails_while_a_unit_restarts_after_ready(env: Env,
                                                          restarting_unit: str) -> None:
    """The guest's `ready` comes once the unit's start job is done: the host asks the guest's
    systemd through the agent too (the apache2 KVM tests check a healthy start)."""
    from .conftest import need
    from .test_kvm import URI
    from .test_run import reachable

    need(reachable(URI), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    name = unique_name("rdyk")
    env.run("create", "-c", URI, "-u", restarting_unit, name, check=True)
    proc = env.run("start", "--detach", name, timeout=240)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert f"{restarting_unit} failed in sandbox '{name}'" in proc.stderr
    assert "Traceback" not in proc.stderr and "is ready" not in proc.stdout
    assert state(env, name) == "stopped"


def test_the_notify_socket_is_made_at_the_low_end_of_the_callers_range() -> None:
    """Under MCS a sandbox (s0:cA,cB) may send only to a socket whose level it dominates: the
    listener's socket is made at s0, not at the administrator's s0-s0:c0.c1023."""
    from virt_sandbox_service.runtime.notify import low_level_context

    assert low_level_context("unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023") == \
        "unconfined_u:unconfined_r:unconfined_t:s0"
    assert low_level_context("system_u:system_r:init_t:s0-s15:c0.c1023") == \
        "system_u:system_r:init_t:s0"
    assert low_level_context("system_u:system_r:svirt_lxc_net_t:s0:c1,c2") is None
    assert low_level_context("unconfined") is None  # AppArmor's, or none at all
    assert low_level_context("") is None
