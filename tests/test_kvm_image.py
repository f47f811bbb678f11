"""-i SIZE on KVM sandboxes: the private /etc and /var in an ext4 image the guest gets as a
virtio-blk disk (real libvirtd, qemu under TCG here: each boot takes 10-20 s).

A generic sandbox whose writes to /etc and /var land in the image (read from the host after
the stop, through image.py's private-namespace mount, with no journal to replay), clone,
upgrade, inspect and delete; an apache2 unit sandbox that serves from its image, refuses a
second writer while running, and whose failing unit's log start reads out of the image.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from virt_sandbox_service import image

from .conftest import Env, unique_name
from .test_image import in_image
from .test_kvm import URI, execute, kvm_domains, qemu_driver  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.root, pytest.mark.kvm]
STATE_FILES = [".virt-sandbox-service", "evidence.json", "private.img"]


def features(img: str) -> str:
    out = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True).stdout
    return next(line for line in out.splitlines() if line.startswith("Filesystem features"))


def test_generic_sandbox_writes_land_in_its_image(env: Env) -> None:
    name = unique_name("kimg")
    script = ("echo sandbox > /etc/vss-probe; mkdir -p /var/lib/vss && echo data > "
              "/var/lib/vss/probe; touch /usr/vss-probe 2>/dev/null || echo read-only > "
              "/var/tmp/usr; grep ' /var ' /proc/mounts | cut -d' ' -f3 > /var/tmp/fs; exit 3")
    env.run("create", "-c", URI, "-i", "64M", name, "--", "/bin/sh", "-c", script, check=True)
    state = env.state(name)
    img = state / "private.img"
    assert sorted(p.name for p in state.iterdir()) == STATE_FILES
    proc = env.run("start", name, timeout=240)
    assert proc.returncode == 3, proc.stderr
    # The guest froze the file system before its power cut: nothing left in the journal.
    assert "needs_recovery" not in features(str(img))
    assert in_image(img, "etc/vss-probe") == "sandbox\n"
    assert in_image(img, "var/lib/vss/probe") == "data\n"
    assert in_image(img, "var/tmp/usr") == "read-only\n"
    assert in_image(img, "var/tmp/fs") == "ext4\n"
    assert sorted(p.name for p in state.iterdir()) == STATE_FILES  # no etc/, var/ dirs
    data = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert data["image"]["path"] == str(img) and data["image"]["size_bytes"] == 64 * 1024**2
    assert 0 < data["image"]["used_bytes"] < 64 * 1024**2
    up = env.run("upgrade", name)
    assert up.returncode == 0, up.stderr
    clone = name + "c"
    env.run("clone", name, clone, check=True)
    cimg = env.state(clone) / "private.img"
    assert in_image(cimg, "etc/hostname") == f"{clone}\n"
    assert in_image(cimg, "var/lib/vss/probe") == "data\n"
    assert in_image(img, "etc/hostname") == f"{name}\n"  # the source is only read
    proc = env.run("start", clone, timeout=240)  # the copy boots as itself
    assert proc.returncode == 3, proc.stderr
    for n in (clone, name):
        env.run("delete", n, check=True)
        assert n not in kvm_domains() and not env.state(n).exists()


def test_stopped_generic_sandbox_leaves_its_image_clean(env: Env) -> None:
    """`stop` destroys a generic sandbox's VM: the guest agent freezes the image first.
    Mounts under /var (a tmpfs, a directory of the instance's own) sit on the image's var/."""
    name = unique_name("kims")
    env.run("create", "-c", URI, "-i", "64M", "-m", "ram:/var/cache/vss=8M",
            "-m", "host-bind:/var/lib/shared=", name, "--", "/bin/sh", "-c",
            "grep -q '^tmpfs /var/cache/vss ' /proc/mounts && echo tmpfs > /var/lib/shared/f; "
            "echo kept > /var/tmp/vss-probe; exec sleep 600", check=True)
    env.run("start", "--detach", name, check=True, timeout=240)
    deadline = time.monotonic() + 120
    while execute(env, name, "cat", "/var/tmp/vss-probe").stdout != "kept\n":
        assert time.monotonic() < deadline, "the command never wrote its file"
        time.sleep(1)
    env.run("stop", name, check=True, timeout=120)
    img = env.state(name) / "private.img"
    assert "needs_recovery" not in features(str(img))
    assert in_image(img, "var/tmp/vss-probe") == "kept\n"
    assert (env.state(name) / "mounts" / "var%lib%shared" / "f").read_text() == "tmpfs\n"
    env.run("delete", name, check=True)


def test_unit_sandbox_serves_from_its_image(env: Env) -> None:
    name = unique_name("kimw")
    env.run("create", "-c", URI, "-i", "64M", "-u", "apache2.service", name, check=True)
    img = env.state(name) / "private.img"
    assert sorted(p.name for p in env.state(name).iterdir()) == STATE_FILES
    env.run("start", "--detach", name, check=True, timeout=240)
    proc = execute(env, name, "sh", "-c", "echo from-image > /var/www/html/index.html && "
                   "grep -c ' /var ext4 \\| /etc ext4 ' /proc/mounts")
    assert (proc.returncode, proc.stdout) == (0, "2\n"), proc.stderr
    proc = execute(env, name, "curl", "-sS", "--max-time", "10", "http://localhost/")
    assert (proc.returncode, proc.stdout) == (0, "from-image\n"), proc.stderr
    for cmd in (("clone", name, name + "c"), ("upgrade", name)):
        refused = env.run(*cmd)  # a second writer of the image would corrupt it
        assert refused.returncode == 2 and "is running" in refused.stderr, refused.stderr
    env.run("stop", name, check=True, timeout=120)
    assert in_image(img, "var/www/html/index.html") == "from-image\n"
    # The guest's systemd stopped apache2 itself, and its journal is in the image.
    with image.mounted(str(img)) as root:
        log = subprocess.run(["journalctl", "-D", str(root / "var/log/journal"), "-u",
                              "apache2.service", "--no-pager"],
                             capture_output=True, text=True).stdout
    assert "Stopped" in log or "Deactivated successfully" in log, log[-2000:]
    # A unit that fails: start prints its log, read out of the image once the VM is down.
    with image.mounted(str(img), writable=True) as root, \
            open(root / "etc/apache2/apache2.conf", "a") as f:
        f.write("NotADirective on\n")
    proc = env.run("start", "--detach", name, timeout=240)
    assert proc.returncode == 6, proc.stderr  # EXIT_NOT_CONFIGURED
    assert f"apache2.service failed in sandbox '{name}'" in proc.stderr
    assert "NotADirective" in proc.stderr, proc.stderr
    assert f"execute {name} -- journalctl -u apache2.service" in proc.stderr
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert rows[name]["state"] == "stopped"
    env.run("delete", name, check=True)
    assert name not in kvm_domains() and not env.state(name).exists()
