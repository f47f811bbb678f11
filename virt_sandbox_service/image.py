"""-i SIZE: the private /etc and /var kept in one file-system image instead of directories.

Why an image: the instance's content gets a hard size limit and is one file to move, copy or
back up. How it is built: the trees are made in the state directory exactly as for a
directory-backed sandbox, moved into a staging directory, and `mkfs.ext4 -d STAGING` writes
them into a sparse raw image (<state>/private.img) with no host mount at all; the staging
directory is then removed.

How the sandbox sees it (LXC): libvirt loop-mounts the image at IMAGE_MOUNT, on the sandbox's
/run tmpfs, and mounts everything that belongs under /etc or /var (the shared read-only
/etc/alternatives, -m mounts there) under IMAGE_MOUNT. libvirt cannot mount a subdirectory of
an image, so the sandbox's first process then binds IMAGE_MOUNT/etc on /etc and IMAGE_MOUNT/var
on /var (recursively, with what sits on them) and detaches IMAGE_MOUNT itself.

How a KVM sandbox sees it: the image is a raw virtio-blk disk of the VM (domain/kvm.py);
the guest init mounts it at IMAGE_MOUNT, mounts the same things under it, binds its etc/ and
var/ the same way and detaches IMAGE_MOUNT (initrd/init, vss.mount=private). The guest's
kernel is then the image's only writer; it leaves the file system clean (systemd unmounts it
at power-off; a generic guest, and `stop` through the guest agent, freeze it first), since
`mounted` below reads without replaying a journal.

Reading or changing the content from the host (clone, upgrade): `mounted` loop-mounts the image
in a private mount namespace held by a helper process, and the host reads through
/proc/PID/root. When the helper ends, or the tool dies, the namespace goes and the mount with
it: no host mount is ever left behind. A running sandbox has the image mounted read-write, so
these commands refuse it (two writers would corrupt the file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .config import parse_size
from .errors import HostError, UserError
from .mounts import LOOP_NAME_MAX

IMAGE_FILE = "private.img"
IMAGE_MOUNT = "/run/sandbox-private"
STAGING = ".image-root"
TREES = ("etc", "var")
MIN_SIZE = 1024**2  # mke2fs refuses smaller ones


def image_path(state_dir: str) -> str:
    return os.path.join(state_dir, IMAGE_FILE)


def parse_image_size(text: str) -> int:
    """-i SIZE in bytes (the units of --memory and -m ram:), at least MIN_SIZE."""
    size = parse_size(text, "-i size")
    if size < MIN_SIZE:
        raise UserError(f"-i size '{text}' is too small for a file system",
                        f"give at least {MIN_SIZE // 1024**2}M; a copy of /etc takes some MiB")
    return size


def mkfs_tool() -> str:
    """mkfs.ext4, or a clear error (before any side effect) where e2fsprogs is missing."""
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        path = os.path.join(d, "mkfs.ext4")
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("mkfs.ext4")
    if found:
        return found
    raise UserError("-i needs mkfs.ext4, which is not on this host",
                    "install e2fsprogs, or leave -i out")


def check_image_path(state_dir: str) -> None:
    """libvirt 9.0 loop-mounts only paths shorter than LOOP_NAME_MAX (see mounts.py). LXC
    only: a KVM sandbox's qemu opens the image as a disk, and util-linux's mount (used by
    `mounted`) takes any path."""
    path = image_path(state_dir)
    if len(path.encode()) >= LOOP_NAME_MAX:
        raise UserError(f"the image path {path} is {len(path.encode())} bytes long; libvirt "
                        f"loop-mounts only paths shorter than {LOOP_NAME_MAX}",
                        "use a shorter -p PATH or sandbox name")


def build(state_dir: str, size: int) -> None:
    """Move the private trees into <state>/private.img (sparse, ext4, SIZE bytes). On
    failure the image and the staging directory are gone; the caller's undo removes the
    rest of the state directory."""
    state = Path(state_dir)
    staging = state / STAGING
    image = state / IMAGE_FILE
    staging.mkdir(mode=0o755)
    try:
        for tree in TREES:
            os.rename(state / tree, staging / tree)
        with open(image, "xb") as f:
            f.truncate(size)
        files, used = _tally(staging)
        # mke2fs sizes a small file system's inode table for few files; /etc has many.
        proc = subprocess.run([mkfs_tool(), "-q", "-F", "-t", "ext4", "-m", "0",
                               "-N", str(files * 2 + 1024), "-L", "vss-private",
                               "-d", str(staging), str(image)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            image.unlink(missing_ok=True)
            raise _failed(proc.stderr, size, files, used)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tally(tree: Path) -> tuple[int, int]:
    """(entries, bytes of disk they take) under tree."""
    files = used = 0
    for p in tree.rglob("*"):
        files += 1
        used += p.lstat().st_blocks * 512
    return files, used


def _failed(stderr: str, size: int, files: int, used: int) -> UserError | HostError:
    last = (stderr.strip().splitlines() or ["mkfs.ext4 failed"])[-1]
    if "space" in stderr or "allocate" in stderr or "inode" in stderr.lower():
        return UserError(f"the private /etc and /var do not fit in an image of "
                         f"{size / 1024**2:.0f} MiB ({last})",
                         f"give a larger -i SIZE: they take {used / 1024**2:.1f} MiB in "
                         f"{files} files and directories, plus the file system's own")
    return HostError(f"mkfs.ext4 could not make the image: {last}")


def usage(image: str) -> dict[str, int | None]:
    """What the file system holds (its superblock's counts, read by dumpe2fs without a
    mount; a running sandbox's kernel updates them lazily) and what the sparse file takes
    on the host. None where it cannot be read."""
    out: dict[str, int | None] = {"used_bytes": None, "allocated_bytes": None}
    with contextlib.suppress(OSError):
        out["allocated_bytes"] = os.stat(image).st_blocks * 512
    tool = shutil.which("dumpe2fs") or "/sbin/dumpe2fs"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run([tool, "-h", image], capture_output=True, text=True, timeout=10)
        fields = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
        count, free, bsize = (int(fields[k]) for k in ("Block count", "Free blocks",
                                                        "Block size"))
        out["used_bytes"] = (count - free) * bsize
    return out


def copy(src: str, dst: str) -> None:
    """A sparse copy (a reflink where the file system can share extents)."""
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", src, dst],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostError(f"cannot copy {src}: {proc.stderr.strip()}")


@contextlib.contextmanager
def mounted(image: str, writable: bool = False) -> Iterator[Path]:
    """The image's root, loop-mounted in a private mount namespace only a helper process
    holds; yields the path the host reads it through (/proc/PID/root/...)."""
    where = tempfile.mkdtemp(prefix="vss-image-")
    opts = "loop" if writable else "loop,ro,noload"
    script = f'mount -o {opts} -- "$1" "$2" && echo ready && exec cat >/dev/null'
    helper = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script, "vss-image", image, where],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None
        if helper.stdout.readline().strip() != "ready":
            err = helper.stderr.read().strip() if helper.stderr else ""
            raise HostError(f"cannot mount the image {image}: {err or 'mount failed'}")
        yield Path(f"/proc/{helper.pid}/root{where}")
    finally:
        if helper.stdin:
            helper.stdin.close()  # the helper's cat ends; its namespace and mount go
        helper.wait(timeout=30)
        os.rmdir(where)


def refuse_running(name: str, active: bool, what: str) -> None:
    if active:
        raise UserError(f"sandbox '{name}' keeps its private /etc and /var in an image and "
                        f"is running; {what} would mount it a second time",
                        f"stop it first: virt-sandbox-service stop {name}")
