"""Host secrets that the service's own configuration names, and its user can read.

A key named in a daemon's configuration (freeradius's eap module:
`private_key_file = /etc/ssl/private/ssl-cert-snakeoil.key`, 0640 root:ssl-cert in a 0710
directory, which freerad reads through its supplementary group ssl-cert) is not world-readable,
so the sandbox would hide it as a host secret and the daemon would refuse to start. That the
configuration names it, on a line that is not a comment, and that the unit's User= can read it
on the host (as owner, or through its primary or supplementary groups) is the evidence that it
is the service's: it is given to the instance, as its own copy. A unit run as root reads
everything, so for it this is no evidence (evidence.py asks only for a User= of its own).
The host's account databases are never given this way (every user's password hash): an
administrator can still say `--private /etc/shadow`.

World-readable paths need nothing: the sandbox sees them already. The configuration is the
packages' conffiles and the files under the units' ConfigurationDirectory=; only text files,
and only up to MAX_BYTES of each.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 256 * 1024
# An absolute path under /etc in a configuration line: up to a quote, space, comma, ...
_PATH = re.compile(r"(?<![\w./$})-])(/etc/[A-Za-z0-9._+@%:/-]+)")
_COMMENT = ("#", ";", "//")
NEVER = frozenset({"/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-"})


@dataclass(frozen=True)
class Named:
    path: str  # as named (normalised), a host secret the user can read
    where: str  # the configuration file naming it
    is_dir: bool


@dataclass(frozen=True)
class Reader:
    """Who reads: uid, primary gid and supplementary gids on the host (root reads all)."""

    uid: int
    gids: frozenset[int]

    def can_read(self, st: os.stat_result) -> bool:
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IRUSR)
        if st.st_gid in self.gids:
            return bool(st.st_mode & stat.S_IRGRP)
        return bool(st.st_mode & stat.S_IROTH)

    def can_reach(self, st: os.stat_result) -> bool:
        """May pass through a directory (search permission)."""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.gids:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def reader(user: str | None, etc: Path = Path("/etc")) -> Reader | None:
    """The host's view of User= (None or empty: root); None if the host has no such user."""
    if user in (None, "", "root", "0"):
        return Reader(0, frozenset({0}))
    passwd = _colon_file(etc / "passwd")
    entry = next((f for f in passwd if len(f) > 3 and user in (f[0], f[2])), None)
    if entry is None or not (entry[2].isdigit() and entry[3].isdigit()):
        return None
    gids = {int(entry[3])}
    for group in _colon_file(etc / "group"):
        if len(group) > 3 and group[2].isdigit() and entry[0] in group[3].split(","):
            gids.add(int(group[2]))
    return Reader(int(entry[2]), frozenset(gids))


def _colon_file(path: Path) -> list[list[str]]:
    try:
        return [line.split(":") for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return []


def named_paths(text: str, pattern: re.Pattern[str] = _PATH) -> list[str]:
    """The absolute paths (under /etc, or what `pattern` matches) named on the lines of
    `text` that are not comments."""
    out: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith(_COMMENT):
            continue
        out += [m.rstrip(".:/") for m in pattern.findall(line)]
    return [os.path.normpath(p) for p in dict.fromkeys(out) if ".." not in p.split("/")]


# An absolute path under /var or /srv, delimited as _PATH is.
_DATA_PATH = re.compile(r"(?<![\w./$})-])(/(?:var|srv)/[A-Za-z0-9._+@%:/-]+)")


def data_named(files: Iterable[str], root: Path = Path("/")) -> list[Named]:
    """The paths under /var and /srv that `files` name on lines that are not comments and
    that exist on the host (never through a link); each once, with the first file naming it.
    A DocumentRoot in /srv, a database directory moved to /var/lib/x, a log file."""
    found: dict[str, Named] = {}
    for conf in files:
        text = _read_text(root / conf.lstrip("/"))
        if text is None:
            continue
        for path in named_paths(text, _DATA_PATH):
            if path in found or path.count("/") < 2:
                continue
            st = _no_link_stat(root, path)
            if st is not None:
                found[path] = Named(path, conf, stat.S_ISDIR(st.st_mode))
    return list(found.values())


def _no_link_stat(root: Path, path: str) -> os.stat_result | None:
    parts = path.strip("/").split("/")
    st = None
    for i in range(1, len(parts) + 1):
        try:
            st = os.lstat(root.joinpath(*parts[:i]))
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
    return st


def config_tree(tops: Iterable[str], root: Path = Path("/"), limit: int = 2000) -> list[str]:
    """The regular files under `tops`, the packages' own directories in /etc (/etc/apache2,
    with the administrator's sites beside the shipped ones), up to `limit` files."""
    out: list[str] = []
    for top in sorted(tops):
        for dirpath, dirs, files in os.walk(root / top.lstrip("/")):
            dirs.sort()
            rel = os.path.relpath(dirpath, root)
            out += [f"/{rel}/{n}" for n in sorted(files)
                    if not os.path.islink(os.path.join(dirpath, n))]
            if len(out) >= limit:
                return out[:limit]
    return out


def config_files(conffiles: Iterable[str], config_dirs: Iterable[str],
                 root: Path = Path("/")) -> list[str]:
    """The conffiles and the regular files under the configuration directories."""
    out = list(conffiles)
    for top in config_dirs:
        for dirpath, _dirs, files in os.walk(root / top.lstrip("/")):
            rel = os.path.relpath(dirpath, root)
            out += [f"/{rel}/{n}" for n in sorted(files)]
    return list(dict.fromkeys(out))


def _read_text(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES)
    except OSError:
        return None
    return None if b"\0" in data else data.decode(errors="replace")


def secrets_named(files: Iterable[str], who: Reader, root: Path = Path("/")) -> list[Named]:
    """The host secrets (not world-readable, or behind a directory others cannot pass) named
    in `files` that `who` can read on the host; each once, with the first file naming it."""
    found: dict[str, Named] = {}
    for conf in files:
        text = _read_text(root / conf.lstrip("/"))
        if text is None:
            continue
        for path in named_paths(text):
            if path in found or path in NEVER or path == "/etc":
                continue
            st = _secret_readable(root, path, who)
            if st is not None:
                found[path] = Named(path, conf, stat.S_ISDIR(st.st_mode))
    return list(found.values())


def _secret_readable(root: Path, path: str, who: Reader) -> os.stat_result | None:
    """The path's stat if it is a host secret that `who` can reach and read, else None."""
    secret = False
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        try:
            st = os.lstat(root.joinpath(*parts[:i]))
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return None  # a link: its target is what is read, and may be anything
        last = i == len(parts)
        if not st.st_mode & stat.S_IROTH or (not last and not st.st_mode & stat.S_IXOTH):
            secret = True
        if not last and not who.can_reach(st):
            return None
        if last and (not who.can_read(st) or not secret):
            return None
        if last:
            return st
    return None
