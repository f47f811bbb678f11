"""The vocabulary of the evidence: how a sandbox path is given (Access) and why
(PathEvidence), and how sandbox paths are compared and normalised."""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass


class Access(enum.StrEnum):
    PRIVATE = "private"  # the instance gets its own copy/dir (lives in the sandbox's state dir)
    TMPFS = "tmpfs"  # lives on the sandbox's private /run or /tmp tmpfs (nothing to persist)
    HIDDEN = "hidden"  # a host secret the sandbox must not see (not copied into its /etc)
    SHARED = "shared"  # the host's file, seen read-only


@dataclass(frozen=True)
class PathEvidence:
    path: str  # absolute, normalised, as seen inside the sandbox
    access: Access
    is_dir: bool
    reasons: tuple[str, ...]
    owner: tuple[int, int] | None = None  # uid/gid on the host, if the path exists there
    mode: int | None = None  # permission bits on the host, if the path exists there


SYSTEMD_REASON = "needed by systemd in the sandbox"
TEMP_REASON = "writable temporary space"
# Reasons that make a directory exist, never a reason to copy the host's content into it
# (-C must not copy the host's journal, /var/tmp or the whole of /var/lib).
SKELETON_REASONS = frozenset({SYSTEMD_REASON, TEMP_REASON})


def under(path: str, top: str) -> bool:
    """`path` is `top` or lies below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _norm(path: str) -> str:
    """Normalise; /var/run and /var/lock are /run and /run/lock inside the sandbox too."""
    path = "/" + posixpath.normpath(path).lstrip("/")
    for old, new in (("/var/run", "/run"), ("/var/lock", "/run/lock")):
        if under(path, old):
            return new + path[len(old) :]
    return path
