"""-m mounts: each type works inside a running sandbox; bad specs are refused cleanly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from virt_sandbox_service.create import CreateRequest, validate_options
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.mounts import MountType, check_loop_path, parse_mount

from .conftest import Env, unique_name


def test_parse_mounts() -> None:
    assert parse_mount("ram:/var/x=64M").size == 64 * 1024**2
    assert parse_mount("host-bind:/var/x=").source == ""
    assert parse_mount("guest-bind:/opt=/var/x").type is MountType.GUEST_BIND


@pytest.mark.parametrize(("spec", "needle"), [
    ("nonsense", "is not TYPE:DST=SRC"),
    ("disk:/x=/y", "'disk' is not a mount type"),
    ("host-bind:relative=/tmp", "is not an absolute path"),
    ("host-bind:/=/tmp", "would hide the whole root"),
    ("host-bind:/srv=/no/such/dir", "No such file or directory"),
    ("host-image:/mnt=/etc", "is not an image file"),
    ("ram:/var/x=lots", "is not a size"),
    ("guest-bind:/opt=../x", "not an absolute path"),
    (f"host-image:/mnt=/{'a' * 70}", "No such file"),
])
def test_bad_mount_specs(spec: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        parse_mount(spec)


@pytest.mark.root
@pytest.mark.libvirt
def test_every_mount_type_inside_a_running_sandbox(env: Env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    image = Path(f"/var/tmp/{unique_name('vss-img-')}.raw")  # short: see LOOP_NAME_MAX
    try:
        every_mount_type(env, data, image)
    finally:
        image.unlink(missing_ok=True)


def every_mount_type(env: Env, data: Path, image: Path) -> None:
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(data), str(image)], check=True)
    name = unique_name("mnt")
    script = ("cat /srv/f; echo written > /srv/back; cat /mnt/f; "
              "echo mine > /var/scratch/own; ls /opt; "
              "df -k /var/cache/r | tail -1 | awk '{print $2}'")
    env.run("create", "-m", f"host-bind:/srv={data}", "-m", "host-bind:/var/scratch=",
            "-m", f"host-image:/mnt={image}", "-m", "ram:/var/cache/r=8M",
            "-m", "guest-bind:/opt=/var/scratch", name, "--", "/bin/sh", "-c", script,
            check=True)
    proc = env.run("start", name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = [line for line in proc.stdout.splitlines() if "ready" not in line]
    assert out[:4] == ["from the host", "from the host", "own", "8192"]
    assert (data / "back").read_text() == "written\n"  # host-bind is read-write
    assert (env.state(name) / "mounts" / "var%scratch" / "own").read_text() == "mine\n"
    env.run("delete", name, check=True)


def test_long_image_path_is_refused_for_lxc_only(tmp_path: Path) -> None:
    """libvirt loop-mounts an LXC sandbox's host-image (a 63-byte name limit); a KVM
    sandbox's is a disk, with no such limit."""
    long = tmp_path / ("i" * 64)
    long.write_bytes(b"\0" * 1024)
    spec = parse_mount(f"host-image:/mnt={long}")
    with pytest.raises(UserError, match="loop-mounts only paths shorter than 64"):
        check_loop_path(spec)
    lxc = CreateRequest(name="x", command=("/bin/true",), mounts=(spec,))
    with pytest.raises(UserError, match="loop-mounts only paths shorter than 64"):
        validate_options(lxc)


@pytest.mark.root
@pytest.mark.libvirt
def test_mount_target_missing_on_read_only_root(env: Env) -> None:
    before = env.snapshot()
    proc = env.run("create", "-m", "ram:/no-such-top-dir=8M", unique_name("m"), "--", "/bin/true")
    assert proc.returncode == 2
    assert "mount target /no-such-top-dir does not exist" in proc.stderr
    assert env.snapshot() == before
