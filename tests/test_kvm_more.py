"""KVM sandboxes beyond start/stop (TCG here, slow): connect (the login console), clone,
limits, capability drops and -m host-image / guest-bind, against the real libvirtd.

One unit sandbox serves the console, capability, clone and limit checks (each KVM boot
costs 20-60 s on this machine); the generic sandbox checks every mount type.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from virt_sandbox_service import host
from virt_sandbox_service.limits import caps_from_mask

from .conftest import Env, unique_name
from .test_clone import tree_digest
from .test_connect import Terminal, state_of, terminal
from .test_kvm import URI, execute, kvm_domains, qemu_driver  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.root, pytest.mark.kvm]
DROPPED = {"net_raw", "sys_module", "sys_time"}  # --cap-drop net_raw, and two defaults
BOOT = 300  # seconds: two TCG guests booting at once on two shared cores


def config_of(env: Env, name: str) -> dict[str, object]:
    return json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())


def cap_bnd(status_line: str) -> set[str]:
    """'CapBnd:\t000001e0a9acddff' -> the capability names in it."""
    return set(caps_from_mask(int(status_line.split()[1], 16)))


def test_unit_sandbox_console_caps_clone_and_limits(env: Env) -> None:
    name = unique_name("kcon")
    env.run("create", "-c", URI, "-u", "apache2.service", "--cap-drop", "net_raw", name,
            check=True)
    env.run("start", "--detach", name, check=True, timeout=BOOT)
    console_detaches_and_the_sandbox_keeps_running(env, name)
    dropped_caps_are_missing_inside(env, name)
    clone_starts_with_its_own_identity(env, name)
    limits_change_live(env, name)


def login(t: Terminal, name: str, timeout: float = 180) -> None:
    """Press Enter until root's prompt shows: the login waits for it (agetty --wait-cr), and
    what is typed before agetty has opened hvc0 (a guest still booting) is flushed."""
    deadline = time.monotonic() + timeout
    while True:
        t.send("\r")
        try:
            t.expect(rf"root@{name}", timeout=15)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def console_detaches_and_the_sandbox_keeps_running(env: Env, name: str) -> None:
    with terminal(env, "connect", name, rows=30, cols=100) as t:
        t.expect(r"Escape character is \^\]")
        login(t, name)
        # The typed line is echoed as typed ($(hostname)): only the shell's output matches.
        t.send("echo H:$(hostname):$(stty size):\r")
        t.expect(rf"H:{name}:30 100:", timeout=120)  # window size through the guest agent
        t.send("\x1d")
        t.expect(rf"Detached from sandbox {name}; it keeps running")
        assert t.wait() == 0
    assert state_of(env, name) == "running"
    proc = execute(env, name, "systemctl", "is-active", "apache2.service", "vss-console")
    assert proc.stdout.split() == ["active", "active"], proc.stderr


def dropped_caps_are_missing_inside(env: Env, name: str) -> None:
    proc = execute(env, name, "sh", "-c",
                   "grep CapBnd /proc/$(systemctl show -p MainPID --value apache2)/status; "
                   "grep CapBnd /proc/self/status; grep CapBnd /proc/1/status")
    unit, agent, init = proc.stdout.splitlines()
    assert not cap_bnd(unit) & DROPPED and "net_bind_service" in cap_bnd(unit)
    assert not cap_bnd(agent) & DROPPED  # execute gets no more than the confined unit
    assert cap_bnd(init) >= DROPPED  # the guest's systemd keeps them (sys_boot: power-off)
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert set(info["capabilities"]["dropped"]) >= DROPPED
    assert "inside the guest" in info["capabilities"]["source"]


def clone_starts_with_its_own_identity(env: Env, src: str) -> None:
    dst = unique_name("kcln")
    before = tree_digest(env.state(src) / "etc")
    env.run("clone", src, dst, check=True)
    assert dst in kvm_domains()
    env.run("start", "--detach", dst, check=True, timeout=BOOT)
    for n in (src, dst):
        proc = execute(env, n, "sh", "-c", "hostname; cat /etc/machine-id; "
                       "curl -s -o /dev/null -w '%{http_code}' http://localhost/")
        assert proc.stdout.split() == [n, config_of(env, n)["machine_id"], "200"], proc.stderr
    a, b = config_of(env, src), config_of(env, dst)
    assert a["machine_id"] != b["machine_id"] and a["security_label"] != b["security_label"]
    assert b["uri"] == URI
    assert tree_digest(env.state(src) / "etc") == before  # the source is untouched
    env.run("stop", dst, check=True, timeout=120)
    # Bad cases: one clear line each.
    with terminal(env, "connect", dst) as t:
        t.expect(rf"error: sandbox '{dst}' is not running")
        assert t.wait() == 2
    with terminal(env, "connect", "nosuchbox") as t:
        t.expect(r"error: no sandbox named 'nosuchbox'")
        assert t.wait() == 2
    env.run("delete", dst, check=True)
    assert dst not in kvm_domains()


def live_xml(name: str) -> etree._Element:
    conn = libvirt.open(URI)
    try:
        return etree.fromstring(conn.lookupByName(name).XMLDesc(0).encode())
    finally:
        conn.close()


def limits_change_live(env: Env, name: str) -> None:
    blkio = host.blkio_weight_supported()
    if not blkio:
        # This kernel has no weight policy: refused up front, and nothing changed.
        before = live_xml(name)
        proc = env.run("limit", name, "--cpu-weight", "700", "--blkio-weight", "600")
        assert proc.returncode != 0
        assert "--blkio-weight cannot be enforced on this host" in proc.stderr
        assert live_xml(name).findtext("cputune/shares") == before.findtext("cputune/shares")
    proc = env.run("limit", name, "--cpu-weight", "700", "--cpu-quota", "30",
                   *(("--blkio-weight", "600") if blkio else ()), "--memory", "600M")
    assert proc.returncode == 0, proc.stderr
    assert "applies at its next start" in proc.stderr  # a running VM's RAM is fixed
    live = live_xml(name)
    assert (live.findtext("cputune/shares"), live.findtext("cputune/global_quota"),
            live.findtext("blkiotune/weight")) == ("700", "30000", "600" if blkio else None)
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(name)
        cgroup = Path(f"/sys/fs/cgroup/cpu/machine/qemu-{dom.ID()}-{name}.libvirt-qemu")
        inactive = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    finally:
        conn.close()
    if cgroup.is_dir():  # the v1 cpu hierarchy of this host: the kernel has the values
        assert (cgroup / "cpu.shares").read_text().strip() == "700"
        assert (cgroup / "cpu.cfs_quota_us").read_text().strip() == "30000"
    assert inactive.findtext("memory") == str(600 * 1024)  # the next start's RAM
    assert inactive.findtext("cputune/shares") == "700"


def test_generic_sandbox_every_mount_type_and_caps(env: Env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    image = tmp_path / "img.raw"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(data), str(image)], check=True)
    name = unique_name("kmnt")
    script = ("cat /srv/f; echo written > /srv/back; cat /mnt/f; echo img > /mnt/new; "
              "echo mine > /var/scratch/own; ls /opt; grep CapBnd /proc/self/status; "
              "df -k /var/cache/r | tail -1 | awk '{print $2}'")
    env.run("create", "-c", URI, "-m", f"host-bind:/srv={data}", "-m", "host-bind:/var/scratch=",
            "-m", f"host-image:/mnt={image}", "-m", "ram:/var/cache/r=8M",
            "-m", "guest-bind:/opt=/var/scratch", "--cap-drop", "net_raw", name, "--",
            "/bin/sh", "-c", script, check=True)
    proc = env.run("start", name, timeout=BOOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = [line.strip() for line in proc.stdout.splitlines()]
    start = out.index("from the host")
    assert out[start:start + 3] == ["from the host", "from the host", "own"]
    caps_line = next(line for line in out if line.startswith("CapBnd:"))
    assert not cap_bnd(caps_line) & DROPPED and "setuid" in cap_bnd(caps_line)
    assert "8192" in out
    assert (data / "back").read_text() == "written\n"  # host-bind: read-write
    listing = subprocess.run(["debugfs", "-R", "cat /new", str(image)], capture_output=True,
                             text=True, check=True).stdout
    assert listing == "img\n"  # host-image: read-write, written back to the image
    assert (env.state(name) / "mounts" / "var%scratch" / "own").read_text() == "mine\n"
    env.run("delete", name, check=True)


def test_kvm_image_of_another_file_system_is_refused(env: Env, tmp_path: Path) -> None:
    image = tmp_path / "zero.img"
    image.write_bytes(b"\0" * 65536)
    before = env.snapshot()
    proc = env.run("create", "-c", URI, "-m", f"host-image:/mnt={image}", unique_name("kimg"),
                   "--", "/bin/true")
    assert proc.returncode == 2 and "holds no ext2/3/4 file system" in proc.stderr
    assert env.snapshot() == before


def test_generic_sandbox_console_is_a_root_login_beside_the_command(env: Env) -> None:
    name = unique_name("kgcn")
    env.run("create", "-c", URI, "--cap-drop", "net_raw", name, "--", "/bin/sleep", "600",
            check=True)
    env.run("start", "--detach", name, check=True, timeout=BOOT)
    with terminal(env, "connect", name) as t:
        t.expect(r"Escape character is \^\]")
        login(t, name)
        # hvc0 is the shell's controlling terminal (job control on), the command runs beside
        # it, and the login has no more capabilities than the command.
        t.send("echo J:$(tty):$(set -o | grep -c 'monitor.*on'):$(pgrep -c -x sleep):; "
               "grep CapBnd /proc/self/status\r")
        tty, monitor, sleeping, caps = t.expect(r"J:(\S+):(\d):(\d):\r\n(CapBnd:\s+\w+)",
                                                timeout=60)
        assert (tty, monitor, sleeping) == ("/dev/hvc0", "1", "1")
        assert not cap_bnd(caps) & DROPPED
        t.send("\x1d")
        t.expect(rf"Detached from sandbox {name}")
        assert t.wait() == 0
    assert state_of(env, name) == "running"
    env.run("delete", "--force", name, check=True)
