"""--device (devices.py): the checks of a device path, the refusal for KVM, and on a real LXC
sandbox the node appears and opens inside, where without it there is none."""

from __future__ import annotations

import json
import os
import stat

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
    block = next((f"/dev/{n}" for n in sorted(os.listdir("/dev"))
                  if stat.S_ISBLK(os.lstat(f"/dev/{n}").st_mode)), None)
    if block is not None:
        assert devices.check(block) == devices.Device("block", block)
    assert devices.check_all((TUN, TUN)) == (f"char:{TUN}",)
    assert devices.parse(f"char:{TUN}") == devices.Device("char", TUN)
    with pytest.raises(UserError):
        devices.parse("tun")


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
