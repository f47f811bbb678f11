"""What under the host's /etc is a host secret: not world-readable, and not the service's own.
The sandbox hides each one (a whiteout, or left out of its copy). Pure: reads only."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Collection
from pathlib import Path

from .pathevidence import Access, PathEvidence, _norm


def hidden_secrets(etc_dir: Path, allowed: Collection[str]) -> tuple[PathEvidence, ...]:
    """What under the host's /etc is not world-readable and not the service's own.

    A hidden directory is reported once, not its children, unless an allowed path lies under
    it: then its other children are examined one by one. Symlinks are not followed.
    """
    allow = {_norm(a) for a in allowed}
    if "/etc" in allow:
        return ()
    ancestors = {parent for a in allow for parent in _parents(a)}
    walker = _SecretWalker(allow, ancestors, _IdNames(etc_dir))
    walker.walk(etc_dir, "/etc")
    return tuple(sorted(walker.found, key=lambda e: e.path.split("/")))


def _parents(path: str) -> list[str]:
    out = []
    while path not in ("/", ""):
        path = posixpath.dirname(path)
        out.append(path)
    return out


class _IdNames:
    """uid/gid -> name from the given /etc (the host's), falling back to the number."""

    def __init__(self, etc_dir: Path) -> None:
        self.users = {f[2]: f[0] for f in _colon_file(etc_dir / "passwd") if len(f) > 2}
        self.groups = {f[2]: f[0] for f in _colon_file(etc_dir / "group") if len(f) > 2}

    def describe(self, st: os.stat_result) -> str:
        user = self.users.get(str(st.st_uid), str(st.st_uid))
        group = self.groups.get(str(st.st_gid), str(st.st_gid))
        return f"{stat.S_IMODE(st.st_mode):04o} {user}:{group}"


def _colon_file(path: Path) -> list[list[str]]:
    try:
        return [line.split(":") for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return []


class _SecretWalker:
    def __init__(self, allow: set[str], ancestors: set[str], names: _IdNames) -> None:
        self.allow = allow
        self.ancestors = ancestors
        self.names = names
        self.found: list[PathEvidence] = []

    def walk(self, directory: Path | str, shown: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            self._visit(entry, f"{shown}/{entry.name}")

    def _visit(self, entry: os.DirEntry[str], path: str) -> None:
        if path in self.allow:
            return  # allowed, and so is everything under it
        try:
            if entry.is_symlink():  # from the directory's own listing: no stat (start's time)
                return
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        # Descend into a hidden directory only to reach an allowed path below it.
        if not st.st_mode & 0o004 and not (is_dir and path in self.ancestors):
            reason = f"not world-readable on the host ({self.names.describe(st)})"
            self.found.append(PathEvidence(path, Access.HIDDEN, is_dir, (reason,),
                                           (st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)))
        elif is_dir:
            self.walk(entry.path, path)
