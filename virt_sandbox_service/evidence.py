"""Which paths a sandbox gets privately, and why: decided from evidence, never from guesses.

The evidence is the units' own directives (StateDirectory=, ReadWritePaths=, ReadOnlyPaths=,
...) and those of the units their packages ship that are PartOf= them, the package manager's
file lists and conffiles of the packages that ship them and of their dependencies built from
the same source package, what under /etc belongs to the units' User=, what systemd itself
needs in the sandbox, and the administrator's --private/--shared overrides. Everything else
of the host is seen read-only. Pure: reads the package database and stat()s paths, changes
nothing.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import confrefs
from .errors import UserError

# The path vocabulary, the host-secret walk and the package databases live in modules of
# their own (pathevidence.py, hostsecrets.py, pkgdb.py); importers keep finding them here.
from .hostsecrets import _colon_file
from .hostsecrets import hidden_secrets as hidden_secrets
from .pathevidence import Access as Access
from .pathevidence import PathEvidence as PathEvidence
from .pathevidence import _norm, _under
from .pkgdb import _USRMERGE, _aliases
from .pkgdb import DpkgDB as DpkgDB
from .pkgdb import PackageDB as PackageDB
from .pkgdb import RpmDB as RpmDB
from .pkgdb import detect_package_db as detect_package_db
from .pkgdb import parse_dpkg_status as parse_dpkg_status
from .unitfile import UnitFile, UnitName, load_unit

# --- evidence -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    """One piece of evidence about one path; gather() merges the claims per path."""

    path: str
    access: Access
    is_dir: bool | None  # None: ask the host
    reason: str
    weight: int  # the strongest claim decides the access


# Evidence ranks below the administrator's word; among evidence, persistent beats volatile.
_WEIGHT = {Access.SHARED: 0, Access.TMPFS: 1, Access.PRIVATE: 2}
_PRIVATE_OVERRIDE = 3
_SHARED_OVERRIDE = 4

_TMPFS_ROOTS = ("/run", "/tmp")
# Package manager state and the host's programs are never a service's data.
_NOT_SERVICE_DATA = ("/var/lib/dpkg", "/var/lib/rpm", "/var/lib/apt", "/var/cache/apt")
NOT_SERVICE_DATA = _NOT_SERVICE_DATA  # learn leaves it out of what it observed too
_SYSTEMD_BASELINE = ("/var/lib/systemd", "/var/log/journal", "/var/tmp", "/var/cache",
                     "/var/log", "/var/lib")
# Kernel filesystems: the sandbox has its own instances; nothing there can be copied or shared.
_KERNEL_TREES = ("/proc", "/sys", "/dev")
_NEVER_PRIVATE = {
    "/": "the host root is always shared read-only; name the directories the service writes",
    "/etc": "the sandbox's /etc is private already; name a path under it, e.g. /etc/apache2",
    "/usr": "the host's programs are shared read-only; name a path under /etc, /var or /srv",
}
for _top in _USRMERGE:
    _NEVER_PRIVATE[_top] = _NEVER_PRIVATE["/usr"]
# What a unit's path list never makes private or shared: the trees the sandbox builds itself.
_WHOLE_TREES = frozenset({*_NEVER_PRIVATE, "/var"})


def _evidence(path: str, access: Access, is_dir: bool | None, reason: str) -> _Claim:
    path = _norm(path)
    if any(_under(path, top) for top in _TMPFS_ROOTS):
        access = Access.TMPFS
    return _Claim(path, access, is_dir, reason, _WEIGHT[access])


def gather(
    units: Sequence[UnitFile],
    pkgdb: PackageDB | None,
    *,
    packages: Sequence[str] = (),
    private: Sequence[str] = (),
    shared: Sequence[str] = (),
    generic: bool = False,
    root: Path = Path("/"),
) -> tuple[PathEvidence, ...]:
    """The evidence, one PathEvidence per path (reasons combined), sorted by path."""
    private_paths = [_override_path(p, "--private") for p in private]
    shared_paths = [_override_path(p, "--shared") for p in shared]
    _check_overrides(private_paths, shared_paths)
    claims: list[_Claim] = []
    found = _packages(units, pkgdb, packages)
    parts = _part_of(units, pkgdb, list(found)) if pkgdb is not None else []
    for unit, where in [(u, u.name) for u in units] + parts:
        claims += _unit_claims(unit, root, where)
        claims += _own_user_claims(unit, root, where)
        claims += _owned_data_claims(unit, list(found), pkgdb, root, where)
    for package, via in found.items():
        assert pkgdb is not None  # _packages() returns nothing without one
        claims += _package_claims(pkgdb, package, via)
    claims += _named_secret_claims(units, pkgdb, list(found), root)
    claims += _named_data_claims(units, pkgdb, list(found), root)
    claims += _baseline(generic)
    claims += [_Claim(p, Access.PRIVATE, None, "--private", _PRIVATE_OVERRIDE)
               for p in private_paths]
    claims += [_Claim(p, Access.SHARED, None, "--shared", _SHARED_OVERRIDE) for p in shared_paths]
    return _merge(claims, shared_paths, root)


# --- overrides ----------------------------------------------------------------------------------


def _override_path(text: str, option: str) -> str:
    if not text.startswith("/"):
        raise UserError(f"{option} '{text}' is not an absolute path",
                        "paths start with '/', e.g. /var/lib/myapp")
    if ".." in text.split("/"):
        raise UserError(f"{option} '{text}' must not contain '..'")
    path = _norm(text)
    if path in _NEVER_PRIVATE and (option == "--private" or path == "/"):
        raise UserError(f"{option} {path} is not allowed", _NEVER_PRIVATE[path])
    if any(path == k or path.startswith(k + "/") for k in _KERNEL_TREES):
        raise UserError(f"{option} {path} is not allowed: it is a kernel filesystem",
                        "the sandbox gets its own /proc, /sys and /dev from libvirt")
    return path


def _check_overrides(private: Sequence[str], shared: Sequence[str]) -> None:
    # --shared wins for everything under it, so a --private there could only be ignored.
    for p in private:
        for s in shared:
            if _under(p, s):
                raise UserError(
                    f"--private {p} is inside --shared {s}",
                    "a --shared path is the host's, read-only, with all under it; drop one")


# --- unit directives ----------------------------------------------------------------------------

# Directives naming directories relative to a fixed base (systemd.exec(5)).
_DIRECTORY_KEYS = (
    ("StateDirectory", "/var/lib"),
    ("CacheDirectory", "/var/cache"),
    ("LogsDirectory", "/var/log"),
    ("ConfigurationDirectory", "/etc"),
    ("RuntimeDirectory", "/run"),
)
# The section holding the exec directives, per unit type.
_EXEC_SECTION = {"service": "Service", "socket": "Socket", "mount": "Mount", "swap": "Swap"}


def _unit_claims(unit: UnitFile, root: Path, where: str) -> list[_Claim]:
    """The claims of the unit's directives; `where` names the unit in the reasons."""
    section = _EXEC_SECTION.get(unit.name.rpartition(".")[2])
    if section is None:
        return []
    out: list[_Claim] = []
    for key, base in _DIRECTORY_KEYS:
        out += _directory_claims(unit, section, key, base, where)
    out += _path_list_claims(unit, section, root, where)
    out += _pid_file_claims(unit, section, where)
    out += _working_directory_claims(unit, section, root, where)
    out += _environment_file_claims(unit, section, where)
    return out


def _words(unit: UnitFile, section: str, key: str) -> list[str]:
    words: list[str] = []
    for value in unit.values(section, key):
        try:
            words += shlex.split(value)
        except ValueError:
            raise UserError(f"{key}= in {unit.name} has unbalanced quotes: {value}",
                            "fix the unit file or add a drop-in that resets it") from None
    return words


def _directory_claims(unit: UnitFile, section: str, key: str, base: str,
                      where: str) -> list[_Claim]:
    out = []
    for word in _words(unit, section, key):
        # "a:b" makes the directory a and a symlink b to it: both live under base.
        for part in word.split(":"):
            if not part or part.startswith("/") or ".." in part.split("/"):
                raise UserError(f"{key}= in {unit.name}: '{part}' is not a relative path",
                                f"systemd rejects it too; the names are relative to {base}")
            out.append(_evidence(f"{base}/{part}", Access.PRIVATE, True, f"{key}= in {where}"))
    return out


def _absolute(unit: UnitFile, key: str, text: str) -> str:
    if not text.startswith("/"):
        raise UserError(f"{key}= in {unit.name}: '{text}' is not an absolute path",
                        "systemd rejects it too; fix the unit file")
    return text


# Path lists of systemd.exec(5), with their old names (systemd < 231, still accepted).
_READ_WRITE_KEYS = ("ReadWritePaths", "ReadWriteDirectories")
_READ_ONLY_KEYS = ("ReadOnlyPaths", "ReadOnlyDirectories")
# InaccessiblePaths= names what the service must NOT see: never evidence of a need.


def _path_list_claims(unit: UnitFile, section: str, root: Path, where: str) -> list[_Claim]:
    """ReadWritePaths= names what the service writes: private. ReadOnlyPaths= names what it
    must see: never a host secret, and under /var (where the sandbox sees only its own
    paths) private if the host has it; elsewhere the host's, read-only. Neither makes a
    whole tree (/, /etc, /var, /usr) or a kernel filesystem the sandbox's."""
    out = []
    for writes, keys in ((True, _READ_WRITE_KEYS), (False, _READ_ONLY_KEYS)):
        for key in keys:
            for word in _words(unit, section, key):
                # "-" ignores a missing path, "+" is relative to RootDirectory=: as systemd.
                path = _norm(_absolute(unit, key, word.lstrip("-+")))
                if path in _WHOLE_TREES or any(_under(path, k) for k in _KERNEL_TREES):
                    continue
                reason = f"{key}= in {where}"
                if writes:
                    out.append(_evidence(path, Access.PRIVATE, None, reason))
                elif _under(path, "/var"):
                    if _lstat(root, path) is not None:
                        out.append(_evidence(path, Access.PRIVATE, None, reason))
                else:
                    # Under /etc: the host's, seen through the sandbox's /etc, not hidden
                    # (the directive says the service reads it, not that it is the
                    # instance's own: its packages' file lists say that).
                    out.append(_evidence(path, Access.SHARED, None, reason))
    return out


def _pid_file_claims(unit: UnitFile, section: str, where: str) -> list[_Claim]:
    value = unit.value(section, "PIDFile")
    if not value:
        return []
    path = value if value.startswith("/") else f"/run/{value}"  # relative means under /run
    parent = posixpath.dirname(_norm(path))
    return [_evidence(parent, Access.PRIVATE, True, f"PIDFile= in {where}")]


def _working_directory_claims(unit: UnitFile, section: str, root: Path,
                              where: str) -> list[_Claim]:
    value = (unit.value(section, "WorkingDirectory") or "").removeprefix("-")
    if not value:
        return []
    if value == "~" or value.startswith("~/"):
        value = _home(unit.value(section, "User"), root) + value[1:]
    path = _norm(_absolute(unit, "WorkingDirectory", value))
    reason = f"WorkingDirectory= in {where}"
    if path == "/":
        return []  # the host root is always there, read-only
    if _under(path, "/var") or _under(path, "/srv"):
        return [_evidence(path, Access.PRIVATE, True, reason)]
    return [_evidence(path, Access.SHARED, True, reason + " (the host's, read-only)")]


def _home(user: str | None, root: Path) -> str:
    """The home of User= from the host's passwd; the system manager's (/root) without one."""
    if user in (None, "", "root", "0"):
        return "/root"
    for fields in _colon_file(root / "etc/passwd"):
        if len(fields) > 5 and user in (fields[0], fields[2]):
            return fields[5]
    return "/root"


def _environment_file_claims(unit: UnitFile, section: str, where: str) -> list[_Claim]:
    out = []
    key = "EnvironmentFile"
    for value in unit.values(section, key):
        path = _norm(_absolute(unit, key, value.removeprefix("-")))
        # Under /etc or /var it must be in the sandbox's private copy; elsewhere it is the host's.
        private = _under(path, "/etc") or _under(path, "/var")
        access = Access.PRIVATE if private else Access.SHARED
        out.append(_evidence(path, access, False, f"{key}= in {where}"))
    return out


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
        if n.path in _STATE_TREES or any(_under(n.path, t) for t in (
                *_NOT_DATA, *_NOT_SERVICE_DATA, "/var/run", "/var/lock")):
            continue  # a whole tree says nothing of the service; scratch and runtime
        state = any(_under(n.path, t) for t in _STATE_TREES)
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
    for path, st in _owned_under(root / "etc", "/etc", uids, gids):
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
            for path, st in _owned_by(root, tree, {user.uid}, gids, _DATA_DEPTH):
                whose = (f"user {user.name}" if st.st_uid == user.uid
                         else f"{user.name}'s own group")
                out.append(_evidence(path, Access.PRIVATE, stat.S_ISDIR(st.st_mode),
                                     f"owned by {whose} ({user.why}): the service's data"))
    return out


def _owned_by(root: Path, tree: str, uids: set[int], gids: set[int],
              depth: int) -> list[tuple[str, os.stat_result]]:
    try:
        top = os.lstat(root / tree.lstrip("/"))
    except OSError:
        return []
    out: list[tuple[str, os.stat_result]] = []
    todo = [(tree, depth)]
    while todo:
        shown, left = todo.pop()
        try:
            entries = sorted(os.scandir(root / shown.lstrip("/")), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = f"{shown}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (stat.S_ISLNK(st.st_mode) or st.st_dev != top.st_dev
                    or any(_under(path, n) for n in (*_NOT_DATA, *_NOT_SERVICE_DATA))):
                continue
            if st.st_uid in uids or st.st_gid in gids:
                out.append((path, st))
            elif stat.S_ISDIR(st.st_mode) and left > 1:
                todo.append((path, left - 1))
    return sorted(out, key=lambda e: e[0])


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("1", "yes", "true", "on")


def _owned_under(directory: Path, shown: str, uids: set[int],
                 gids: set[int]) -> list[tuple[str, os.stat_result]]:
    """The topmost entries that are not world-readable and owned by uids or gids (no links)."""
    out: list[tuple[str, os.stat_result]] = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        path = f"{shown}/{entry.name}"
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        if not st.st_mode & 0o004 and (st.st_uid in uids or st.st_gid in gids):
            out.append((path, st))
        elif stat.S_ISDIR(st.st_mode):
            out += _owned_under(Path(entry.path), path, uids, gids)
    return out


# --- packages -----------------------------------------------------------------------------------


def _packages(units: Sequence[UnitFile], pkgdb: PackageDB | None,
              explicit: Sequence[str]) -> dict[str, str | None]:
    """The packages shipping the units, then the -P ones, then the dependencies of these built
    from the same source package (samba's samba-common: one service split over packages; never
    libc or openssl); each once, with the package that brought it in (None: the first ones)."""
    if pkgdb is None:
        if explicit:
            raise UserError(f"-P {explicit[0]}: no package manager (dpkg or rpm) on this host",
                            "name the paths with --private instead")
        return {}
    for package in explicit:
        if not pkgdb.exists(package):
            listing = "dpkg -l" if pkgdb.kind == "dpkg" else "rpm -qa"
            raise UserError(f"package '{package}' is not installed on this host",
                            f"'{listing}' lists the installed packages")
    owners = [pkgdb.owner(str(unit.package_path)) for unit in units]
    found: dict[str, str | None] = dict.fromkeys([o for o in owners if o] + list(explicit))
    queue = list(found)
    while queue:
        package = queue.pop(0)
        for dep in pkgdb.same_source_dependencies(package):
            if dep not in found:
                found[dep] = package
                queue.append(dep)
    return found


def _part_of(units: Sequence[UnitFile], pkgdb: PackageDB,
             packages: Sequence[str]) -> list[tuple[UnitFile, str]]:
    """The units the packages ship that are PartOf= a confined unit (tor.service starts
    tor@default.service, which says PartOf=tor.service): stopped and restarted with it, they
    are the same service, so their directives are evidence too. Templates are left out: their
    instances are not known here."""
    names = {u.name for u in units}
    out: list[tuple[UnitFile, str]] = []
    for unit in units:
        dirs = {a for d in unit.search_path for a in _aliases(str(d))}
        for package in packages:
            for path in pkgdb.files(package):
                name = posixpath.basename(path)
                parsed = UnitName.parse(name)
                if (posixpath.dirname(path) not in dirs or parsed is None or parsed.instance == ""
                        or name in names):
                    continue
                try:
                    other = load_unit(name, unit.search_path, hostname=unit.hostname,
                                      machine_id=unit.machine_id)
                except UserError:
                    continue  # masked or broken: systemd would not run it either
                part_of = " ".join(other.values("Unit", "PartOf")).split()
                if unit.name in part_of and other.name not in names:
                    names.add(other.name)
                    out.append((other, f"{other.name} (PartOf={unit.name})"))
    return out


def _is_service_data(path: str) -> bool:
    if path in ("/var", "/etc", "/run"):
        return False  # the trees themselves are private by construction
    if not any(_under(path, top) for top in ("/var", "/etc", "/run")):
        return False  # the host root is shared read-only anyway
    return not any(_under(path, top) for top in _NOT_SERVICE_DATA)


def _package_claims(pkgdb: PackageDB, package: str, via: str | None) -> list[_Claim]:
    listed = [_norm(f) for f in pkgdb.files(package)]
    parents = {posixpath.dirname(f) for f in listed}
    origin = f"; a dependency of {via} from the same source" if via else ""
    reason = f"package {package} ({pkgdb.kind} file list{origin})"
    out = [_evidence(f, Access.PRIVATE, True if f in parents else None, reason)
           for f in listed if _is_service_data(f)]
    out += [_evidence(f, Access.PRIVATE, False, f"conffile of {package}")
            for f in map(_norm, pkgdb.conffiles(package)) if _is_service_data(f)]
    return out


SYSTEMD_REASON = "needed by systemd in the sandbox"
TEMP_REASON = "writable temporary space"
# Reasons that make a directory exist, never a reason to copy the host's content into it
# (-C must not copy the host's journal, /var/tmp or the whole of /var/lib).
SKELETON_REASONS = frozenset({SYSTEMD_REASON, TEMP_REASON})


def _baseline(generic: bool) -> list[_Claim]:
    if generic:
        return [_evidence("/var/tmp", Access.PRIVATE, True, TEMP_REASON)]
    return [_evidence(p, Access.PRIVATE, True, SYSTEMD_REASON) for p in _SYSTEMD_BASELINE]


# --- merging ------------------------------------------------------------------------------------


def _merge(claims: Iterable[_Claim], shared: Sequence[str], root: Path) -> tuple[PathEvidence, ...]:
    by_path: dict[str, list[_Claim]] = {}
    for claim in claims:
        by_path.setdefault(claim.path, []).append(claim)
    ordered = sorted(by_path, key=lambda p: p.split("/"))  # parents right before children
    return tuple(_merge_one(path, by_path[path], shared, root) for path in ordered)


def _merge_one(path: str, claims: list[_Claim], shared: Sequence[str],
               root: Path) -> PathEvidence:
    access = max(claims, key=lambda c: c.weight).access
    reasons = list(dict.fromkeys(c.reason for c in claims))
    # The administrator's --shared covers everything under it, whatever the evidence says.
    covering = [s for s in shared if _under(path, s) and s != path]
    if covering and "--shared" not in reasons:
        access = Access.SHARED
        reasons.append(f"under --shared {max(covering, key=len)}")
    st = _lstat(root, path)
    return PathEvidence(
        path=path,
        access=access,
        is_dir=_is_dir(claims, st),
        reasons=tuple(reasons),
        owner=(st.st_uid, st.st_gid) if st else None,
        mode=stat.S_IMODE(st.st_mode) if st else None,
    )


def _is_dir(claims: list[_Claim], st: os.stat_result | None) -> bool:
    said = {c.is_dir for c in claims} - {None}
    if said:
        return True in said
    return stat.S_ISDIR(st.st_mode) if st else True


def _lstat(root: Path, path: str) -> os.stat_result | None:
    try:
        return os.lstat(root / path.lstrip("/"))
    except OSError:
        return None
