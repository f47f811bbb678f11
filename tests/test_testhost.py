"""The standard test host tier: what this machine cannot be, booted as a VM and tested inside.

tests/testhost.py boots Debian 12 under QEMU (TCG) with systemd as PID 1, pure cgroup v2,
libvirtd started by systemd, and AppArmor or SELinux (enforcing) active; the project is
installed inside by its own scripts/setup.sh. Each guest runs a selection of the tests that
need such a host (INNER, marked `standard_host` where they cannot run anywhere else), and the
host side checks what needs the VM from outside: a reboot, and that nothing is left behind.

Times (boot, set-up, each selection) are printed at the end and recorded in the README.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import need
from .testhost import GUEST_TREE, PROJECT, TestHost, build_image

pytestmark = [pytest.mark.testhost, pytest.mark.root]

# What each guest runs inside, and why there. Under TCG each test costs about ten times what
# it does here, so a guest runs only what its host adds: what this machine runs already
# (systemd-analyze on the generated units; the escape attempts of the generic and `run`
# sandboxes, whose layers the unit and execute contexts share) is left out, and what both
# guests would run only once (cgroup v2, --tasks, a libvirtd restart, --userns's finding:
# the AppArmor guest).
ESCAPES = "tests/test_escapes.py"
LIFECYCLE = "tests/test_systemd_lifecycle.py"
LIFECYCLE_HERE_ONLY = (
    "test_generated_unit_passes_systemd_analyze_verify",
    "test_a_config_that_does_not_parse_fails_once",
    "test_list_shows_the_host_units_state",
    "test_enabled_sandbox_comes_back_after_reboot",
    "test_reload_reaches_the_inner_service",
    "test_broken_inner_service_fails_start_with_its_reason",
    "test_stop_while_starting_leaves_no_domain",
)
INNER = {
    # Debian/Ubuntu's default: the lifecycle against the real PID 1, cgroup v2, --tasks,
    # --userns's finding, libvirt's AppArmor with our profile, and the escape suite under it.
    # The lifecycle there is what the host's PID 1, pure cgroup v2 and AppArmor act on: a
    # start and a clean stop, and a killed init restarted by systemd. Left out: what runs the
    # same against the systemd test host here (a unit whose start fails, a config that does
    # not parse, list's unit states, reload, a stop while starting: our tool and the same
    # systemd 252 decide them), and the reboot, which the guest's own real reboot tests
    # below. Each costs 40-65 s under TCG.
    # Also a live bandwidth change on a KVM sandbox (libvirt's tc on its tap; this machine's
    # kernel lacks sfq and police), under TCG within TCG: about 45 s.
    "apparmor": ("tests/test_standard_host.py", "tests/test_systemd_lifecycle.py",
                 "tests/test_escapes.py",
                 "tests/test_tuning.py::test_limit_changes_a_running_kvm_sandboxs_rates_live",
                 *(arg for test in LIFECYCLE_HERE_ONLY
                   for arg in ("--deselect", f"{LIFECYCLE}::{test}")),
                 "--deselect", f"{ESCAPES}::test_every_attempt_is_refused_inside[generic]",
                 "--deselect", f"{ESCAPES}::test_every_attempt_is_refused_inside[run]"),
    # Fedora/RHEL's way: MCS labels enforced, the policy module loaded; the sandboxes run.
    # Also libvirt's tc shaping, which this machine's kernel lacks (sfq, police): a transfer
    # each way, held to its rate, and limit's new rates in an LXC sandbox's definition.
    "selinux": ("tests/test_standard_host.py",
                "tests/test_tuning.py::test_a_bandwidth_limited_transfer_is_held_to_its_rate",
                "tests/test_tuning.py::test_limit_changes_an_lxc_sandboxs_rates_for_its_next_"
                "start",
                "--deselect", "tests/test_standard_host.py::test_tasks_limit_holds_on_cgroup_v2",
                "--deselect", "tests/test_standard_host.py::"
                "test_the_memory_limit_sits_above_the_sandboxs_cgroup_namespace",
                "--deselect", "tests/test_standard_host.py::"
                "test_a_sandbox_survives_a_libvirtd_restart",
                # libvirt's user-namespace finding; under SELinux its raw domain fails sooner,
                # refused /.oldroot in the host's root (as it must be).
                "--deselect", "tests/test_standard_host.py::"
                "test_userns_is_refused_where_libvirt_fails_and_the_raw_failure_is_libvirts"),
}
TIMINGS: dict[str, float] = {}
SLOWEST: dict[str, list[str]] = {}
# TCG runs the guest about ten times slower than this machine: the few tests that bound a
# time (a clean stop is not a destroy after a timeout) scale their budgets by it.
TIME_SCALE = 10


def _unavailable() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)"
    if os.geteuid() != 0:
        return "the test host image is built as root (mmdebstrap, setfiles, mkfs.ext4 -d)"
    return None


@pytest.fixture(scope="module", params=sorted(INNER))
def guest(request: pytest.FixtureRequest) -> Iterator[TestHost]:
    reason = _unavailable()
    need(reason is None, reason or "")
    lsm = str(request.param)
    t0 = time.monotonic()
    cache = build_image()
    TIMINGS.setdefault("image (build or reuse)", time.monotonic() - t0)
    host = TestHost(cache, lsm)
    try:
        host.boot()
        TIMINGS[f"{lsm} boot"] = host.boot_seconds
        host.copy_in(PROJECT)
        t0 = time.monotonic()
        host.ssh(f"cd {GUEST_TREE} && bash scripts/setup.sh", timeout=900)
        TIMINGS[f"{lsm} set-up"] = time.monotonic() - t0
        yield host
    finally:
        host.close()
        left = [str(host.rundir)] if host.rundir.exists() else []
        if host.proc is not None and host.proc.poll() is None:
            left.append(f"QEMU pid {host.proc.pid}")
        _report(request)
        assert not left, f"the test host left {left} behind"


def _report(request: pytest.FixtureRequest) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not TIMINGS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\nstandard test host timings: " +
                            ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
        for lsm, slowest in SLOWEST.items():
            reporter.write_line(f"slowest inside the {lsm} guest:\n" + "\n".join(slowest))


def test_the_selection_passes_inside(guest: TestHost) -> None:
    """The guest's selection, with VSS_REQUIRE_ALL=1: inside, nothing may skip for a missing
    part (the other LSM's tests skip by their marks, naming the guest that runs them)."""
    t0 = time.monotonic()
    env = (f"VSS_TESTHOST_LSM={guest.lsm} VSS_REQUIRE_ALL=1 VSS_ALLOW_DAEMON_RESTART=1 "
           f"VSS_TIME_SCALE={TIME_SCALE}")
    r = guest.ssh(f"cd {GUEST_TREE} && {env} .venv/bin/python -m pytest -q -p no:cacheprovider "
                  f"--durations=12 {shlex.join(INNER[guest.lsm])} 2>&1", timeout=2400,
                  check=False)
    TIMINGS[f"{guest.lsm} selection"] = time.monotonic() - t0
    # Its slowest tests, printed with the timings: where a guest's minutes go.
    lines = r.stdout.splitlines()
    SLOWEST[guest.lsm] = [x for x in lines if x.split()[1:2] in (["call"], ["setup"],
                                                                 ["teardown"])][:12]
    tail = "\n".join(lines[-60:])
    assert r.returncode == 0, f"inside the {guest.lsm} test host:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail


def test_an_enabled_sandbox_comes_back_after_the_hosts_reboot(guest: TestHost) -> None:
    """`systemctl enable` of a sandbox's unit, then a real reboot of the host: it is running
    and serving again once the host is up, started by the host's own systemd at boot."""
    if guest.lsm != "apparmor":
        pytest.skip("one reboot is enough: the AppArmor guest does it")
    name = "rebootweb"
    guest.ssh(f"virt-sandbox-service create -u apache2.service {name} && "
              f"echo served-by-{name} > /var/lib/virt-sandbox-service/{name}/var/www/html/"
              f"index.html && systemctl enable --now {name}_sandbox.service", timeout=600)
    try:
        TIMINGS["guest reboot"] = guest.reboot()
        deadline = time.monotonic() + 300
        while True:
            state = guest.ssh(f"systemctl is-active {name}_sandbox.service", check=False)
            if state.stdout.strip() in ("active", "failed") or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert state.stdout.strip() == "active", guest.ssh(
            f"journalctl -b -u {name}_sandbox.service --no-pager | tail -30", check=False).stdout
        page = guest.ssh(f"virt-sandbox-service execute {name} -- curl -sS -m 10 "
                         "http://localhost/", check=False)
        assert f"served-by-{name}" in page.stdout, page
    finally:
        guest.ssh(f"systemctl disable --now {name}_sandbox.service; "
                  f"virt-sandbox-service delete --force {name}", check=False, timeout=300)


def test_the_package_installs_and_runs_there(guest: TestHost, built_deb: Path) -> None:
    """`make deb`'s package, installed with dpkg on a standard host (its Depends are there
    from set-up; the guest has no network), runs as /usr/bin/virt-sandbox-service with
    Debian's python3: create, start, serve, stop, delete; then purged, it leaves nothing."""
    if guest.lsm != "apparmor":
        pytest.skip("the package is tried once, in the AppArmor guest")
    t0 = time.monotonic()
    guest.ssh("cat > /tmp/vss.deb", input=built_deb.read_bytes())
    tool, name = "/usr/bin/virt-sandbox-service", "debweb"
    try:
        guest.ssh("dpkg -i /tmp/vss.deb", timeout=300)
        guest.ssh(f"{tool} create -u apache2.service {name} && "
                  f"echo served-by-deb > /var/lib/virt-sandbox-service/{name}/var/www/html/"
                  f"index.html && {tool} start --detach {name}", timeout=600)
        page = guest.ssh(f"{tool} execute {name} -- curl -sS -m 10 http://localhost/",
                         check=False)
        assert "served-by-deb" in page.stdout, page
        unit = guest.ssh(f"systemctl cat {name}_sandbox.service", check=False).stdout
        assert f"ExecStart={tool} " in unit, unit
        guest.ssh(f"{tool} stop {name} && {tool} delete {name}", timeout=300)
    finally:
        guest.ssh(f"{tool} delete --force {name}; dpkg -P virt-sandbox-service; "
                  "rm -f /tmp/vss.deb", check=False, timeout=300)
        TIMINGS["package"] = time.monotonic() - t0
    left = guest.ssh(f"ls {tool} /usr/lib/python3/dist-packages/virt_sandbox_service "
                     "/var/lib/virt-sandbox-service/" + name, check=False)
    assert left.returncode != 0 and not left.stdout.strip(), left


def test_the_image_is_not_changed_by_a_run() -> None:
    """Every guest write went to QEMU's throw-away snapshot: the cached image's content is what
    the builder wrote (its mtime is the build's)."""
    need(_unavailable() is None, _unavailable() or "")
    cache = build_image()
    image = cache / "image.raw"
    built = (cache / "inputs").stat().st_mtime
    assert image.stat().st_mtime <= built + 1, "a guest wrote to the cached image"
    # What each guest leaves (its run directory, its QEMU) is checked as it closes: the
    # `guest` fixture's teardown fails otherwise.
