"""-m TYPE:DST=SRC mount specs: parsed and checked here, turned into Mounts by plan.py.

A spec is parsed once, where it enters (the command line, a sandbox file, a saved config),
into a MountSpec; everything after works on that. Its `text` is its canonical spelling, the
form a config saves: parsing it again gives an equal spec.

    host-bind:/dst=/src    the host's /src, read-write, at /dst (hostsources.py: which)
    host-bind:/dst=        an empty directory of the instance's own (kept in its state dir)
    host-image:/dst=/img   a raw file-system image (e.g. ext4) mounted through a loop device
    guest-bind:/dst=/src   a path of the sandbox itself, bound at another place in it
    ram:/dst=SIZE          a tmpfs of SIZE (K, M, G; KiB, MiB, GiB)
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import hostsources
from .config import parse_size, validate_abs_path
from .errors import UserError

if TYPE_CHECKING:
    from .config import SandboxConfig
    from .plantypes import Mount

LOOP_NAME_MAX = 64  # LO_NAME_SIZE in linux/loop.h, with its terminating NUL
HINT = ("write -m TYPE:DST=SRC with TYPE host-bind, host-image, guest-bind or ram, "
        "e.g. -m host-bind:/srv/data=/data or -m ram:/var/cache/x=64M")


class MountType(enum.StrEnum):
    HOST_BIND = "host-bind"
    HOST_IMAGE = "host-image"
    GUEST_BIND = "guest-bind"
    RAM = "ram"


@dataclass(frozen=True)
class MountSpec:
    type: MountType
    target: str
    source: str  # host path, sandbox path (guest-bind), "" (fresh dir) or "" for ram
    size: int = 0  # bytes, ram only

    @property
    def text(self) -> str:
        value = self.size if self.type is MountType.RAM else self.source
        return f"{self.type}:{self.target}={value}"


def parse_mount(text: str) -> MountSpec:
    """A spec as a user gives it: its syntax, then the host source it names."""
    spec = parse_mount_syntax(text)
    if spec.source and spec.type is not MountType.GUEST_BIND:
        _check_host_source(text, spec.type, spec.source)
        # Stored resolved: each start checks it still is that path (hostsources.py).
        spec = dataclasses.replace(spec, source=hostsources.resolve(text, spec.source))
    return spec


def parse_mount_syntax(text: str) -> MountSpec:
    """The spec's syntax only (pure): a saved config's spec is not checked against the host
    again each time it is read."""
    kind, colon, rest = text.partition(":")
    target, eq, source = rest.partition("=")
    if not colon or not eq:
        raise UserError(f"mount '{text}' is not TYPE:DST=SRC", HINT)
    try:
        mtype = MountType(kind)
    except ValueError:
        raise UserError(f"'{kind}' is not a mount type (host-bind, host-image, guest-bind, "
                        "ram)", HINT) from None
    target = validate_abs_path(target, f"mount target in '{text}'")
    if target == "/":
        raise UserError(f"mount '{text}' would hide the whole root", "mount below /")
    if mtype is MountType.RAM:
        return MountSpec(mtype, target, "", parse_size(source, f"size in '{text}'"))
    if mtype is MountType.HOST_BIND and source == "":
        return MountSpec(mtype, target, "")
    return MountSpec(mtype, target, validate_abs_path(source, f"mount source in '{text}'"))


def _check_host_source(text: str, mtype: MountType, source: str) -> None:
    try:
        st = os.stat(source)
    except OSError as e:
        raise UserError(f"mount source {source} in '{text}': {e.strerror}",
                        "the source is a path on the host: make it first, or give one that "
                        "exists") from None
    if mtype is MountType.HOST_IMAGE and not stat.S_ISREG(st.st_mode):
        raise UserError(f"mount source {source} in '{text}' is not an image file",
                        "host-image takes a raw file-system image, e.g. made with mkfs.ext4")


def check_loop_path(spec: MountSpec) -> None:
    """An LXC sandbox's host-image is loop-mounted by libvirt (a KVM one is a disk instead).
    Seen with libvirt 9.0: the loop device's backing-file name field holds 63 bytes, and a
    longer path fails the start with a misleading "No such file or directory"."""
    size = len(spec.source.encode())
    if spec.type is MountType.HOST_IMAGE and size >= LOOP_NAME_MAX:
        raise UserError(f"image path {spec.source} is {size} bytes long; libvirt "
                        f"loop-mounts only paths shorter than {LOOP_NAME_MAX}",
                        "move the image, or link it from a shorter path")


def user_mounts(config: SandboxConfig) -> list[Mount]:
    """The sandbox's -m mounts as the plan's Mounts (guest-bind ones are the init's own)."""
    # The plan's types only here: `start` reads mount specs, never plans (issue 16).
    from .plantypes import Mount

    out = []
    for spec in config.mounts:
        why = f"-m {spec.type.value}"
        if spec.type is MountType.RAM:
            out.append(Mount(spec.target, "", tmpfs_kib=max(spec.size // 1024, 1), reason=why))
        elif spec.type is MountType.HOST_IMAGE:
            out.append(Mount(spec.target, spec.source, image=True, reason=why))
        elif spec.type is MountType.HOST_BIND:
            source = spec.source or mount_dir(config.state_dir, spec.target)
            out.append(Mount(spec.target, source, reason=why))
    return out


def mount_dir(state: str, target: str) -> str:
    """The instance's own directory behind an empty-source host-bind mount."""
    return os.path.join(state, "mounts", target.strip("/").replace("/", "%"))
