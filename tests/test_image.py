"""-i SIZE: the private /etc and /var in a file-system image instead of directories.

Real: an apache2 sandbox whose writes land in its image and survive a restart; clone and
upgrade through a private-namespace mount; delete leaves nothing; bad sizes and too-small
images fail cleanly with nothing left. Pure: size parsing, the mount order, the tool check.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service import image
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.plan import Mount, image_mounts

from .conftest import Env, unique_name
from .test_reliability import http_get, init_pid

# --- pure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [("64M", 64 * 1024**2), ("1GiB", 1024**3),
                                            ("2048K", 2048 * 1024), ("8MiB", 8 * 1024**2)])
def test_sizes_parse_like_memory_sizes(text: str, size: int) -> None:
    assert image.parse_image_size(text) == size


@pytest.mark.parametrize(("text", "needle"), [
    ("", "'' is not a size"), ("64X", "'64X' is not a size"), ("1.5G", "not a size"),
    ("0", "must be greater than zero"), ("512K", "is too small for a file system"),
    ("-5M", "not a size"),
])
def test_bad_sizes(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        image.parse_image_size(text)


def test_missing_mkfs_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.os, "access", lambda *_a: False)
    monkeypatch.setattr(image.shutil, "which", lambda *_a: None)
    with pytest.raises(UserError, match=r"-i needs mkfs\.ext4") as e:
        image.mkfs_tool()
    assert e.value.hint and "e2fsprogs" in e.value.hint


def test_long_image_paths_are_refused() -> None:
    image.check_image_path("/var/lib/virt-sandbox-service/web1")
    with pytest.raises(UserError, match="loop-mounts only paths shorter than 64"):
        image.check_image_path("/var/lib/virt-sandbox-service/" + "w" * 30)


def test_image_replaces_the_tree_binds_and_carries_their_mounts() -> None:
    mounts = (Mount("/", "/", readonly=True), Mount("/etc", "/s/etc"), Mount("/var", "/s/var"),
              Mount("/etc/ssl/certs", "/etc/ssl/certs", readonly=True),
              Mount("/run", "", tmpfs_kib=1), Mount("/run/sandbox-host", "/r"),
              Mount("/var/cache/x", "", tmpfs_kib=2), Mount("/srv", "/srv"))
    got = [(m.target, m.source, m.image) for m in image_mounts(mounts, "/s/private.img")]
    assert got == [("/", "/", False), ("/run", "", False),
                   ("/run/sandbox-private", "/s/private.img", True),
                   ("/run/sandbox-private/etc/ssl/certs", "/etc/ssl/certs", False),
                   ("/run/sandbox-private/var/cache/x", "", False),
                   ("/run/sandbox-host", "/r", False), ("/srv", "/srv", False)]


# --- real -----------------------------------------------------------------------------------


@pytest.fixture
def short(env: Env) -> Iterator[Path]:
    """A state parent with a short path: libvirt loop-mounts only paths under 64 bytes."""
    path = Path(f"/var/tmp/vi{secrets.token_hex(3)}")
    path.mkdir()
    yield path
    for cfg in (env.base / "config" / "sandboxes").glob("*.json"):
        env.run("delete", "--force", cfg.stem)
    shutil.rmtree(path, ignore_errors=True)


def loops_of(path: Path) -> str:
    return subprocess.run(["losetup", "-j", str(path)], capture_output=True,
                          text=True).stdout


def in_image(img: Path, rel: str) -> str:
    with image.mounted(str(img)) as root:
        return (root / rel).read_text()


@pytest.mark.root
@pytest.mark.libvirt
def test_apache2_in_an_image(env: Env, short: Path) -> None:
    name = unique_name("img")
    env.run("create", "-p", str(short), "-i", "64M", "-u", "apache2.service", name, check=True)
    state = short / name
    img = state / "private.img"
    assert sorted(p.name for p in state.iterdir()) == [
        ".virt-sandbox-service", "evidence.json", "loader", "private.img"]
    assert img.stat().st_size == 64 * 1024**2
    assert img.stat().st_blocks * 512 < 32 * 1024**2  # sparse
    env.run("start", "--detach", name, check=True)
    env.run("execute", name, "--", "sh", "-c", "echo from-image > /var/www/html/index.html",
            check=True)
    assert http_get(init_pid(name)) == ("200", "from-image\n")
    ro = env.run("execute", name, "--", "touch", "/etc/ssl/certs/vss-probe")
    assert ro.returncode != 0  # the shared read-only tree stays read-only through the bind
    data = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert data["image"]["path"] == str(img) and data["image"]["size_bytes"] == 64 * 1024**2
    assert 0 < data["image"]["used_bytes"] < 64 * 1024**2
    for cmd in (("clone", name, name + "c"), ("upgrade", name)):
        refused = env.run(*cmd)  # a second mount of an image in use would corrupt it
        assert refused.returncode == 2 and "is running" in refused.stderr, refused.stderr
    env.run("stop", name, check=True)
    assert not loops_of(img)  # the loop device went with the container
    assert in_image(img, "var/www/html/index.html") == "from-image\n"
    assert in_image(img, "etc/hostname") == f"{name}\n"
    env.run("start", "--detach", name, check=True)
    assert http_get(init_pid(name)) == ("200", "from-image\n")  # survives a restart
    env.run("stop", name, check=True)
    up = env.run("upgrade", name, check=True)
    assert "unchanged" in up.stdout and "instance-removed" not in up.stdout
    clone = name + "c"
    env.run("clone", name, clone, check=True)
    cimg = short / clone / "private.img"
    assert in_image(cimg, "etc/hostname") == f"{clone}\n"
    assert in_image(cimg, "var/www/html/index.html") == "from-image\n"
    assert in_image(img, "etc/hostname") == f"{name}\n"  # the source is only read
    env.run("delete", clone, check=True)
    env.run("delete", name, check=True)
    assert list(short.iterdir()) == []
    assert not loops_of(img)


@pytest.mark.root
@pytest.mark.libvirt
def test_failed_unit_log_is_read_out_of_the_image(env: Env, short: Path) -> None:
    """The journal is in the image: start stops the sandbox, then prints the unit's log."""
    name = unique_name("img")
    env.run("create", "-p", str(short), "-i", "64M", "-u", "apache2.service", name, check=True)
    img = short / name / "private.img"
    with image.mounted(str(img), writable=True) as root, \
            open(root / "etc/apache2/apache2.conf", "a") as f:
        f.write("NotADirective on\n")
    proc = env.run("start", "--detach", name, timeout=120)
    assert proc.returncode == 6, proc.stderr  # EXIT_NOT_CONFIGURED
    assert "NotADirective" in proc.stderr, proc.stderr
    assert f"execute {name} -- journalctl -u apache2.service" in proc.stderr
    assert not loops_of(img)
    env.run("delete", name, check=True)


@pytest.mark.root
@pytest.mark.libvirt
def test_generic_sandbox_with_user_in_an_image(env: Env, short: Path) -> None:
    name = unique_name("img")
    env.run("create", "-p", str(short), "-i", "32M", "-U", "5000", name, "--", "/bin/sh",
            "-c", "id -u > $HOME/id; echo x > $HOME/y", check=True)
    proc = env.run("start", name, timeout=90)
    assert proc.returncode == 0, proc.stderr
    img = short / name / "private.img"
    assert in_image(img, "var/home/u5000/id") == "5000\n"
    assert in_image(img, "var/home/u5000/y") == "x\n"
    assert not (short / name / "var").exists()


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize(("size", "needle"), [
    ("2M", "do not fit in an image of 2 MiB"),
    ("64X", "-i size '64X' is not a size"),
    ("0", "-i size '0' must be greater than zero"),
    ("100K", "is too small for a file system"),
])
def test_bad_or_too_small_sizes_leave_nothing(env: Env, short: Path, size: str,
                                              needle: str) -> None:
    before = env.snapshot()
    proc = env.run("create", "-p", str(short), "-i", size, unique_name("img"), "--",
                   "/bin/true")
    assert proc.returncode == 2  # a bad size, or one found too small by trying (UserError)
    assert needle in proc.stderr.splitlines()[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(short.iterdir()) == []
    after = env.snapshot()
    # A too-small image is found by trying: the rollback keeps only the tool's own (empty)
    # config directories, as any create that failed midway does.
    assert after["domains"] == before["domains"]
    assert set(after["files"]) - set(before["files"]) <= {"config", "config/sandboxes"}


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize(("options", "needle"), [
    ((), "loop-mounts only paths shorter than 64"),  # the env's own state dir is long
    (("-c", "qemu:///system", "--userns"), "--userns is for LXC sandboxes"),
])
def test_refusals_leave_nothing(env: Env, options: tuple[str, ...], needle: str) -> None:
    before = env.snapshot()
    proc = env.run("create", *options, "-i", "64M", unique_name("img"), "--", "/bin/true")
    assert proc.returncode == 2
    assert needle in proc.stderr.splitlines()[0], proc.stderr
    assert env.snapshot() == before


@pytest.mark.root
def test_private_mount_leaves_no_host_mount(tmp_path: Path) -> None:
    img = tmp_path / "t.img"
    (tmp_path / "root" / "etc").mkdir(parents=True)
    (tmp_path / "root" / "etc" / "f").write_text("x\n")
    with open(img, "wb") as f:
        f.truncate(8 * 1024**2)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tmp_path / "root"), str(img)],
                   check=True)
    with image.mounted(str(img), writable=True) as root:
        assert (root / "etc" / "f").read_text() == "x\n"
        (root / "etc" / "g").write_text("y\n")
        assert str(img) not in Path("/proc/self/mountinfo").read_text()
        assert loops_of(img)
    assert not loops_of(img)
    assert in_image(img, "etc/g") == "y\n"
    assert not Path(tempfile.gettempdir(), root.name).exists()  # its mount point is gone
