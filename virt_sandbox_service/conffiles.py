"""The packaged configuration files (conffiles) of a sandbox's services, as facts to compare.

A sandbox's /etc is a private copy of the host's. Which of its files are the packages'
conffiles comes from the evidence ("conffile of PKG"); what they contained when the instance
was given them is recorded in evidence.json ("conffiles": path -> md5, written by create and
kept by upgrade); what the packaging shipped is dpkg's md5 in /var/lib/dpkg/status. `upgrade`
compares these with the host's and the instance's current files. Reads only.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .host import SHARED_ETC
from .pathevidence import Access, PathEvidence

CONFFILE_REASON = "conffile of "
_INSTALLED = re.compile(r"^Status: \S+ ok installed$", re.M)


@dataclass(frozen=True)
class HostView:
    """Where the host's files are read: its root, with single paths optionally pointed
    elsewhere (tests simulate a changed host file without touching the real one)."""

    root: Path = Path("/")
    overrides: Mapping[str, Path] = field(default_factory=dict)

    def path(self, path: str) -> Path:
        return self.overrides.get(path) or self.root / path.lstrip("/")


@dataclass(frozen=True)
class FileState:
    """One side of a comparison: a regular file's bytes, or why there are none."""

    data: bytes | None  # None: not a regular file (see kind)
    kind: str = "file"  # "file", "missing", or what is there instead ("symlink to X", ...)
    meta: tuple[int, int, int] | None = None  # (mode, uid, gid) of a regular file, if read

    @property
    def exists(self) -> bool:
        return self.kind != "missing"

    @property
    def md5(self) -> str | None:
        return hashlib.md5(self.data).hexdigest() if self.data is not None else None


MISSING = FileState(None, "missing")


def describe(st: os.stat_result, link: str | None = None) -> str:
    if stat.S_ISLNK(st.st_mode):
        return f"symlink to {link}"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    return "not a regular file"


def read_host(host: HostView, path: str) -> FileState:
    """The host's file. The host is trusted: its symlinks are followed (as dpkg does)."""
    try:
        return FileState(host.path(path).read_bytes())
    except FileNotFoundError:
        return MISSING
    except IsADirectoryError:
        return FileState(None, "a directory")
    except OSError as e:
        return FileState(None, f"unreadable ({e.strerror})")


def conffile_paths(evidence: Sequence[PathEvidence]) -> list[tuple[str, str]]:
    """(path, package) of each conffile in the instance's private /etc copy."""
    out = []
    for e in evidence:
        packages = [r[len(CONFFILE_REASON):] for r in e.reasons if r.startswith(CONFFILE_REASON)]
        if not packages or e.access is not Access.PRIVATE or not e.path.startswith("/etc/"):
            continue
        if any(e.path == s or e.path.startswith(s + "/") for s in SHARED_ETC):
            continue  # bound from the host read-only: the instance's is the host's
        out.append((e.path, packages[0]))
    return out


def baseline(evidence: Sequence[PathEvidence],
             host: HostView | None = None) -> dict[str, str | None]:
    """What create gives the instance: the md5 of each conffile the host has now."""
    host = host or HostView()
    out: dict[str, str | None] = {}
    for path, _ in conffile_paths(evidence):
        seen = read_host(host, path)
        if seen.exists:
            out[path] = seen.md5
    return out


def parse_dpkg_conffiles(status: str) -> dict[str, str]:
    """path -> md5 from the Conffiles: fields of dpkg's status file (installed packages).

    Each line is " PATH MD5 [obsolete] [remove-on-upgrade]"; an obsolete entry yields to a
    current one for the same path, and "newconffile" is no md5.
    """
    out: dict[str, str] = {}
    obsolete: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        if not _INSTALLED.search(stanza):
            continue
        in_field = False
        for line in stanza.splitlines():
            if not line.startswith(" "):
                in_field = line.startswith("Conffiles:")
                continue
            words = line.split()
            if not in_field or len(words) < 2 or len(words[1]) != 32:
                continue
            (obsolete if "obsolete" in words[2:] else out)[words[0]] = words[1]
    return {**obsolete, **out}


def packaged_md5s(host: HostView) -> dict[str, str]:
    """dpkg's record of each conffile as its package shipped it; {} without dpkg."""
    try:
        text = host.path("/var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return {}
    return parse_dpkg_conffiles(text)
