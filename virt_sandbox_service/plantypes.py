"""The plan's vocabulary: its file operations, mounts and the Plan itself, and (from
layout.py) where things are inside a sandbox. Pure data: the planner (plan.py), the sandbox's
init (initscript.py) and the backends share it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .config import SandboxConfig
from .layout import ETC_MERGED as ETC_MERGED
from .layout import ETC_STAGE as ETC_STAGE
from .layout import ETC_STAGE_MOUNTS as ETC_STAGE_MOUNTS
from .layout import ETC_WORK as ETC_WORK
from .layout import EVIDENCE_FILE as EVIDENCE_FILE
from .layout import EXIT_STATUS_FILE as EXIT_STATUS_FILE
from .layout import GO_FIFO as GO_FIFO
from .layout import HOST_CHANNEL as HOST_CHANNEL
from .layout import MARKER as MARKER
from .layout import METADATA_NS as METADATA_NS
from .layout import NOTIFY_SOCKET as NOTIFY_SOCKET
from .layout import OVERLAY_OPTIONS as OVERLAY_OPTIONS

# Where things are (layout.py), here too for the planner's modules.
from .layout import TMPFS as TMPFS
from .pathevidence import PathEvidence

# `managed` on an operation: the tool's own part of the sandbox's trees, which `upgrade`
# re-derives from the config (reconcile.py): a managed file or link is rewritten when it
# differs, a managed directory is made when missing (and made opaque, for Opaque). What is
# not managed is the instance's data, or an admin's: never touched after create.


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    reason: str = ""
    managed: bool = False


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    mode: int = 0o644
    reason: str = ""
    managed: bool = False


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    reason: str = ""
    managed: bool = False


@dataclass(frozen=True)
class CopyTree:
    """Copy src to dst keeping owners, modes and symlinks; `exclude` are src paths left out."""

    src: str
    dst: str
    exclude: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class AddUser:
    """Give the user of -U an entry in the private passwd and group files in `path` (an etc
    dir), after they were copied: added where the uid (gid) has none (see users.py)."""

    path: str
    uid: int
    gid: int
    name: str
    home: str
    reason: str = ""


@dataclass(frozen=True)
class MakeImage:
    """-i: move the private trees made so far into the image `path` of `size` bytes; with
    `source`, copy that image instead, write the trees made so far into the copy, and empty
    the directories `drop` (paths inside the image). See image.py."""

    path: str
    size: int
    source: str = ""
    drop: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Whiteout:
    """Overlay /etc: hide the host's `hides` (a path under /etc) from the sandbox with a
    whiteout at `path` in the upper layer. Missing parents are made like the host's."""

    path: str
    hides: str
    reason: str = ""


@dataclass(frozen=True)
class Opaque:
    """Overlay /etc: the directory `path` of the upper layer hides the host's directory of
    the same name: the sandbox sees only what the upper layer has there."""

    path: str
    reason: str = ""
    managed: bool = False


FileOp = MakeDir | WriteFile | Symlink | CopyTree | AddUser | MakeImage | Whiteout | Opaque


def managed(ops: Iterable[FileOp]) -> list[FileOp]:
    """The operations, marked as the tool's own (see `managed` above)."""
    return [replace(op, managed=True) if isinstance(op, MakeDir | WriteFile | Symlink | Opaque)
            else op for op in ops]


@dataclass(frozen=True)
class Mount:
    target: str  # path in the sandbox
    source: str  # host path; "" for tmpfs
    readonly: bool = False
    tmpfs_kib: int = 0
    reason: str = ""
    image: bool = False  # source is a raw file-system image (loop-mounted)
    file: bool = False  # source is a file: the init makes the target a file of its own first


@dataclass(frozen=True)
class Plan:
    config: SandboxConfig
    config_path: str
    state_dir: str
    run_dir: str
    evidence: tuple[PathEvidence, ...]
    hidden: tuple[PathEvidence, ...]
    mounts: tuple[Mount, ...]
    files: tuple[FileOp, ...]
    init: tuple[str, ...]
    init_env: tuple[tuple[str, str], ...]
    domain_xml: str = ""
    unit_files: tuple[tuple[str, str], ...] = field(default=())


# systemd's system generator directories (systemd.generator(7)), in its order. A unit
# sandbox's systemd searches only GENERATOR_PATH instead (its SYSTEMD_GENERATOR_PATH), which
# holds links to the kept generators alone (initscript.generator_path).
GENERATOR_PATH = "/run/.vss-generators"
GENERATOR_DIRS = ("/etc/systemd/system-generators", "/usr/local/lib/systemd/system-generators",
                  "/usr/lib/systemd/system-generators", "/lib/systemd/system-generators")
GENERATOR_REASON = "a systemd generator of package {package}: the sandbox's systemd runs it"


def is_generator(path: str) -> bool:
    """A systemd system generator's path: a file in one of GENERATOR_DIRS."""
    return os.path.dirname(path) in GENERATOR_DIRS


def kept_generators(evidence: Iterable[PathEvidence]) -> tuple[str, ...]:
    """The generators a unit sandbox's systemd runs: those of the service's own packages
    (postfix's makes postfix@-.service wanted by postfix.service, tor's tor@default.service).
    No other generator runs: fstab, getty, SysV scripts, other packages' instances and this
    tool's own turn the host's configuration into units, which are not the service's (and
    running them all took ~130 ms of every start)."""
    return tuple(sorted({os.path.basename(e.path) for e in evidence if is_generator(e.path)}))


def seen_at(target: str) -> str:
    """Where the sandbox sees a mount: one staged for an overlay /etc ends up on /etc."""
    if target.startswith(f"{ETC_STAGE_MOUNTS}/"):
        return target[len(ETC_STAGE_MOUNTS):]
    return target
