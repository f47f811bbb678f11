"""Which paths a sandbox gets privately, and why: decided from evidence, never from guesses.

The evidence is the units' own directives (StateDirectory=, ReadWritePaths=, ReadOnlyPaths=,
...) and those of the units their packages ship that are PartOf= them, the package manager's
file lists and conffiles of the packages that ship them and of their dependencies built from
the same source package, what the service's configuration names and what its users own
(servicedata.py), what systemd itself needs in the sandbox, and the administrator's
--private/--shared overrides. Each is a claim (claims.py); gather() merges them per path.
Everything else of the host is seen read-only. Pure: reads the package database and stat()s
paths, changes nothing.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from .claims import (
    _EXEC_SECTION,
    _PRIVATE_OVERRIDE,
    _SHARED_OVERRIDE,
    _Claim,
    _evidence,
    _is_service_data,
    _words,
)
from .claims import NOT_SERVICE_DATA as NOT_SERVICE_DATA
from .errors import UserError

# The path vocabulary, the host-secret walk and the package databases live in modules of
# their own (pathevidence.py, hostsecrets.py, pkgdb.py); importers keep finding them here.
from .hostsecrets import _colon_file
from .hostsecrets import hidden_secrets as hidden_secrets
from .pathevidence import SKELETON_REASONS as SKELETON_REASONS
from .pathevidence import SYSTEMD_REASON, TEMP_REASON, _norm, under
from .pathevidence import Access as Access
from .pathevidence import PathEvidence as PathEvidence
from .pkgdb import _USRMERGE, _aliases
from .pkgdb import DpkgDB as DpkgDB
from .pkgdb import PackageDB as PackageDB
from .pkgdb import RpmDB as RpmDB
from .pkgdb import detect_package_db as detect_package_db
from .pkgdb import parse_dpkg_status as parse_dpkg_status
from .plantypes import GENERATOR_REASON, is_generator
from .servicedata import (
    _named_data_claims,
    _named_secret_claims,
    _own_user_claims,
    _owned_data_claims,
)
from .unitfile import UnitFile, UnitName, load_unit

# --- evidence -----------------------------------------------------------------------------------

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
        raise UserError(f"{option} '{text}' must not contain '..'",
                        f"write the path it means, e.g. {_norm(text)}")
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
            if under(p, s):
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
                if path in _WHOLE_TREES or any(under(path, k) for k in _KERNEL_TREES):
                    continue
                reason = f"{key}= in {where}"
                if writes:
                    out.append(_evidence(path, Access.PRIVATE, None, reason))
                elif under(path, "/var"):
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
    if under(path, "/var") or under(path, "/srv"):
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
        private = under(path, "/etc") or under(path, "/var")
        access = Access.PRIVATE if private else Access.SHARED
        out.append(_evidence(path, access, False, f"{key}= in {where}"))
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




def _package_claims(pkgdb: PackageDB, package: str, via: str | None) -> list[_Claim]:
    listed = [_norm(f) for f in pkgdb.files(package)]
    parents = {posixpath.dirname(f) for f in listed}
    origin = f"; a dependency of {via} from the same source" if via else ""
    reason = f"package {package} ({pkgdb.kind} file list{origin})"
    out = [_evidence(f, Access.PRIVATE, True if f in parents else None, reason)
           for f in listed if _is_service_data(f)]
    out += [_evidence(f, Access.PRIVATE, False, f"conffile of {package}")
            for f in map(_norm, pkgdb.conffiles(package)) if _is_service_data(f)]
    out += [_evidence(f, Access.SHARED, False, GENERATOR_REASON.format(package=package))
            for f in listed if is_generator(f)]
    return out


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
    covering = [s for s in shared if under(path, s) and s != path]
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
