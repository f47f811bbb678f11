"""Reading the host's systemd unit files the way systemd reads them.

Search path priority, aliases (symlinks), masking, template instances, `.d/` drop-ins (unit,
template, dash-prefix and type level), continuation lines, list resets ("Key=") and specifiers.
Pure: it only reads files; it never asks a running systemd.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# systemd's system unit search path, highest priority first.
SYSTEM_UNIT_PATH: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    )
)

UNIT_TYPES = (
    "service", "socket", "target", "timer", "path", "mount", "automount", "swap", "device",
    "slice", "scope",
)
_NAME_RE = re.compile(
    r"(?P<prefix>[A-Za-z0-9:_.\\-]+)(?:@(?P<instance>[A-Za-z0-9:_.\\-]*))?"
    r"\.(?P<type>" + "|".join(UNIT_TYPES) + r")"
)
_NAME_MAX = 255
_NAME_HINT = "unit names use letters, digits and ':-_.\\', e.g. apache2.service or postfix@.service"
_SYNTAX_HINT = "fix the unit file (see systemd.syntax(7)) or remove it"
_MAX_LINKS = 40


@dataclass(frozen=True)
class UnitName:
    """A parsed unit name: prefix, instance (None: not a template; "": a bare template), type."""

    prefix: str
    instance: str | None
    type: str

    @classmethod
    def parse(cls, name: str) -> UnitName | None:
        m = _NAME_RE.fullmatch(name)
        if not m or len(name) > _NAME_MAX:
            return None
        return cls(m["prefix"], m["instance"], m["type"])

    @property
    def template(self) -> str:
        return f"{self.prefix}@.{self.type}"

    def __str__(self) -> str:
        if self.instance is None:
            return f"{self.prefix}.{self.type}"
        return f"{self.prefix}@{self.instance}.{self.type}"


def escape(text: str) -> str:
    """Escape a plain string for use in a unit name, as `systemd-escape` does."""
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_")) or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def unescape(text: str) -> str:
    """The inverse of escape(): '-' is '/', '\\xNN' is a byte."""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "-":
            raw += b"/"
        elif text.startswith("\\x", i) and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]):
            raw.append(int(text[i + 2 : i + 4], 16))
            i += 3
        else:
            raw += text[i].encode()
        i += 1
    return raw.decode(errors="replace")


def resolve_unit_name(spec: str, sandbox_name: str) -> str:
    """'apache2' -> 'apache2.service'; 'foo@.service' -> 'foo@<sandbox_name>.service'."""
    if "/" in spec:
        raise UserError(f"'{spec}' is a path, not a unit name",
                        "give the unit's name, e.g. apache2.service")
    # Like systemctl: a name without a known type suffix is a service.
    name = spec if spec.rpartition(".")[2] in UNIT_TYPES and "." in spec else f"{spec}.service"
    parsed = UnitName.parse(name)
    if parsed is None:
        raise UserError(f"'{spec}' is not a valid systemd unit name", _NAME_HINT)
    if parsed.instance == "":
        if not sandbox_name:
            raise UserError(f"cannot instantiate '{name}' without a sandbox name",
                            f"name the instance, e.g. {parsed.prefix}@main.{parsed.type}")
        parsed = UnitName(parsed.prefix, escape(sandbox_name), parsed.type)
    return str(parsed)


@dataclass(frozen=True)
class Entry:
    """One assignment, with where it came from (for messages)."""

    key: str
    value: str
    file: Path
    line: int


@dataclass(frozen=True)
class Section:
    """All assignments of one section name, fragment first, then drop-ins in order applied."""

    name: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class UnitFile:
    name: str
    path: Path
    dropins: tuple[Path, ...]
    sections: tuple[Section, ...]
    # Where the unit was looked up (deduplicated); used to find the vendor file.
    search_path: tuple[Path, ...] = ()
    # Host-dependent specifiers (%H, %l, %m); unknown unless the caller says.
    hostname: str | None = None
    machine_id: str | None = None
    # A unit made by systemd's sysv generator (sysvunit.py): its text, and the init script
    # it runs (which the package database knows, not the unit).
    generated: str | None = None
    source: Path | None = None

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def assignments(self, section: str, key: str) -> list[Entry]:
        """The effective assignments of key: after the last empty one, specifiers expanded."""
        found = self.section(section)
        entries = [e for e in found.entries if e.key == key] if found else []
        # systemd list semantics: "Key=" resets everything assigned before it.
        resets = [i for i, e in enumerate(entries) if e.value == ""]
        if resets:
            entries = entries[resets[-1] + 1 :]
        return [Entry(e.key, self._expand(e), e.file, e.line) for e in entries]

    def values(self, section: str, key: str) -> list[str]:
        return [e.value for e in self.assignments(section, key)]

    def value(self, section: str, key: str) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else None

    @property
    def package_path(self) -> Path:
        """The vendor copy of the fragment (lowest-priority directory holding it); a generated
        unit's init script."""
        if self.source is not None:
            return self.source
        parsed = UnitName.parse(self.path.name)
        names = [self.path.name] + ([parsed.template] if parsed and parsed.instance else [])
        for directory in reversed(self.search_path):
            for name in names:
                candidate = directory / name
                if os.path.lexists(candidate):
                    return candidate
        return self.path

    def _expand(self, entry: Entry) -> str:
        def replace(m: re.Match[str]) -> str:
            return self._specifier(m.group(1), entry)

        return re.sub(r"%(.|$)", replace, entry.value, flags=re.DOTALL)

    def _specifier(self, letter: str, entry: Entry) -> str:
        if letter in ("", "%"):
            return "%"
        table = self._specifier_table()
        if letter in table:
            return table[letter]
        where = f"{entry.key}= ({entry.file}:{entry.line})"
        if letter in "Hlmq":
            raise UserError(f"unit '{self.name}' uses %{letter} in {where}, "
                            "but the sandbox's host name and machine ID are not known here",
                            "pass hostname= and machine_id= to load_unit()")
        raise UserError(f"unit '{self.name}' uses unknown specifier %{letter} in {where}",
                        "see SPECIFIERS in systemd.unit(5)")

    def _specifier_table(self) -> dict[str, str]:
        parsed = UnitName.parse(self.name)
        assert parsed is not None  # load_unit() only makes UnitFiles with valid names
        instance = parsed.instance or ""
        last = parsed.prefix.rpartition("-")[2]
        table = {
            "n": self.name, "N": self.name.rpartition(".")[0],
            "p": parsed.prefix, "P": unescape(parsed.prefix),
            "i": instance, "I": unescape(instance),
            "j": last, "J": unescape(last),
            "f": "/" + unescape(instance or parsed.prefix).lstrip("/"),
            "y": str(self.path), "Y": str(self.path.parent),
            # The system manager's directories and user, not the host's live values. Its home
            # is its $HOME, which the kernel (and libvirt's LXC init) set to "/" for PID 1;
            # its shell is root's in /etc/passwd (systemd 252, compared in test_specifiers.py).
            "t": "/run", "S": "/var/lib", "C": "/var/cache", "L": "/var/log", "E": "/etc",
            "T": "/tmp", "V": "/var/tmp", "h": "/", "u": "root", "U": "0", "g": "root",
            "G": "0", "s": _root_shell(),
        }
        if self.hostname is not None:
            short = self.hostname.partition(".")[0]
            table |= {"H": self.hostname, "l": short, "q": _pretty_hostname() or short}
        if self.machine_id is not None:
            table["m"] = self.machine_id
        # What the sandbox's systemd reads where the unit runs: the host's kernel (LXC shares
        # it; a KVM sandbox boots it), its /etc/os-release (the host root is the sandbox's).
        table |= {"a": _architecture(), "v": os.uname().release, "b": _boot_id(),
                  "d": f"/run/credentials/{self.name}"}
        release = _os_release()
        table |= {letter: release.get(key, "") for letter, key in _OS_RELEASE_SPECIFIERS}
        return table


_OS_RELEASE_SPECIFIERS = (("o", "ID"), ("w", "VERSION_ID"), ("W", "VARIANT_ID"),
                          ("B", "BUILD_ID"), ("M", "IMAGE_ID"), ("A", "IMAGE_VERSION"))
# uname's machine -> systemd's architecture name (ConditionArchitecture= in systemd.unit(5)).
_ARCHITECTURES = {
    "x86_64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86",
    "aarch64": "arm64", "aarch64_be": "arm64-be", "ppc64le": "ppc64-le", "ppc64": "ppc64",
    "ppc": "ppc", "s390x": "s390x", "s390": "s390", "riscv64": "riscv64",
    "riscv32": "riscv32", "sparc64": "sparc64", "loongarch64": "loongarch64",
    "alpha": "alpha", "ia64": "ia64", "parisc": "parisc",
}


def _architecture() -> str:
    machine = os.uname().machine
    if re.fullmatch(r"armv\d+.*b", machine):
        return "arm-be"
    if machine.startswith("arm"):
        return "arm"
    return _ARCHITECTURES.get(machine, machine)


def _root_shell() -> str:
    import pwd

    try:
        return pwd.getpwuid(0).pw_shell or "/bin/sh"
    except KeyError:
        return "/bin/sh"


def _boot_id() -> str:
    """The running kernel's boot ID, as systemd formats it (no dashes)."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip().replace("-", "")


def _key_values(path: str) -> dict[str, str]:
    """An os-release(5)/machine-info(5) file: KEY=VALUE lines with shell quoting."""
    import shlex

    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:  # unbalanced quotes: as written
                words = [value]
            out[key] = words[0] if words else ""
    return out


def _os_release() -> dict[str, str]:
    return _key_values("/etc/os-release") or _key_values("/usr/lib/os-release")


def _pretty_hostname() -> str:
    return _key_values("/etc/machine-info").get("PRETTY_HOSTNAME", "")


def load_unit(
    name: str,
    search_path: Sequence[Path] = SYSTEM_UNIT_PATH,
    *,
    hostname: str | None = None,
    machine_id: str | None = None,
) -> UnitFile:
    """Find and parse the unit `name` with its drop-ins. Raises UserError with a hint."""
    parsed = UnitName.parse(name)
    if parsed is None:
        raise UserError(f"'{name}' is not a valid systemd unit name", _NAME_HINT)
    if parsed.instance == "":
        raise UserError(f"unit '{name}' is a template",
                        f"name an instance of it, e.g. {parsed.prefix}@web1.{parsed.type}")
    dirs = _unique_dirs(search_path)
    try:
        fragment = _find_fragment(parsed, dirs)
    except UserError:
        generated = _sysv_unit(name, dirs, hostname, machine_id)
        if generated is None:
            raise
        return generated
    path = _follow_links(name, fragment)
    canonical = _canonical_name(parsed, fragment, path)
    dropins = _find_dropins([canonical] + ([name] if name != canonical else []), dirs)
    entries = _parse_file(canonical, path)
    for dropin in dropins:
        entries += _parse_file(canonical, dropin)
    return UnitFile(canonical, path, tuple(dropins), _group(entries), dirs, hostname, machine_id)


def _sysv_unit(name: str, dirs: tuple[Path, ...], hostname: str | None,
               machine_id: str | None) -> UnitFile | None:
    """No unit file, but /etc/init.d/PREFIX: the unit systemd's sysv generator makes of it,
    with the unit's drop-ins, as systemd would load it (see sysvunit.py)."""
    from . import sysvunit

    made = sysvunit.generate(name)
    if made is None:
        return None
    text, script = made
    path = sysvunit.GENERATOR_LATE / name
    entries = _parse_text(name, path, text)
    dropins = tuple(_find_dropins([name], dirs))
    for dropin in dropins:
        entries += _parse_file(name, dropin)
    return UnitFile(name, path, dropins, _group(entries), dirs, hostname, machine_id,
                    generated=text, source=script)


def _unique_dirs(search_path: Sequence[Path]) -> tuple[Path, ...]:
    # With merged /usr, /lib/systemd/system and /usr/lib/systemd/system are one directory:
    # read it once, under the first name (the one the package database usually records).
    seen: set[str] = set()
    out = []
    for d in search_path:
        real = os.path.realpath(d)
        if real not in seen:
            seen.add(real)
            out.append(Path(d))
    return tuple(out)


def _find_fragment(parsed: UnitName, dirs: Sequence[Path]) -> Path:
    # As systemd: the instance's own file anywhere in the path beats the template.
    candidates = [str(parsed)] + ([parsed.template] if parsed.instance else [])
    for candidate in candidates:
        for d in dirs:
            if os.path.lexists(d / candidate):
                return d / candidate
    raise UserError(f"unit '{parsed}' is not installed on this host",
                    "'systemctl list-unit-files' lists the installed units; "
                    "install the package that ships it")


def _follow_links(name: str, fragment: Path) -> Path:
    """Follow an alias symlink chain to the file; refuse masked or broken units."""
    path = fragment
    for _ in range(_MAX_LINKS):
        if not path.is_symlink():
            break
        path = Path(os.path.normpath(path.parent / os.readlink(path)))
    if _is_masked(path):
        raise UserError(f"unit '{name}' is masked ({fragment} is empty or links to /dev/null)",
                        f"'systemctl unmask {name}' if the service should run")
    try:
        if path.is_file():
            return path
    except OSError:
        pass
    raise UserError(f"unit '{name}': {fragment} does not lead to a readable file",
                    "remove the broken link or reinstall the package that ships the unit")


def _is_masked(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size == 0)


def _canonical_name(parsed: UnitName, fragment: Path, path: Path) -> str:
    """An alias (symlink) takes the name of its target; an instance keeps its instance."""
    if fragment == path:
        return str(parsed)
    target = UnitName.parse(path.name)
    if target is None or target.type != parsed.type:
        return str(parsed)
    if target.instance == "":
        if not parsed.instance:
            return str(parsed)  # a plain name cannot alias a template
        return str(UnitName(target.prefix, parsed.instance, target.type))
    return str(target)


def _dropin_names(name: str) -> list[str]:
    """foo-bar@x.service -> foo-bar@x.service, foo-bar@.service, foo-.service (specific first)."""
    parsed = UnitName.parse(name)
    assert parsed is not None
    names = [name] + ([parsed.template] if parsed.instance else [])
    prefix = parsed.prefix
    while (dash := prefix.rfind("-")) > 0:
        prefix = prefix[:dash]
        names.append(f"{prefix}-.{parsed.type}")
    return names


def _find_dropins(names: Sequence[str], dirs: Sequence[Path]) -> list[Path]:
    """The .conf drop-ins systemd applies, in the order it applies them.

    Directories are listed in systemd's order (each name over the whole search path, the type
    level last); the first file of a given name wins, so /etc overrides /lib and a more specific
    directory overrides a more generic one. Then all are applied sorted by file name.
    """
    dropin_dirs = [d / f"{n}.d" for name in names for d in dirs for n in _dropin_names(name)]
    unit_type = names[0].rpartition(".")[2]
    dropin_dirs += [d / f"{unit_type}.d" for d in dirs]
    chosen: dict[str, Path] = {}
    for d in dropin_dirs:
        for file_name in _conf_files(d):
            chosen.setdefault(file_name, d / file_name)
    # A masked drop-in (empty or /dev/null) hides same-named lower ones and adds nothing.
    return [chosen[f] for f in sorted(chosen) if not _is_masked(chosen[f])]


def _conf_files(directory: Path) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [n for n in names if n.endswith(".conf") and
            ((directory / n).is_file() or _is_masked(directory / n))]


def _parse_file(unit: str, path: Path) -> list[tuple[str, Entry]]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # as systemd, skip a BOM
    except (OSError, UnicodeDecodeError) as e:
        reason = (e.strerror or str(e)) if isinstance(e, OSError) else "not UTF-8 text"
        raise UserError(f"unit '{unit}': cannot read {path}: {reason}",
                        "check the file's permissions and contents") from None
    return _parse_text(unit, path, text)


def _parse_text(unit: str, path: Path, text: str) -> list[tuple[str, Entry]]:
    out = []
    section: str | None = None
    for number, line in _logical_lines(text):
        if line.startswith("["):
            section = _section_header(unit, path, number, line)
        elif not line or line.startswith(".include"):
            continue  # .include is obsolete; systemd ignores it too
        else:
            out.append((_need_section(unit, path, number, section),
                        _assignment(unit, path, number, line)))
    return out


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) with comments dropped and continuations joined.

    As systemd: a trailing backslash becomes a space and the next line is appended, and comment
    lines inside a continued line are skipped.
    """
    pending: str | None = None
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip()[:1] in ("#", ";"):
            continue
        if pending is None:
            start = number
        joined = (pending or "") + raw
        trailing = len(joined) - len(joined.rstrip("\\"))
        if trailing % 2:
            pending = joined[:-1] + " "
            continue
        pending = None
        yield start, joined.strip()
    if pending is not None:
        yield start, pending.strip()


def _section_header(unit: str, path: Path, number: int, line: str) -> str:
    if not line.endswith("]") or len(line) < 3:
        raise UserError(f"unit '{unit}': {path}:{number}: invalid section header '{line}'",
                        _SYNTAX_HINT)
    return line[1:-1]


def _need_section(unit: str, path: Path, number: int, section: str | None) -> str:
    if section is None:
        raise UserError(f"unit '{unit}': {path}:{number}: assignment before any [Section]",
                        _SYNTAX_HINT)
    return section


def _assignment(unit: str, path: Path, number: int, line: str) -> Entry:
    key, eq, value = line.partition("=")
    if not eq or not key.strip():
        raise UserError(f"unit '{unit}': {path}:{number}: expected Key=value, got '{line}'",
                        _SYNTAX_HINT)
    return Entry(key.strip(), value.strip(), path, number)


def _group(entries: list[tuple[str, Entry]]) -> tuple[Section, ...]:
    """Sections in first-seen order, each with its entries in file order."""
    grouped: dict[str, list[Entry]] = {}
    for section, entry in entries:
        grouped.setdefault(section, []).append(entry)
    return tuple(Section(name, tuple(items)) for name, items in grouped.items())
