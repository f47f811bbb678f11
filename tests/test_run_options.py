"""One-shot `run` with create's sandbox options: -m, -N, capabilities and limits, checked by
create's own parsers; the run keeps its guarantees (exact status, streams apart, nothing left
behind, a temporary dir behind `host-bind:DST=` removed after)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from virt_sandbox_service.limits import caps_from_mask

from .conftest import CLI, ROOT, Env, need
from .test_network import V4, test_network  # noqa: F401 (a fixture)
from .test_run import reachable, run_domains

KVM = "qemu:///system"


def run_with(env: Env, uri: str, options: list[str], argv: list[str],
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`run` with options; then checks nothing is left: domain, run dir, state dir."""
    before = set(run_domains(uri))
    proc = subprocess.run([*CLI, "run", "-c", uri, *options, "--", *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT,
                          env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 20
    while set(run_domains(uri)) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(run_domains(uri)) - before, "the run's domain was left behind"
    for d in (env.base / "run", env.base / "state"):
        left = [p.name for p in d.iterdir()] if d.is_dir() else []
        assert not [n for n in left if n.startswith("vss-run-")], f"left in {d}: {left}"
    return proc


@pytest.mark.root
@pytest.mark.libvirt
def test_lxc_run_with_mounts_and_capabilities(env: Env, tmp_path: Path) -> None:
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    script = ("echo written > /mnt/out; "
              "grep ' /tmp/ram ' /proc/mounts | cut -d' ' -f3; df -k /tmp/ram | tail -1; "
              "echo scratch > /tmp/scratch/f && cat /tmp/scratch/f; "
              "grep CapBnd /proc/self/status; cat /srv/hostname; echo err >&2; exit 5")
    proc = run_with(env, "lxc:///", ["-m", f"host-bind:/mnt={host_dir}", "-m",
                                     "ram:/tmp/ram=2M", "-m", "host-bind:/tmp/scratch=",
                                     "-m", "guest-bind:/srv=/etc",
                                     "--cap-drop", "net_raw", "--cap-add", "lease",
                                     "--memory", "256M", "--cpu-weight", "100"],
                    ["/bin/sh", "-c", script])
    assert (proc.returncode, proc.stderr) == (5, "err\n")
    assert (host_dir / "out").read_text() == "written\n"  # the write landed on the host
    lines = proc.stdout.splitlines()
    assert lines[0] == "tmpfs" and lines[1].split()[1] == "2048"
    assert lines[2] == "scratch"
    caps = caps_from_mask(int(lines[3].split()[1], 16))
    assert "net_raw" not in caps and "sys_module" not in caps  # asked for, and the default
    assert "lease" in caps  # --cap-add gives it to the command
    assert "net_admin" not in caps and "sys_admin" not in caps  # the command runs confined
    assert lines[4] == Path("/etc/hostname").read_text().strip()  # guest-bind: its /etc at /srv


@pytest.mark.root
@pytest.mark.libvirt
def test_lxc_run_on_a_network_sees_its_address(
        env: Env, test_network: tuple[str, int]) -> None:  # noqa: F811
    net, subnet = test_network
    address = V4.format(subnet, 40)
    proc = run_with(env, "lxc:///", ["-N", f"source={net},address={address}/24"],
                    ["/bin/sh", "-c", "ip -o -4 addr show | grep -v ' lo '"])
    assert proc.returncode == 0, proc.stderr
    assert f"inet {address}/24" in proc.stdout


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize(("options", "needle"), [
    (["-m", "bogus:/x=/y"], "'bogus' is not a mount type"),
    (["-m", "host-bind:/no/such/dir=/tmp"], "mount target /no/such/dir does not exist"),
    (["-m", "host-bind:/mnt=/no/such/src"], "mount source /no/such/src"),
    (["-N", "address=10.0.0.2/24"], "has no source=NET"),
    (["-N", "source=default,dhcp"], "-N ...,dhcp needs a unit sandbox"),
    (["-N", "source=no-such-net-xyz"], "libvirt network 'no-such-net-xyz' does not exist"),
    (["--cap-drop", "nope"], "'nope' is not the name of a Linux capability"),
    (["--syscall-allow", "mkdir"], "'mkdir' is not a group or call the sandbox denies"),
    (["--cpu-weight", "1"], "--cpu-weight 1 is out of range"),
    (["--blkio-weight", "x"], "--blkio-weight 'x' is not a whole number"),
    (["--tasks", "100"], "--tasks is not available for run yet"),
])
def test_bad_run_options_are_one_clear_error(env: Env, options: list[str], needle: str) -> None:
    before = env.snapshot()
    proc = run_with(env, "lxc:///", options, ["/bin/true"])
    assert proc.returncode == 125
    first, *rest = proc.stderr.splitlines()
    assert first.startswith("virt-sandbox-service: error: ") and needle in first, proc.stderr
    assert all(line.startswith("virt-sandbox-service: hint: ") for line in rest)
    assert env.snapshot() == before


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.kvm
def test_kvm_run_with_a_mount_and_a_network(
        env: Env, tmp_path: Path, test_network: tuple[str, int]) -> None:  # noqa: F811
    need(reachable(KVM), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    net, subnet = test_network
    address = V4.format(subnet, 41)
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    script = ("echo from-vm > /mnt/out; echo x > /tmp/scratch/f && cat /tmp/scratch/f; "
              "ip -o -4 addr show | grep -v ' lo '; grep CapBnd /proc/self/status; exit 6")
    proc = run_with(env, KVM, ["-m", f"host-bind:/mnt={host_dir}", "-m",
                               "host-bind:/tmp/scratch=", "-N",
                               f"source={net},address={address}/24", "--cap-drop", "net_raw"],
                    ["/bin/sh", "-c", script])
    assert proc.returncode == 6, proc.stderr
    assert (host_dir / "out").read_text() == "from-vm\n"
    lines = proc.stdout.splitlines()
    assert lines[0] == "x"
    assert f"inet {address}/24" in lines[1]
    caps = caps_from_mask(int(lines[2].split()[1], 16))
    assert "net_raw" not in caps and "sys_module" not in caps and "net_admin" in caps


@pytest.mark.root
@pytest.mark.kvm
def test_kvm_run_refuses_what_kvm_cannot_do(env: Env) -> None:
    proc = env.run("run", "-c", KVM, "--tasks", "100", "--", "/bin/true")
    assert proc.returncode == 125
    assert "--tasks is for LXC sandboxes" in proc.stderr.splitlines()[0]
