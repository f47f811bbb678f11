"""Evidence of the service's own data and configuration: paths its configuration names
(host secrets its user reads; data under /var and /srv), and what its users own (under /etc:
not a host secret; under /var and /srv: its data). Pure: reads files and stat()s paths.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import confrefs
from .claims import (
    _EXEC_SECTION,
    _NOT_SERVICE_DATA,
    _Claim,
    _evidence,
    _is_service_data,
    _words,
    _yes,
)
from .hostsecrets import _colon_file
from .pathevidence import Access, _norm, under
from .pkgdb import PackageDB
from .unitfile import UnitFile

# --- host secrets its configuration names -------------------------------------------------------

NAMED_REASON = "named in {where} (the service's configuration), readable by {user} on the host"


def _named_secret_claims(units: Sequence[UnitFile], pkgdb: PackageDB | None,
                         packages: Sequence[str], root: Path) -> list[_Claim]:
    """What the packages' conffiles and the units' ConfigurationDirectory= name that is not
    world-readable but the unit's User= (not root) reads on the host: the service's own
    (confrefs.py)."""
    conffiles = [c for p in packages for c in pkgdb.conffiles(p)] if pkgdb else []
    out = []
    for unit in units:
        section = _EXEC_SECTION.get(unit.name.rpartition(".")[2])
        if section is None:
            continue
        user = unit.value(section, "User")
        # Only a user of its own: root reads everything, so its reading is no evidence (and
        # apache2's disabled default-ssl.conf would give every sandbox the snakeoil key).
        if user in (None, "", "root", "0") or _yes(unit.value(section, "DynamicUser")):
            continue
        who = confrefs.reader(user, root / "etc")
        if who is None:
            continue
        dirs = [f"/etc/{w.split(':')[0]}" for w in _words(unit, section, "ConfigurationDirectory")]
        for n in confrefs.secrets_named(confrefs.config_files(conffiles, dirs, root), who, root):
            reason = NAMED_REASON.format(where=n.where, user=user)
            out.append(_evidence(n.path, Access.PRIVATE, n.is_dir, reason))
    return out


# /var's trees of variable state: a path the configuration names there is written (a log, a
# database); elsewhere under /var and in /srv it is content the service reads (a DocumentRoot).
_STATE_TREES = ("/var/lib", "/var/cache", "/var/log", "/var/spool", "/var/mail", "/var/backups")
_NAMED_DATA_REASON = "named in {where} (the service's configuration)"


def _named_data_claims(units: Sequence[UnitFile], pkgdb: PackageDB | None,
                       packages: Sequence[str], root: Path) -> list[_Claim]:
    """What the service's configuration (conffiles, the files under the packages' /etc
    directories, ConfigurationDirectory=) names under /var and /srv that exists on the host:
    under /var's state trees its own (private: fresh, or copied with -C); elsewhere the
    host's, read-only (an administrator's DocumentRoot /srv/www/site)."""
    conffiles = [c for p in packages for c in pkgdb.conffiles(p)] if pkgdb else []
    dirs = [f"/etc/{w.split(':')[0]}" for u in units
            for section in [_EXEC_SECTION.get(u.name.rpartition(".")[2])] if section
            for w in _words(u, section, "ConfigurationDirectory")]
    # The /etc directories these packages ship most of what is in (by the package lists).
    own = ([top for top, counts in pkgdb.etc_owners().items()
            if 2 * sum(n for p, n in counts.items() if p in packages) > sum(counts.values())]
           if pkgdb and packages else [])
    files = list(dict.fromkeys([*confrefs.config_files(conffiles, dirs, root),
                                *confrefs.config_tree(own, root)]))
    out = []
    for n in confrefs.data_named(files, root):
        if n.path in _STATE_TREES or any(under(n.path, t) for t in (
                *_NOT_DATA, *_NOT_SERVICE_DATA, "/var/run", "/var/lock")):
            continue  # a whole tree says nothing of the service; scratch and runtime
        state = any(under(n.path, t) for t in _STATE_TREES)
        out.append(_evidence(n.path, Access.PRIVATE if state else Access.SHARED, n.is_dir,
                             _NAMED_DATA_REASON.format(where=n.where)))
    return out


# --- the service's own user ---------------------------------------------------------------------

# Shared by many services: owning something makes it no one service's.
_OVERFLOW_ID = 65534


def _own_user_claims(unit: UnitFile, root: Path, where: str) -> list[_Claim]:
    """What under /etc is not world-readable but belongs to the unit's User= (owner) or to that
    user's primary group: the service's own configuration, not a host secret (e.g.
    /etc/freeradius, 2750 freerad). Only the topmost such paths; supplementary groups never
    count (freerad is in group shadow: /etc/shadow stays hidden), nor root or nobody."""
    section = _EXEC_SECTION.get(unit.name.rpartition(".")[2])
    user = unit.value(section, "User") if section else None
    if not user or section is None or _yes(unit.value(section, "DynamicUser")):
        return []
    entry = next((f for f in _colon_file(root / "etc/passwd")
                  if len(f) > 3 and user in (f[0], f[2])), None)
    if entry is None or not (entry[2].isdigit() and entry[3].isdigit()):
        return []  # not a user of the host's (made at boot?): it owns nothing there yet
    uid, gid = int(entry[2]), int(entry[3])
    uids = {uid} - {0, _OVERFLOW_ID}
    gids = {gid} - {0, _OVERFLOW_ID}
    if not uids and not gids:
        return []
    out = []
    # Not world-readable (what the host's users may all read is no one's in particular).
    unreadable = _owned(uids, gids)
    for path, st in _topmost(root, "/etc", lambda st: not st.st_mode & 0o004
                             and unreadable(st)):
        whose = f"user {entry[0]}" if st.st_uid in uids else f"{entry[0]}'s primary group"
        out.append(_evidence(path, Access.SHARED, stat.S_ISDIR(st.st_mode),
                             f"owned by {whose}, User= of {where}: the service's, "
                             "not a host secret"))
    return out


# Where a service keeps data of its own, owned by its user; /var/tmp is anyone's scratch.
_DATA_TREES = ("/var", "/srv")
_NOT_DATA = ("/var/tmp", "/var/crash")
_DATA_DEPTH = 4  # /var/spool/postfix/private: deeper than that is inside something found


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int | None  # the primary group, when no other user shares it
    why: str


def _service_users(unit: UnitFile, packages: Sequence[str], pkgdb: PackageDB | None,
                   root: Path, where: str) -> list[_User]:
    """The users a service runs as, from evidence: the unit's User=, and the system users the
    packages made whose home is one of the packages' own paths (slapd starts as root and
    drops to openldap, home /var/lib/ldap; mosquitto to mosquitto, /var/lib/mosquitto).
    Never root, nobody, or a user below SYS_UID_MIN: those are the distribution's static
    users, each shared by several packages (www-data owns nginx's logs as well as apache2's
    cache)."""
    passwd = [f for f in _colon_file(root / "etc/passwd")
              if len(f) > 5 and f[2].isdigit() and f[3].isdigit()]
    primaries = [f[3] for f in passwd]
    section = _EXEC_SECTION.get(unit.name.rpartition(".")[2])
    named = unit.value(section, "User") if section else None
    dynamic = section is not None and _yes(unit.value(section, "DynamicUser"))
    listed = {_norm(f) for p in packages for f in (pkgdb.files(p) if pkgdb else ())}
    shared_below = _sys_uid_min(root)
    out = []
    for f in passwd:
        if int(f[2]) < shared_below or int(f[2]) == _OVERFLOW_ID:
            continue  # Debian's static users (www-data, 33) serve many packages at once
        if named and not dynamic and named in (f[0], f[2]):
            why = f"User= of {where}"
        elif f[5] not in ("/", "") and _norm(f[5]) in listed and _is_service_data(_norm(f[5])):
            why = f"its home {f[5]} is in the file list of {', '.join(packages)}"
        else:
            continue
        gid = int(f[3]) if primaries.count(f[3]) == 1 and f[3] not in ("0", "65534") else None
        out.append(_User(f[0], int(f[2]), gid, why))
    return out


def _sys_uid_min(root: Path) -> int:
    """login.defs' SYS_UID_MIN: where the users packages make start (100 when unset)."""
    try:
        lines = (root / "etc/login.defs").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "SYS_UID_MIN" and words[1].isdigit():
            return int(words[1])
    return 100


def _owned_data_claims(unit: UnitFile, packages: Sequence[str], pkgdb: PackageDB | None,
                       root: Path, where: str) -> list[_Claim]:
    """What under /var and /srv belongs to the service's users (owner, or their own primary
    group): its data, wherever the package or the admin put it (/var/spool/postfix,
    /srv/ftp, a database moved to /srv/db). The topmost such entries, on the tree's own
    file system, never through a link."""
    out = []
    for user in _service_users(unit, packages, pkgdb, root, where):
        gids = {user.gid} if user.gid is not None else set()
        for tree in _DATA_TREES:
            for path, st in _topmost(root, tree, _owned({user.uid}, gids), _DATA_DEPTH,
                                     (*_NOT_DATA, *_NOT_SERVICE_DATA)):
                whose = (f"user {user.name}" if st.st_uid == user.uid
                         else f"{user.name}'s own group")
                out.append(_evidence(path, Access.PRIVATE, stat.S_ISDIR(st.st_mode),
                                     f"owned by {whose} ({user.why}): the service's data"))
    return out


def _topmost(root: Path, tree: str, match: Callable[[os.stat_result], bool],
             depth: int | None = None,
             skip: Sequence[str] = ()) -> list[tuple[str, os.stat_result]]:
    """The topmost entries below `tree` (as the sandbox sees it; read under `root`) that
    `match`: nothing below a match is looked at. Never through a link, never onto another
    file system, never into `skip`; `depth` levels at most (None: all)."""
    try:
        top = os.lstat(root / tree.lstrip("/"))
    except OSError:
        return []
    out: list[tuple[str, os.stat_result]] = []
    todo = [(tree, depth)]
    while todo:
        shown, left = todo.pop()
        try:
            entries = list(os.scandir(root / shown.lstrip("/")))
        except OSError:
            continue
        for entry in entries:
            path = f"{shown}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (stat.S_ISLNK(st.st_mode) or st.st_dev != top.st_dev
                    or any(under(path, n) for n in skip)):
                continue
            if match(st):
                out.append((path, st))
            elif stat.S_ISDIR(st.st_mode) and (left is None or left > 1):
                todo.append((path, None if left is None else left - 1))
    return sorted(out, key=lambda e: e[0])


def _owned(uids: set[int], gids: set[int]) -> Callable[[os.stat_result], bool]:
    return lambda st: st.st_uid in uids or st.st_gid in gids
