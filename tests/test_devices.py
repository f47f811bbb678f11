"""--device (devices.py): the checks of a device path, the refusal for KVM, and on a real LXC
sandbox the node appears and opens inside, where without it there is none."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from virt_sandbox_service import devices
from virt_sandbox_service.create import CreateRequest, validate
from virt_sandbox_service.errors import UserError

from .conftest import Env, need, unique_name

TUN = "/dev/net/tun"


@pytest.mark.parametrize("path,why", [
    ("net/tun", "not a plain path under /dev"),
    ("/dev/../etc/passwd", "not a plain path under /dev"),
    ("/dev//net/tun", "not a plain path under /dev"),
    ("/etc/passwd", "not a plain path under /dev"),
    ("/dev/null", "every sandbox has it already"),
    ("/dev/vss-no-such-device", "no such file or directory"),
    ("/dev/stdin", "is a link to"),
    ("/dev/pts", "is not a device node"),
])
def test_a_bad_device_is_refused_naming_why(path: str, why: str) -> None:
    with pytest.raises(UserError) as e:
        devices.check(path)
    assert why in e.value.message and e.value.hint, e.value


def test_a_device_node_is_kept_with_its_kind() -> None:
    need(os.path.exists(TUN), "the tun driver (/dev/net/tun)")
    assert str(devices.check(TUN)) == f"char:{TUN}"
    in_use = devices.host_in_use()
    block = next((f"/dev/{n}" for n in sorted(os.listdir("/dev"))
                  if stat.S_ISBLK(os.lstat(f"/dev/{n}").st_mode)
                  and _devno(f"/dev/{n}") not in in_use), None)
    if block is not None:
        assert devices.check(block) == devices.Device("block", block)
    assert devices.check_all((TUN, TUN)) == (f"char:{TUN}",)
    assert devices.parse(f"char:{TUN}") == devices.Device("char", TUN)
    with pytest.raises(UserError):
        devices.parse("tun")


def _devno(path: str) -> tuple[int, int]:
    rdev = os.stat(path).st_rdev
    return os.major(rdev), os.minor(rdev)


def test_the_disk_under_the_hosts_root_is_refused() -> None:
    dev = os.stat("/").st_dev
    if os.major(dev) == 0:
        pytest.skip("this host's root is on no block device (an overlay or tmpfs)")
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    names = [dict(line.split("=", 1) for line in (node / "uevent").read_text().split())
             ["DEVNAME"]]
    if (node / "partition").exists():  # the whole disk it is on too
        names.append(node.resolve().parent.name)
    for name in names:
        with pytest.raises(UserError, match="holds a file system the host has mounted"):
            devices.check(f"/dev/{name}")


@pytest.mark.root
def test_raw_memory_is_refused_whatever_its_node_is_named() -> None:
    node = f"/dev/vss-mem-{os.urandom(3).hex()}"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 1))  # /dev/mem's numbers
    try:
        with pytest.raises(UserError, match="raw memory"):
            devices.check(node)
    finally:
        os.unlink(node)


def test_what_the_hosts_mounts_and_swap_are_built_on(tmp_path: Path) -> None:
    """A mounted partition, its disk; a mounted device-mapper device, the partition it is
    built on and that one's disk; a swap partition. Not an unused disk beside them."""
    proc, sysd = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    swap = tmp_path / "swapnode"
    if os.geteuid() == 0:  # /proc/swaps names a node: the swap partition sdc1
        os.mknod(swap, 0o600 | stat.S_IFBLK, os.makedev(8, 33))
    (proc / "self" / "mountinfo").write_text(
        "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n"
        "23 22 253:0 / /srv rw - xfs /dev/mapper/vg-srv rw\n"
        "24 22 0:21 / /proc rw - proc proc rw\n")
    (proc / "swaps").write_text("Filename Type Size Used Priority\n"
                                f"{swap} partition 1 0 -2\n")
    devs = sysd / "devices"

    def block(rel: str, devno: str, partition: bool = False) -> Path:
        d = devs / rel
        d.mkdir(parents=True)
        (d / "dev").write_text(devno + "\n")
        if partition:
            (d / "partition").write_text("1\n")
        link = sysd / "dev" / "block" / devno
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(d)
        return d

    block("sda", "8:0")
    block("sda/sda2", "8:2", partition=True)
    block("sdb", "8:16")
    sdb1 = block("sdb/sdb1", "8:17", partition=True)
    dm = block("dm-0", "253:0")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "sdb1").symlink_to(sdb1)
    block("sdc", "8:32")
    block("sdc/sdc1", "8:33", partition=True)
    block("sdd", "8:48")  # unused
    found = devices.host_in_use(str(proc), str(sysd / "dev" / "block"))
    expected = {(8, 2), (8, 0), (253, 0), (8, 17), (8, 16)}
    if os.geteuid() == 0:
        expected |= {(8, 33), (8, 32)}
    assert found == expected


def test_kvm_sandboxes_get_no_host_device_nodes() -> None:
    req = CreateRequest(name="vm1", uri="qemu:///system", command=("/bin/true",),
                        devices=(TUN,))
    with pytest.raises(UserError) as e:
        validate(req)
    assert "--device is for LXC sandboxes" in e.value.message


@pytest.mark.root
@pytest.mark.libvirt
def test_the_device_appears_and_opens_inside_and_only_with_it(env: Env) -> None:
    need(os.path.exists(TUN), "the tun driver (/dev/net/tun)")
    probe = ("/bin/sh", "-c", f"test -c {TUN} && /usr/bin/python3 -c "
             f"\"open('{TUN}', 'rb+', buffering=0)\" && echo opened")
    names = {True: unique_name("dev"), False: unique_name("nodev")}
    try:
        for given, name in names.items():
            extra = ("--device", TUN) if given else ()
            env.run("create", *extra, name, "--", "/bin/sleep", "infinity", check=True)
            env.run("start", "--detach", name, check=True)
            r = env.run("execute", name, "--", *probe)
            if given:
                assert r.returncode == 0 and r.stdout.strip() == "opened", r
            else:
                assert r.returncode != 0 and "opened" not in r.stdout, r
        shown = json.loads(env.run("inspect", "--json", names[True], check=True).stdout)
        assert shown["devices"] == [{"path": TUN, "kind": "char"}]
        assert f"devices:      {TUN}" in env.run("inspect", names[True], check=True).stdout
    finally:
        for name in names.values():
            env.run("stop", name)
            env.run("delete", name)
