"""The sandbox configuration: one frozen dataclass, its on-disk JSON file, and input parsers.

Every setting is declared once here; the CLI, the config file and `inspect` all read these
fields, so they cannot drift. Parsers raise UserError naming the bad value and a hint.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UserError
from .hostpaths import DEFAULT_URI as DEFAULT_URI
from .hostpaths import FORMAT_VERSION as FORMAT_VERSION
from .hostpaths import NAME_MAX as NAME_MAX
from .hostpaths import NAME_RE as NAME_RE
from .hostpaths import Driver as Driver
from .hostpaths import Kind as Kind
from .hostpaths import Paths as Paths
from .hostpaths import read_config_text as read_config_text
from .hostpaths import shown as shown
from .hostpaths import validate_name as validate_name

# The hint for a config file this tool did not write as it is.
DAMAGED = "the file is damaged: was it edited by hand?"

if TYPE_CHECKING:
    from .mounts import MountSpec
    from .network import NetSpec

IDMAP_COUNT = 65536
IDMAP_FIRST = 1 << 20  # above the ranges useradd hands out and /etc/subuid's usual 100000


class SecurityMode(enum.StrEnum):
    DYNAMIC = "dynamic"
    STATIC = "static"


class GraphicsType(enum.StrEnum):
    """--graphics: the display a KVM sandbox gets (graphics.py)."""

    VNC = "vnc"
    SPICE = "spice"


E = TypeVar("E", bound=enum.StrEnum)


def new_machine_id() -> str:
    """A fresh machine ID: 128 random bits as a version 4 UUID in hex, as systemd makes one
    (machine-id(5)). Not uuid.uuid4(): the uuid module loads platform (~2 ms of each run)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    return b.hex()


def parse_enum(cls: type[E], value: str, what: str) -> E:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise UserError(f"'{value}' is not a valid {what} ({choices})",
                        f"write one of: {choices}") from None


def check_arg_text(argv: Sequence[str]) -> None:
    """Command words libvirt's XML can carry to the sandbox's init: no control characters
    (tab and newline aside), and a first word that is not empty."""
    if argv and not argv[0]:
        raise UserError("the command is an empty word", "e.g. -- /bin/echo hello")
    for arg in argv:
        if any(ord(c) < 32 and c not in "\t\n" for c in arg):
            raise UserError(f"command argument {shown(arg)} has control characters",
                            "libvirt cannot pass them to the sandbox's init")


URI_RE = re.compile(r"(?P<scheme>lxc|qemu)(\+[a-z]+)?://[^/\s]*(?P<path>/[a-z]*)(\?\S*)?")


def driver_for_uri(uri: str) -> Driver:
    m = URI_RE.fullmatch(uri)
    if m and m["scheme"] == "lxc" and m["path"] == "/":
        return Driver.LXC
    if m and m["scheme"] == "qemu" and m["path"] in ("/system", "/session"):
        return Driver.KVM
    raise UserError(
        f"URI {shown(uri)} is not a libvirt LXC or QEMU URI",
        "use -c lxc:/// (containers) or -c qemu:///system (micro-VMs)",
    )


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}


def parse_size(text: str, what: str = "size") -> int:
    """'512M', '2GiB', '1048576' -> bytes. K/M/G/T and KiB.. are binary; KB/MB.. decimal."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise UserError(f"{what} '{text}' is not a size",
                        "write e.g. 512M, 2G, 1GiB or a byte count")
    value = int(m.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise UserError(f"{what} '{text}' must be greater than zero",
                        "write e.g. 512M, 2G, 1GiB or a byte count")
    return value


def validate_abs_path(text: str, what: str) -> str:
    if not text.startswith("/"):
        raise UserError(f"{what} {shown(text)} is not an absolute path", "paths start with '/'")
    norm = os.path.normpath(text)
    if any(part == ".." for part in text.split("/")):
        raise UserError(f"{what} {shown(text)} must not contain '..'",
                        f"write the path it means, e.g. {shown(norm)}")
    if not text.isprintable():
        raise UserError(f"{what} {shown(text)} has control characters",
                        "paths here are printable text")
    return norm


def validate_dir_path(text: str, what: str) -> str:
    """An absolute path that is, or can become, a directory: no part of it is a file."""
    norm = validate_abs_path(text, what)
    probe = norm
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{what} {shown(text)} is not a directory"
                        + ("" if probe == norm else f" ({probe} is not one)"),
                        "give a directory, or a path that can become one")
    return norm


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that defines one sandbox. Saved as JSON; loading it back gives an equal object."""

    name: str
    kind: Kind
    uri: str
    state_dir: str
    units: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    private: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    copy: bool = False
    security_mode: SecurityMode = SecurityMode.DYNAMIC
    security_label: str = ""
    machine_id: str = ""
    memory: int | None = None  # bytes
    cpu_weight: int | None = None  # relative CPU shares (cgroup cpu.shares), 2..262144
    cpu_quota: int | None = None  # percent of one CPU, 1..100*cores
    blkio_weight: int | None = None  # 100..1000
    tasks: int | None = None  # most processes plus threads at once (pids.max)
    # Tuning (limits.py): memtune's soft_limit and swap_hard_limit (memory plus swap), in
    # bytes; the host CPUs and NUMA nodes it runs on (cpuset lists, "" = any); device I/O
    # throttles as "KIND:DEVICE:VALUE" (limits.Throttle).
    memory_soft: int | None = None
    memory_swap: int | None = None
    cpuset: str = ""
    numa_nodes: str = ""
    io_throttle: tuple[str, ...] = ()
    caps_drop: tuple[str, ...] = ()  # Linux capabilities the sandbox's processes never get
    # Capabilities given back to the confined processes (--cap-add) beyond confine.CONFINED_CAPS,
    # and seccomp groups or calls let through (--syscall-allow); see confine.py.
    caps_add: tuple[str, ...] = ()
    syscalls_allow: tuple[str, ...] = ()
    # Host device nodes given with --device, as KIND:PATH (devices.py); LXC only.
    devices: tuple[str, ...] = ()
    # -m and -N specs, parsed (mounts.py, network.py); saved as their canonical text. No
    # networks: loopback only.
    mounts: tuple[MountSpec, ...] = ()
    networks: tuple[NetSpec, ...] = ()
    # User namespace: host uid/gid that root inside maps to (IDMAP_COUNT ids); None = none.
    id_base: int | None = None
    # Generic sandboxes: the user the command runs as (-U, -G, --username, --homedir; see
    # users.py); None: root. Resolved on the host at create, so numbers, not names.
    uid: int | None = None
    gid: int | None = None
    username: str = ""
    homedir: str = ""
    # -i SIZE: the private /etc and /var live in <state>/private.img of this many bytes
    # (see image.py); None: directories in the state dir.
    image_size: int | None = None
    # LXC: /etc is an overlay on the host's, its upper layer (the instance's own files) in
    # <state>/etc (see plan.py); False: a trimmed private copy of the host's /etc (KVM, -i,
    # user namespaces, --etc copy, and sandboxes made before overlays existed).
    etc_overlay: bool = False
    # create --graphics (KVM generic sandboxes, graphics.py): the display the VM gets and the
    # address it listens on; None and "": no display. Never a password: the domain XML would
    # hold it, and reconcile cannot read it back from libvirt.
    graphics: GraphicsType | None = None
    graphics_listen: str = ""
    format_version: int = FORMAT_VERSION
    # Free-form notes that later versions may add; kept so an older file round-trips.
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def summary(self) -> str:
        """One line naming what the sandbox runs (a title, a Description=): its units or its
        command, whitespace collapsed, so a multi-line script stays on one line."""
        return " ".join(" ".join(self.units or self.command).split())

    @property
    def driver(self) -> Driver:
        return driver_for_uri(self.uri)

    def to_json(self) -> str:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SPEC_FIELDS:
                value = [v.text for v in value]
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            data[f.name] = value
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> SandboxConfig:
        return cls.from_dict(parse_json_object(text, source), source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SandboxConfig:
        """From the file's JSON object (in the current format; see upgrade.migrate)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}",
                            "was it written by a newer virt-sandbox-service?")
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise UserError(f"{source} has format version {version}, newer than this "
                            f"virt-sandbox-service knows ({FORMAT_VERSION})",
                            "it was written by a newer version: upgrade virt-sandbox-service")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise UserError(f"{source} has the older format version {version}",
                            "bring it up to date: virt-sandbox-service upgrade --all")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _from_json_value(key, value, source)
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise UserError(f"{source}: {e}", DAMAGED) from None


def parse_json_object(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: not valid JSON ({e})", DAMAGED) from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object", DAMAGED)
    return data


def _from_json_value(key: str, value: Any, source: str = "config") -> Any:
    if key == "kind":
        return parse_enum(Kind, _typed(key, value, str, source), "sandbox kind")
    if key == "security_mode":
        return parse_enum(SecurityMode, _typed(key, value, str, source), "security mode")
    if key == "graphics":
        return None if value is None else parse_enum(
            GraphicsType, _typed(key, value, str, source), "graphics type")
    if key == "extra":
        pairs = _typed(key, value, list, source)
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise UserError(f"{source}: 'extra' must be a list of [key, value] pairs", DAMAGED)
        return tuple((str(k), str(v)) for k, v in pairs)
    types, optional = _field_types()
    expected = types[key]
    if key in _SPEC_FIELDS:
        items = _typed(key, value, list, source)
        if not all(isinstance(i, str) for i in items):
            raise UserError(f"{source}: '{key}' must be a list of strings", DAMAGED)
        if not items:  # (no parser to import: most sandboxes have no mounts, no networks)
            return ()
        try:
            return tuple(map(_SPEC_FIELDS[key](), items))
        except UserError as e:
            raise UserError(f"{source}: {e.message}", DAMAGED) from None
    if expected is tuple:
        items = _typed(key, value, list, source)
        if not all(isinstance(i, str) for i in items):
            raise UserError(f"{source}: '{key}' must be a list of strings", DAMAGED)
        return tuple(items)
    if value is None and key in optional:
        return None
    return _typed(key, value, expected, source)


def _typed(key: str, value: Any, expected: type, source: str) -> Any:
    # bool is an int in Python; a JSON true where a number belongs is still an error.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{source}: '{key}' must be {_TYPE_WORDS[expected]}, not "
                        f"{type(value).__name__}", "was the file edited by hand?")
    return value


_TYPE_WORDS = {str: "a string", int: "a whole number", bool: "true or false", list: "a list"}


def _mount_parser() -> Callable[[str], Any]:
    from .mounts import parse_mount_syntax
    return parse_mount_syntax


def _network_parser() -> Callable[[str], Any]:
    from .network import parse_network
    return parse_network


# Fields of parsed specs, saved as their canonical text, and the (pure) parser of that text;
# imported on use: mounts.py needs this module's validators.
_SPEC_FIELDS: dict[str, Callable[[], Callable[[str], Any]]] = {
    "mounts": _mount_parser, "networks": _network_parser}


@functools.cache
def _field_types() -> tuple[dict[str, type], frozenset[str]]:
    """Each config field's JSON type, from the dataclass annotations (declared once)."""
    import typing

    # The spec fields' items are parsed by their own parsers (_SPEC_FIELDS): that they are
    # tuples is all this needs of them. Stand-ins spare every load of a config the import
    # of mounts.py and network.py (about 20 ms; issue 16).
    hints = typing.get_type_hints(SandboxConfig, localns={"MountSpec": object,
                                                          "NetSpec": object})
    types: dict[str, type] = {}
    optional = set()
    for name, hint in hints.items():
        args = typing.get_args(hint)
        if type(None) in args:
            optional.add(name)
            hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint) or hint
        types[name] = tuple if origin is tuple else origin
    return types, frozenset(optional)



def load_config(paths: Paths, name: str) -> SandboxConfig:
    path, text = read_config_text(paths, name)
    return SandboxConfig.from_json(text, str(path))


def scan_configs(paths: Paths) -> list[tuple[str, SandboxConfig | UserError]]:
    """Every sandbox config file: the config, or why it cannot be read. One damaged file
    must not stop the tool from listing, creating or deleting the others (or itself)."""
    if not paths.sandboxes_dir.is_dir():
        return []
    out: list[tuple[str, SandboxConfig | UserError]] = []
    for p in sorted(paths.sandboxes_dir.glob("*.json")):
        try:
            out.append((p.stem, SandboxConfig.from_json(p.read_text(), str(p))))
        except UserError as e:
            out.append((p.stem, e))
        except (OSError, UnicodeDecodeError) as e:
            out.append((p.stem, UserError(f"{p}: {e}", "root must be able to read it")))
    return out


def all_configs(paths: Paths) -> list[SandboxConfig]:
    """The configs that can be read (see scan_configs for the others)."""
    return [c for _, c in scan_configs(paths) if isinstance(c, SandboxConfig)]
