"""The host paths a sandbox is given (-m host-bind:DST=SRC, -m host-image:DST=IMG): which may
be given at all, and that each is still the path that was checked when the sandbox starts.

A sandbox's root is assumed hostile. Whatever it is given read-write it can rewrite, and so it
can replace anything *below* such a directory with a symlink pointing anywhere on the host.
libvirt and qemu follow a mount source's path on the host at every start. A source below a
writable one is therefore the sandbox's to redirect: plant `sub -> /` in the outer directory
and the next start binds the host's root, read-write, where the inner mount goes. So:

- a source is stored resolved (symlinks followed once, when it is given), and every start
  refuses one whose path no longer resolves to itself, or an image that is no longer a file;
- no source of any sandbox may lie below a writable source or a state directory of any
  sandbox, this one included, and a writable source may not hold a sandbox's state or the
  tool's own trees, so no running sandbox can plant that symlink in the first place;
- the host's own control trees are never given writable: the root and the directories above
  the system's trees, what the sandbox already sees read-only (a writable bind of it could
  only change the host's programs), the kernel's interfaces, libvirt's and systemd's trees.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .errors import HostError, UserError
from .pathevidence import under as within  # the path, or one inside the tree

if TYPE_CHECKING:
    from .config import Paths, SandboxConfig
    from .mounts import MountSpec

# Trees no source may be in or equal: the host's programs and libraries (the sandbox already
# reads them: a writable bind could only change them), boot files, the kernel's interfaces,
# and the daemons that start sandboxes (their configs and hooks run as root on the host).
NEVER_WITHIN = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
                "/proc", "/sys", "/dev", "/etc/libvirt", "/var/lib/libvirt", "/run/libvirt",
                "/etc/systemd", "/run/systemd", "/var/lib/systemd")
# Trees no source may hold whole: a bind of /, /etc, /var, /run or root's home hands over
# the host's configuration, state or root's own files.
NEVER_ABOVE = (*NEVER_WITHIN, "/etc", "/root", "/var/lib", "/run")
HINT = "bind a directory of its own instead, e.g. -m host-bind:/srv/data=/srv/NAME-data"


def below(path: str, tree: str) -> bool:
    """path is strictly inside tree (both absolute and normalised)."""
    return path != tree and within(path, tree)


def resolve(text: str, source: str) -> str:
    """A source as given, checked and resolved: the path the sandbox will have from now on.
    The caller has checked that it exists."""
    real = os.path.realpath(source)
    why = f"mount source {source} in '{text}'" + (f" (that is {real})" if real != source
                                                   else "")
    if any(within(real, tree) for tree in NEVER_WITHIN):
        raise UserError(f"{why} is part of the host's system or of the daemons that start "
                        "sandboxes: a sandbox's root could change the host through it", HINT)
    if any(within(tree, real) for tree in NEVER_ABOVE):
        raise UserError(f"{why} holds the host's own configuration or state: a sandbox's "
                        "root could take the host through it", HINT)
    return real


def _explicit(cfg: SandboxConfig) -> Iterator[MountSpec]:
    """The sandbox's mounts of host paths named by the user (an empty host-bind source is a
    directory in the sandbox's own state, which this tool makes)."""
    from .mounts import MountType

    for spec in cfg.mounts:
        if spec.source and spec.type in (MountType.HOST_BIND, MountType.HOST_IMAGE):
            yield spec


def _writable(cfg: SandboxConfig) -> Iterator[str]:
    from .mounts import MountType

    yield from (s.source for s in _explicit(cfg) if s.type is MountType.HOST_BIND)


def check_among(cfg: SandboxConfig, others: Iterable[SandboxConfig], paths: Paths) -> None:
    """A new sandbox's sources against every sandbox's (its own included) and the tool's
    trees: nothing one sandbox can write may lead to what another, or it, is given."""
    others = [o for o in others if o.name != cfg.name]
    everyone = [cfg, *others]
    tool_trees = [str(p) for p in (paths.config_dir, paths.state_parent, paths.unit_dir,
                                   paths.run_dir)]
    for spec in _explicit(cfg):
        for o in everyone:
            for w in _writable(o):
                if below(spec.source, w):
                    _refuse(spec.source, f"lies below {w}, which sandbox '{o.name}' writes")
            if o.state_dir and within(spec.source, o.state_dir):
                _refuse(spec.source, f"lies in {o.state_dir}, the state of sandbox '{o.name}'")
    for o in everyone:  # its state (-p PATH) where a sandbox writes: its /etc theirs to change
        for w in _writable(o):
            if cfg.state_dir and within(cfg.state_dir, w):
                _refuse(w, f"holds {cfg.state_dir}, the state of sandbox '{cfg.name}'")
    for w in _writable(cfg):
        for o in everyone:
            for spec in _explicit(o):
                if below(spec.source, w):
                    _refuse(w, f"holds {spec.source}, which sandbox '{o.name}' is given")
            if o.state_dir and within(o.state_dir, w):
                _refuse(w, f"holds {o.state_dir}, the state of sandbox '{o.name}'")
        for tree in tool_trees:
            if within(tree, w) or within(w, tree):
                _refuse(w, f"overlaps {tree}, where this tool keeps its own files")


def _refuse(source: str, why: str) -> None:
    raise UserError(f"mount source {source} {why}: a sandbox writing there could swap what a "
                    "sandbox is given for a link to any path of the host", HINT)


def check_at_start(cfg: SandboxConfig) -> None:
    """Every start: each source is still the path that was checked when it was given. A
    symlink that has appeared in it (planted by whatever could write there) is refused, not
    followed by libvirt into the sandbox."""
    from .mounts import MountType

    for spec in _explicit(cfg):
        real = os.path.realpath(spec.source)
        if real != spec.source:
            raise HostError(f"sandbox '{cfg.name}': mount source {spec.source} now leads to "
                            f"{real}: a symlink has appeared in its path since it was given; "
                            "refusing to start rather than follow it",
                            "find out what wrote it; if it was meant, delete the sandbox and "
                            "create it again with the path it should have")
        try:
            mode = os.stat(real).st_mode
        except OSError as e:
            raise HostError(f"sandbox '{cfg.name}': mount source {real}: {e.strerror}",
                            "restore it, or delete the sandbox and create it again") from None
        if spec.type is MountType.HOST_IMAGE and not stat.S_ISREG(mode):
            raise HostError(f"sandbox '{cfg.name}': image {real} is no longer a regular file",
                            "restore the image file")
