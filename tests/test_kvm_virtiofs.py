"""The KVM guest's root over virtiofs (where the host has virtiofsd): read-only for the guest
even if its root remounts it, through libexec/virtiofsd-ro's private read-only mount
namespace (qemu 7.2's virtiofsd has no read-only mode)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from virt_sandbox_service import host

from .conftest import Env, need
from .test_run import reachable, sandbox_run

WRAPPER = Path(__file__).resolve().parent.parent / "libexec" / "virtiofsd-ro"


@pytest.mark.root
def test_wrapper_runs_its_command_with_every_mount_read_only(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    proc = subprocess.run([str(WRAPPER), str(probe)], capture_output=True, text=True,
                          env={**os.environ, "VSS_VIRTIOFSD": "/usr/bin/touch"})
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr, proc.stderr
    assert not probe.exists()
    # The host's own mounts are untouched: the same write works outside.
    probe.write_text("host\n")


@pytest.mark.root
@pytest.mark.kvm
def test_guest_cannot_write_the_host_root_even_after_remounting(env: Env) -> None:
    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    need(bool(host.virtiofs_wrapper()), "needs /usr/lib/qemu/virtiofsd (qemu-system-common)")
    script = ("grep ' / ' /proc/mounts | cut -d' ' -f3; mount -o remount,rw / 2>/dev/null; "
              "touch /usr/vss-virtiofs-probe 2>/dev/null && echo WROTE; exit 0")
    proc = sandbox_run(env, "qemu:///system", "/bin/sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["virtiofs"]
    assert not os.path.exists("/usr/vss-virtiofs-probe")


def test_an_enforcing_libvirtd_profile_sends_the_root_over_9p(tmp_path: Path) -> None:
    """Under Debian's AppArmor profile for libvirtd, libvirtd may start virtiofsd only from
    qemu's path, not our wrapper: the root goes over 9p there (qemu keeps it read-only)."""
    from virt_sandbox_service.kvmhost import libvirtd_confined

    profiles = tmp_path / "profiles"
    profiles.write_text("libvirt-0b1c (enforce)\nlibvirtd (enforce)\n/usr/bin/man (enforce)\n")
    assert libvirtd_confined(str(profiles))
    profiles.write_text("libvirtd (complain)\nlibvirtd//qemu_bridge_helper (enforce)\n")
    assert not libvirtd_confined(str(profiles))
    assert not libvirtd_confined(str(tmp_path / "none"))
