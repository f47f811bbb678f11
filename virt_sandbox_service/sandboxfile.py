"""Sandbox files: a sandbox described by `sandboxes.d/NAME.sandbox`, read into create's request.

The format is systemd's unit-file syntax (INI with systemd's rules), as podman's Quadlet uses
for `.container` files, rather than TOML:
- the admins who write these files already write units and drop-ins, and the sandbox *is* a
  unit (NAME_sandbox.service): `[Install] WantedBy=` means what it means there, and the
  generator (generator.py) maps the file to a unit as Quadlet does;
- repeated keys are how systemd lists things (`Unit=` twice, `Mount=` per mount; an empty
  assignment resets the list), which matches create's repeatable options one to one, with no
  quoting or array syntax to learn; TOML would need arrays and quoted strings for every path;
- `#`/`;` comments and trailing-backslash continuations as in units; no nesting is needed.

One key per create option, named as systemd or Quadlet would name it (KEYS: key -> the
option's argparse dest). A file becomes the very argparse Namespace the CLI builds, and
cli.create_request turns that into a CreateRequest: the same parsers and validators as
`create`, no second reading of any value. Each value is checked on its own line first (the
option's own parser), so a bad value is reported as FILE:LINE, as is an unknown section or
key (Quadlet's rule: a typo is an error, never ignored).

NAME is the file's name without `.sandbox` (a sandbox name, checked as create checks it).
Parsing (`parse`) is pure apart from reading the file; `check_values` runs the options'
parsers (which may look at the host, as create's do).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .config import validate_abs_path, validate_name
from .errors import UserError
from .settings import ETC_CHOICES as ETC_CHOICES

SUFFIX = ".sandbox"
SECTION = "Sandbox"
INSTALL = "Install"
INSTALL_KEYS = ("WantedBy", "RequiredBy")


@dataclass(frozen=True)
class Key:
    dest: str  # create's argparse dest
    option: str  # its option, for the docs and messages
    kind: str  # "list" (repeatable), "flag" (a boolean), "text" (last one wins), "words"


# Key -> create's option: the rows of the settings table (settings.py), where each option is
# declared once for argparse, these files and the man page.
KEYS: dict[str, Key] = {k: Key(s.dest, s.option, s.kind) for k, s in settings.by_key().items()}
_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    line: int


@dataclass(frozen=True)
class SandboxFile:
    path: Path
    name: str
    entries: tuple[Entry, ...]  # [Sandbox], in file order
    install: tuple[Entry, ...] = field(default=())  # [Install]

    def where(self, e: Entry) -> str:
        return f"{self.path}:{e.line}"


def name_of(path: Path) -> str:
    if path.suffix != SUFFIX:
        raise UserError(f"{path}: a sandbox file's name ends in {SUFFIX}",
                        f"name it NAME{SUFFIX}, NAME being the sandbox's")
    try:
        return validate_name(path.stem)
    except UserError as e:
        raise UserError(f"{path}: {e.message}", e.hint) from None


def parse(path: Path) -> SandboxFile:
    """The file's sections and keys (systemd syntax); unknown ones are errors at FILE:LINE."""
    name = name_of(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}",
                        "a sandbox file is UTF-8 text that root can read") from None
    section = ""
    out: list[Entry] = []
    install: list[Entry] = []
    for lineno, line in _logical_lines(text):
        where = f"{path}:{lineno}"
        if line.startswith("["):
            if not line.endswith("]") or line[1:-1] not in (SECTION, INSTALL):
                raise UserError(f"{where}: unknown section {line}",
                                f"a sandbox file has [{SECTION}] and [{INSTALL}]")
            section = line[1:-1]
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not section:
            raise UserError(f"{where}: expected KEY=VALUE in a section, found {line!r}",
                            f"start the file with [{SECTION}]")
        known = KEYS if section == SECTION else INSTALL_KEYS
        if key not in known:
            raise UserError(f"{where}: unknown key {key!r} in [{section}]",
                            "the keys are: " + ", ".join(known))
        (out if section == SECTION else install).append(Entry(key, value, lineno))
    return SandboxFile(path, name, tuple(out), tuple(install))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with comments and blank lines gone, continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending is None and (not line or line[0] in "#;"):
            continue
        if pending is not None and line and line[0] in "#;":
            continue  # systemd: a comment inside a continuation is skipped
        start, so_far = pending if pending else (n, "")
        if line.endswith("\\"):
            pending = (start, so_far + line[:-1] + " ")
            continue
        pending = None
        out.append((start, so_far + line))
    if pending is not None:
        out.append(pending)
    return out


def namespace(sf: SandboxFile) -> argparse.Namespace:
    """The Namespace `create` would have parsed from the equivalent command line."""
    from .cli import build_parser

    # create's own defaults, for every option (one a file leaves out is as on the CLI).
    ns = build_parser().parse_args(["create", sf.name])
    for key in KEYS.values():
        if key.kind in ("list", "words"):
            setattr(ns, key.dest, [])
    for e in sf.entries:
        key = KEYS[e.key]
        value = _value(sf, e, key)
        if key.kind == "list":
            setattr(ns, key.dest, [*getattr(ns, key.dest), value] if e.value else [])
        else:
            setattr(ns, key.dest, value)
    ns.command = ["--", *ns.command] if ns.command else []
    return ns


def _value(sf: SandboxFile, e: Entry, key: Key) -> object:
    if key.kind == "flag":
        if e.value.lower() not in (*_TRUE, *_FALSE):
            raise UserError(f"{sf.where(e)}: {e.key}={e.value}: not a boolean",
                            "write yes or no")
        return e.value.lower() in _TRUE
    if key.kind == "words":
        try:
            return shlex.split(e.value)
        except ValueError as err:
            raise UserError(f"{sf.where(e)}: {e.key}=: {err}",
                            "quote words as in a unit's ExecStart=") from None
    return e.value or None if key.kind == "text" else e.value


def check_values(sf: SandboxFile) -> None:
    """Each value through its option's own parser, so an error names FILE:LINE."""
    checks = _checks()
    for e in sf.entries:
        check = checks.get(e.key)
        if check is None or not e.value:
            continue
        try:
            check(e.value)
        except UserError as err:
            raise UserError(f"{sf.where(e)}: {e.key}={e.value}: {err.message}",
                            err.hint) from None


def _checks() -> dict[str, Callable[[str], object]]:
    from . import graphics, image, limits, registry, unitfile
    from .config import driver_for_uri
    from .mounts import parse_mount
    from .network import parse_network

    def limit(dest: str) -> Callable[[str], object]:
        def check(value: str) -> None:
            given: dict[str, Any] = {dest: (value,) if dest.startswith("device_") else value}
            limits.check_enforceable(limits.parse_limits(
                dataclasses.replace(limits.LimitArgs(), **given), os.cpu_count() or 1))
        return check

    return {
        "Unit": lambda v: unitfile.resolve_unit_name(v, "x"),
        "Connect": driver_for_uri,
        "Path": lambda v: validate_abs_path(v, "Path"),
        "Private": lambda v: validate_abs_path(v, "path"),
        "Shared": lambda v: validate_abs_path(v, "path"),
        "ImageSize": image.parse_image_size,
        "Etc": _etc,
        "Security": registry.parse_security,
        "CapabilityDrop": lambda v: limits.parse_caps((v,), ()),
        "CapabilityAdd": lambda v: limits.parse_caps((), (v,)),
        "SyscallAllow": lambda v: limits.parse_syscall_allow((v,)),
        "Memory": limit("memory"), "CPUWeight": limit("cpu_weight"),
        "CPUQuota": limit("cpu_quota"), "BlockIOWeight": limit("blkio_weight"),
        "Tasks": limit("tasks"),
        **{key: limit(KEYS[key].dest) for key in (
            "MemorySoft", "MemorySwap", "CPUSet", "NUMANodes", "DeviceReadBps",
            "DeviceWriteBps", "DeviceReadIOPS", "DeviceWriteIOPS")},
        "Mount": parse_mount,
        "Network": parse_network,
        "Graphics": graphics.parse_type,
        "GraphicsListen": lambda v: graphics.parse_listen(v, password_option=False),
    }


def _etc(value: str) -> str:
    if value not in ETC_CHOICES:
        raise UserError(f"'{value}' is not a valid --etc value ({', '.join(ETC_CHOICES)})",
                        f"write Etc={' or Etc='.join(ETC_CHOICES)}")
    return value


def find(paths: list[Path]) -> list[Path]:
    """The sandbox files among PATHs: a file as given, a directory's *.sandbox (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix == SUFFIX and q.is_file())
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or directory",
                            f"give sandbox files (NAME{SUFFIX}) or directories holding them")
    return out
