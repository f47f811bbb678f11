"""The host's package database, read for evidence: which package owns a path, a package's
files and conffiles, and its dependencies built from the same source package. dpkg's files
are read directly (stable formats); rpm is asked. Detected, never assumed. Pure: reads only.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class PackageDB(Protocol):
    kind: str  # "dpkg" or "rpm"

    def owner(self, path: str) -> str | None: ...
    def files(self, package: str) -> list[str]: ...
    def conffiles(self, package: str) -> list[str]: ...
    def exists(self, package: str) -> bool: ...
    # The installed packages `package` depends on that are built from its own source
    # package (samba -> samba-common): the service's files split over several packages.
    def same_source_dependencies(self, package: str) -> list[str]: ...
    # For each /etc/X, how many paths under it each package ships: whose the directory is
    # (/etc/apache2 is apache2's, with php8.2-fpm's one conf beside; /etc/logrotate.d is
    # everybody's).
    def etc_owners(self) -> dict[str, dict[str, int]]: ...


# --- package databases ----------------------------------------------------------------------

# With merged /usr a file may be recorded under either name.
_USRMERGE = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _aliases(path: str) -> list[str]:
    for top in _USRMERGE:
        if path.startswith(top + "/"):
            return [path, "/usr" + path]
        if path.startswith("/usr" + top + "/"):
            return [path, path[len("/usr") :]]
    return [path]


@dataclass(frozen=True)
class _Installed:
    source: str
    depends: tuple[str, ...]


# A list's line "/etc/X/..." (a path under a directory of /etc): its X. Matched after a
# newline (the caller prepends one) rather than with re.M, whose ^ is tried at every byte.
_ETC_TOP = re.compile(rb"\n/etc/([^/\n]+)/")


class DpkgDB:
    """Reads /var/lib/dpkg/info/<pkg>[:<arch>].list and .conffiles, and /var/lib/dpkg/status
    (once), directly: stable formats."""

    kind = "dpkg"

    def __init__(self, root: Path = Path("/")) -> None:
        self._info = root / "var/lib/dpkg/info"
        self._status_file = root / "var/lib/dpkg/status"
        self._stems: list[str] | None = None
        self._status: dict[str, _Installed] | None = None
        self._etc: dict[str, dict[str, int]] | None = None

    def owner(self, path: str) -> str | None:
        wanted = [b"\n" + os.fsencode(p) + b"\n" for p in _aliases(path)]
        for stem in self._search_order(path):
            data = b"\n" + self._read(stem, "list")
            if any(w in data for w in wanted):
                return stem.partition(":")[0]
        return None

    def files(self, package: str) -> list[str]:
        return [line for stem in self._stems_of(package) for line in self._lines(stem, "list")]

    def conffiles(self, package: str) -> list[str]:
        # A line is "path" or, for newer dpkg, "path flag..." (e.g. remove-on-upgrade).
        out = []
        for stem in self._stems_of(package):
            for line in self._lines(stem, "conffiles"):
                out += [word for word in line.split() if word.startswith("/")][:1]
        return out

    def exists(self, package: str) -> bool:
        return bool(self._stems_of(package))

    def etc_owners(self) -> dict[str, dict[str, int]]:
        if self._etc is None:
            found: dict[str, dict[str, int]] = {}
            for stem in self._all_stems():
                name = stem.partition(":")[0]
                # Only the /etc lines, matched in bytes: decoding every line of ~1000 lists
                # was most of a create's evidence gathering (0.15 of 0.25 s).
                for top in _ETC_TOP.findall(b"\n" + self._read(stem, "list")):
                    counts = found.setdefault("/etc/" + os.fsdecode(top), {})
                    counts[name] = counts.get(name, 0) + 1
            self._etc = found
        return self._etc

    def same_source_dependencies(self, package: str) -> list[str]:
        installed = self._installed()
        me = installed.get(package.partition(":")[0])
        if me is None:
            return []
        return [d for d in me.depends
                if d in installed and installed[d].source == me.source and d != package]

    def _installed(self) -> dict[str, _Installed]:
        if self._status is None:
            try:
                text = self._status_file.read_text(errors="replace")
            except OSError:
                text = ""
            self._status = parse_dpkg_status(text)
        return self._status

    def _all_stems(self) -> list[str]:
        if self._stems is None:
            names = os.listdir(self._info) if self._info.is_dir() else []
            self._stems = sorted(n[: -len(".list")] for n in names if n.endswith(".list"))
        return self._stems

    def _stems_of(self, package: str) -> list[str]:
        # Multi-arch packages name their files "pkg:arch.list"; "pkg:arch" may also be asked.
        if "/" in package or package.startswith("."):
            return []
        if (self._info / f"{package}.list").is_file():
            return [package]
        return [s for s in self._all_stems() if s.partition(":")[0] == package]

    def _search_order(self, path: str) -> list[str]:
        # A file usually belongs to a package named like it (ssh.service -> openssh-server):
        # look there first, so a create does not read all ~3000 lists.
        word = re.split(r"[.@_-]", posixpath.basename(path))[0]
        stems = self._all_stems()
        likely = [s for s in stems if word and word in s]
        return likely + [s for s in stems if not (word and word in s)]

    def _read(self, stem: str, suffix: str) -> bytes:
        try:
            return (self._info / f"{stem}.{suffix}").read_bytes()
        except FileNotFoundError:
            return b""

    def _lines(self, stem: str, suffix: str) -> list[str]:
        return [os.fsdecode(line) for line in self._read(stem, suffix).splitlines() if line]


# "name", "name:arch", "name (>= 1.0)", "name [amd64]": the name is the first word.
_DEP_NAME = re.compile(r"\s*([a-z0-9][a-z0-9+.-]*)")


def parse_dpkg_status(text: str) -> dict[str, _Installed]:
    """name -> (source package, Depends and Pre-Depends names) of each installed package.

    The source is the Source: field's first word, the package's own name without one; every
    alternative of an "a | b" dependency is kept (the caller keeps only installed ones).
    """
    out: dict[str, _Installed] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t", "") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package")
        if not name or not fields.get("Status", "").endswith(" installed"):
            continue
        source = (fields.get("Source") or name).split()[0]
        depends = [m.group(1)
                   for field in ("Pre-Depends", "Depends")
                   for alternative in re.split(r"[,|]", fields.get(field, ""))
                   if (m := _DEP_NAME.match(alternative))]
        # Multi-arch packages have a stanza per architecture: one entry, their union.
        known = out.get(name)
        both = (*known.depends, *depends) if known else tuple(depends)
        out[name] = _Installed(source, tuple(dict.fromkeys(both)))
    return out


class RpmDB:
    """Asks rpm (-qf, -ql, -qc); its database format is not meant to be read directly."""

    kind = "rpm"

    def __init__(self, root: Path = Path("/")) -> None:
        self._root = root
        self._sources: dict[str, str] | None = None  # installed package -> its source RPM
        self._etc: dict[str, dict[str, int]] | None = None

    def owner(self, path: str) -> str | None:
        out = self._query("-qf", "--queryformat", "%{NAME}\\n", path)
        return out[0] if out else None

    def files(self, package: str) -> list[str]:
        return [line for line in self._query("-ql", package) if line.startswith("/")]

    def conffiles(self, package: str) -> list[str]:
        return [line for line in self._query("-qc", package) if line.startswith("/")]

    def exists(self, package: str) -> bool:
        return bool(self._query("-q", package))

    def etc_owners(self) -> dict[str, dict[str, int]]:
        if self._etc is None:
            found: dict[str, dict[str, int]] = {}
            for line in self._query("-qa", "--queryformat", "[%{NAME} %{FILENAMES}\\n]"):
                name, _, path = line.partition(" ")
                if path.startswith("/etc/") and path.count("/") >= 3:
                    counts = found.setdefault("/etc/" + path.split("/")[2], {})
                    counts[name] = counts.get(name, 0) + 1
            self._etc = found
        return self._etc

    def same_source_dependencies(self, package: str) -> list[str]:
        # rpm requires capabilities, not packages; a package provides its own name, so the
        # capabilities named like an installed package of the same source RPM are those.
        source = self._query("-q", "--queryformat", "%{SOURCERPM}\\n", package)
        if not source or source[0] in ("", "(none)"):
            return []
        if self._sources is None:
            pairs = (line.split() for line in
                     self._query("-qa", "--queryformat", "%{NAME} %{SOURCERPM}\\n"))
            self._sources = {p[0]: p[1] for p in pairs if len(p) == 2}
        required = [line.split()[0] for line in self._query("-q", "--requires", package)
                    if line.strip()]
        return [r for r in dict.fromkeys(required)
                if r != package and self._sources.get(r) == source[0]]

    def _query(self, *args: str) -> list[str]:
        root = ["--root", str(self._root)] if self._root != Path("/") else []
        proc = subprocess.run(["rpm", *root, *args], capture_output=True, text=True, check=False)
        return proc.stdout.splitlines() if proc.returncode == 0 else []


def detect_package_db(root: Path = Path("/")) -> PackageDB | None:
    """The host's package database: dpkg, rpm, or None. Detected, not assumed."""
    if (root / "var/lib/dpkg/status").is_file():
        return DpkgDB(root)
    if (root / "var/lib/rpm").is_dir() and shutil.which("rpm"):
        return RpmDB(root)
    return None
