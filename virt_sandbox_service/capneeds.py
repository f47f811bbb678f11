"""Which capabilities a confined unit needs, from evidence: its own unit file and its binary.

A confined service keeps a small capability set (confine.CONFINED_CAPS). A daemon that needs
more says so itself: `ConditionCapability=`/`AssertCapability=` (chrony: CAP_SYS_TIME),
`AmbientCapabilities=` (what it expects to hold as a non-root user), or file capabilities on
the program its `ExecStart=` runs. create warns about what the sandbox will not give, the
confined unit's drop-in asserts it (so the unit fails at start, instead of being silently
skipped for an unmet condition), and a failed start names it with the option that gives it.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from . import devices
from .config import SandboxConfig
from .confine import CAP_NUMBERS
from .confrefs import named_paths
from .pathevidence import under
from .unitfile import UnitFile, UnitName, unescape

EXEC_PREFIXES = "@-:+!|"
VFS_CAP_XATTR = "security.capability"


def _cap_names(text: str) -> list[str]:
    names = [w.lower().removeprefix("cap_") for w in text.split()]
    return [n for n in names if n in CAP_NUMBERS]


def declared(unit: UnitFile) -> list[tuple[str, str]]:
    """(capability, the directive naming it) from the unit's own settings."""
    out: list[tuple[str, str]] = []
    for section, key in (("Unit", "ConditionCapability"), ("Unit", "AssertCapability"),
                         ("Service", "AmbientCapabilities")):
        for value in unit.values(section, key):
            if value.startswith("!") or value.startswith("~"):
                continue  # "must not have", or "all but": no need
            out += [(cap, f"{key}=") for cap in _cap_names(value.lstrip("|"))]
    return out


def exec_program(unit: UnitFile) -> str | None:
    """The program of the unit's (last) ExecStart= line."""
    value = unit.value("Service", "ExecStart")
    if not value:
        return None
    word = value.split()[0].lstrip(EXEC_PREFIXES) if value.split() else ""
    return word if word.startswith("/") else None


def file_caps(blob: bytes) -> list[str]:
    """The permitted set of a security.capability xattr (vfs_cap_data, revision 2 or 3)."""
    if len(blob) < 12:
        return []
    _magic, lo, _inh_lo = struct.unpack_from("<III", blob)
    hi = struct.unpack_from("<I", blob, 12)[0] if len(blob) >= 16 else 0
    mask = lo | hi << 32
    return [name for bit, name in enumerate(CAP_NUMBERS) if mask >> bit & 1]


def program_caps(path: str) -> list[str]:
    try:
        return file_caps(os.getxattr(path, VFS_CAP_XATTR))
    except OSError:  # no such attribute, program, or file system support
        return []


def needed(unit: UnitFile) -> list[tuple[str, str]]:
    """Every (capability, why) the unit shows it needs; first reason per capability."""
    found = declared(unit)
    program = exec_program(unit)
    if program:
        found += [(cap, f"file capabilities of {program}") for cap in program_caps(program)]
    seen: dict[str, str] = {}
    for cap, why in found:
        seen.setdefault(cap, why)
    return list(seen.items())


def lacking(units: list[UnitFile], kept: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(unit, capability, why) for each capability a unit needs that `kept` lacks."""
    return [(u.name, cap, why) for u in units for cap, why in needed(u) if cap not in kept]


def describe(missing: list[tuple[str, str, str]]) -> tuple[str, str]:
    """One line naming what is lacking, and the hint that gives it."""
    parts = [f"{unit} needs CAP_{cap.upper()} ({why})" for unit, cap, why in missing]
    caps = sorted({cap for _, cap, _ in missing})
    return ("; ".join(parts) + ", which the sandbox's processes do not have",
            "give it with " + " ".join(f"--cap-add {c}" for c in caps))


# --- settings that need a mount namespace of the unit's own -------------------------------

# An LXC sandbox's systemd has no CAP_SYS_ADMIN (confine.py), so it cannot give a unit a mount
# namespace. systemd then runs the unit without one, skipping its ProtectSystem=, PrivateTmp=
# and the like (the sandbox already holds it), except when a setting would change what the
# program sees: those it refuses, failing the unit with 226/NAMESPACE (systemd's own
# insist_on_sandboxing(), the same list since systemd 247).
NAMESPACE_ONLY = ("TemporaryFileSystem", "RootDirectory", "RootImage", "MountImages",
                  "ExtensionImages", "ExtensionDirectories", "LogNamespace")
BIND_KEYS = ("BindPaths", "BindReadOnlyPaths")


def namespace_settings(unit: UnitFile) -> list[str]:
    """The unit's own settings ("Key=value") that systemd runs only in a mount namespace:
    a bind to another place (a bind of a path onto itself it skips), DynamicUser=, and
    NAMESPACE_ONLY."""
    from .claims import _words, _yes

    section = "Service"
    out = [f"{key}={word}" for key in BIND_KEYS for word in _words(unit, section, key)
           if _binds_elsewhere(word)]
    if _yes(unit.value(section, "DynamicUser")):
        out.append("DynamicUser=yes")
    out += [f"{key}={' '.join(unit.values(section, key))}" for key in NAMESPACE_ONLY
            if any(v.strip() for v in unit.values(section, key))]
    return out


def _binds_elsewhere(word: str) -> bool:
    """SOURCE[:DEST[:OPTIONS]] (a "-" before SOURCE: ignore a missing one) with a DEST that
    is not SOURCE itself."""
    source, _, rest = word.partition(":")
    dest = rest.partition(":")[0]
    return bool(dest) and os.path.normpath(source.lstrip("-")) != os.path.normpath(dest)


def unhonoured(units: list[UnitFile]) -> list[tuple[str, str]]:
    """(unit, setting) for each setting of namespace_settings."""
    return [(u.name, setting) for u in units for setting in namespace_settings(u)]


def describe_unhonoured(found: list[tuple[str, str]], state_dir: str) -> tuple[str, str]:
    """One line naming the settings, and the hint: what an admin can do instead."""
    by_unit: dict[str, list[str]] = {}
    for unit, setting in found:
        by_unit.setdefault(unit, []).append(setting)
    parts = [f"{unit} has {', '.join(settings)}" for unit, settings in by_unit.items()]
    unit, settings = next(iter(by_unit.items()))
    keys = sorted({s.partition("=")[0] for s in settings})
    dropin = f"{state_dir}/etc/systemd/system/{unit}.d/50-local.conf"
    return ("; ".join(parts) + ", which systemd sets up only in a mount namespace of the "
            "unit's own, and a sandbox's systemd cannot make one (226/NAMESPACE)",
            f"if the service can do without it, reset it in the sandbox: [Service] "
            f"{' '.join(k + '=' for k in keys)} in {dropin}; otherwise run this service "
            "on the host or in a KVM sandbox (-c qemu:///system)")


# --- the paths a unit says it cannot run without ---------------------------------------------

# Paths a unit names as prerequisites: a mount it needs (RequiresMountsFor=, a list) or a
# path that must be there (Assert*/Condition*; "!" negates, "|" makes it one of several:
# neither says it is needed).
PATH_KEYS = ("RequiresMountsFor", "AssertPathExists", "ConditionPathExists",
             "AssertPathIsDirectory", "ConditionPathIsDirectory")


def required_paths(unit: UnitFile) -> list[tuple[str, str]]:
    """(path, "Key=") for each path the unit names as a prerequisite."""
    out = []
    for key in PATH_KEYS:
        for value in unit.values("Unit", key):
            words = value.split() if key == "RequiresMountsFor" else [value.strip()]
            out += [(w, f"{key}=") for w in words if w.startswith("/")]
    return list(dict.fromkeys(out))


def missing_instance_paths(units: list[UnitFile], has: Callable[[str], bool],
                           host_has: Callable[[str], bool] = os.path.lexists
                           ) -> list[tuple[str, str, str]]:
    """(unit, path, why) for each prerequisite the instance lacks while the host has it:
    the host's instance data (a database cluster, say) that the instance does not have."""
    return [(u.name, path, why) for u in units for path, why in required_paths(u)
            if host_has(path) and not has(path)]


# instance_locator's answer for a path that is there but not looked into: a tree in an image
# (-i), or a mount's target.
NOT_LOOKED_INTO = ""


def instance_locator(cfg: SandboxConfig) -> Callable[[str], str | None]:
    """Where a path is as the sandbox's processes would see it: its own copy in the state
    directory (private /var and /etc; with an overlay /etc, the host's below unless a
    whiteout hides it), or the host's root for the rest; None where the sandbox has nothing
    there. NOT_LOOKED_INTO for a sandbox whose trees are in an image (-i) and for its mounts'
    targets: counted as there."""
    state = Path(cfg.state_dir)
    targets = [m.target for m in cfg.mounts] + list(cfg.private)

    def locate(path: str) -> str | None:
        if cfg.image_size is not None or any(under(path, t) for t in targets):
            return NOT_LOOKED_INTO
        for tree in ("/etc", "/var"):
            if under(path, tree):
                own = state / path.lstrip("/")
                try:
                    st = os.lstat(own)
                except OSError:
                    seen = (tree == "/etc" and cfg.etc_overlay and os.path.lexists(path)
                            and not _hidden_above(state, path))
                    return path if seen else None
                return None if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else str(own)
        return path if os.path.lexists(path) else None
    return locate


def instance_view(cfg: SandboxConfig) -> Callable[[str], bool]:
    """Whether a path is there as the sandbox's processes would see it (instance_locator)."""
    locate = instance_locator(cfg)
    return lambda path: locate(path) is not None


def resolve_in_instance(locate: Callable[[str], str | None], path: str,
                        hops: int = 16) -> str:
    """`path` with the symbolic links in it followed as the sandbox sees them (its own links
    where it has its own, the host's elsewhere), up to `hops` links; absolute and normal."""
    done, todo = "/", [p for p in path.split("/") if p]
    while todo:
        part = todo.pop(0)
        if part == "..":
            done = os.path.dirname(done)
            continue
        here = os.path.join(done, part) if part != "." else done
        where = locate(here)
        if where and os.path.islink(where) and hops > 0:
            hops -= 1
            link = os.readlink(where)
            done = "/" if link.startswith("/") else done
            todo = [p for p in link.split("/") if p] + todo
            continue
        done = here
    return os.path.normpath(done)


def _hidden_above(state: Path, path: str) -> bool:
    """A whiteout or an opaque directory of the overlay's upper layer at or above path."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        own = state.joinpath(*parts[:i])
        try:
            st = os.lstat(own)
        except OSError:
            return False
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        if stat.S_ISDIR(st.st_mode) and i < len(parts):
            try:
                if os.getxattr(own, "trusted.overlay.opaque") == b"y":
                    return not (state.joinpath(*parts[:i + 1])).exists()
            except OSError:
                pass
    return False


def describe_missing_paths(missing: list[tuple[str, str, str]]) -> tuple[str, str]:
    parts = [f"{unit} needs {path} ({why})" for unit, path, why in missing]
    return ("; ".join(parts) + ", which the host has and the sandbox's instance does not "
            "(neither its evidence nor its packages' set-up made it)",
            "-C starts the instance from the host's data (its /etc and /var as the host has "
            "them)")


# --- devices and the host's network interfaces ---------------------------------------------

# What libvirt's LXC driver gives every container in its /dev; a sandbox has no other host
# device, and no udev: a .device unit never becomes active in it.
LXC_DEVICES = (*devices.LXC_DEVICES, "/dev/pts", "/dev/shm")
NET_DEVICE_PREFIX = "/sys/subsystem/net/devices/"  # sys-subsystem-net-devices-IF.device


def needed_devices(unit: UnitFile) -> list[tuple[str, str]]:
    """(device path, the directive naming it) that the unit cannot run without: a .device
    unit it BindsTo=/Requires=/Requisite= (qemu-guest-agent's virtio port, a
    sys-subsystem-net-devices-IF.device), or a device node DeviceAllow= names."""
    out: list[tuple[str, str]] = []
    for key in ("BindsTo", "Requires", "Requisite"):
        for name in " ".join(unit.values("Unit", key)).split():
            parsed = UnitName.parse(name)
            if parsed is not None and parsed.type == "device":
                out.append(("/" + unescape(str(parsed).removesuffix(".device")),
                            f"{key}={name}"))
    for value in unit.values("Service", "DeviceAllow"):
        node = value.split()[0] if value.split() else ""
        if node.startswith("/dev/") and not any(
                node == d or node.startswith(d + "/") for d in LXC_DEVICES):
            out.append((node, "DeviceAllow="))
    return list(dict.fromkeys(out))


def lacking_devices(units: list[UnitFile],
                    given: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(unit, device, why) for each device a unit needs that the sandbox was not given with
    --device (`given`: the config's KIND:PATH entries). A .device unit the unit binds to
    stays lacking even so: without udev it never becomes active in a sandbox."""
    nodes = {devices.parse(d).path for d in given}
    return [(u.name, dev, why) for u in units for dev, why in needed_devices(u)
            if not (dev in nodes and why == "DeviceAllow=")]


def describe_devices(missing: list[tuple[str, str, str]]) -> tuple[str, str]:
    """One line naming the devices and host interfaces lacking, and the hint."""
    parts, nets = [], []
    for unit, dev, why in missing:
        if dev.startswith(NET_DEVICE_PREFIX):
            nets.append(dev.removeprefix(NET_DEVICE_PREFIX))
            parts.append(f"{unit} needs the host's network interface {nets[-1]} ({why})")
        else:
            parts.append(f"{unit} needs the device {dev} ({why})")
    hints = []
    if nets:
        hints.append("-N source=NET gives the sandbox an interface of its own on a libvirt "
                     "network; the host's own interfaces and network stay the host's")
    nodes = [dev for _u, dev, why in missing if why == "DeviceAllow="]
    if nodes:
        hints.append(" ".join(f"--device {d}" for d in dict.fromkeys(nodes))
                     + " gives the sandbox the device node")
    if len(nets) + len(nodes) < len(missing):
        hints.append("a unit bound to a .device unit cannot start in a sandbox (it has no "
                     "udev to make the device unit active): run this service on the host")
    return "; ".join(parts) + ", which the sandbox does not have", "; ".join(hints)


# --- the host's network, from the failed unit's own log ------------------------------------

# EADDRNOTAVAIL: the daemon binds an address of the host's network, which a sandbox (loopback,
# or interfaces of its own with -N) does not have. Nothing in a unit file says so in advance.
_NO_ADDRESS = re.compile(r"Cannot assign requested address|EADDRNOTAVAIL")
_ADDRESS = re.compile(r"(?<![\w.:])((?:\d{1,3}\.){3}\d{1,3}"
                      r"|[0-9a-fA-F]*:[0-9a-fA-F:]+:[0-9a-fA-F]*)(?![\w.:])")


def hidden_secret(unit: str, log: str, locate: Callable[[str], str | None],
                  hidden: Sequence[str], host_has: Callable[[str], bool] = os.path.exists
                  ) -> tuple[str, str] | None:
    """From a failed unit's log: one line naming a file under /etc that the sandbox lacks
    because it is one of the host's secrets, hidden from it (`hidden`: the paths its evidence
    hides), and how to give it a copy; None if the log names no such file. Followed through
    links as the sandbox sees them: dovecot's /etc/dovecot/private/dovecot.key is a link to
    the host's snakeoil key, behind /etc/ssl/private (0710)."""
    for named in named_paths(log):  # paths under /etc, delimited as in configuration
        target = resolve_in_instance(locate, named)
        if locate(target) is not None or not host_has(target):
            continue  # the sandbox has it, or nobody has: not a hidden secret
        cover = next((h for h in hidden if under(target, h)), None)
        if cover is None:
            continue
        via = f" (a link to {target})" if target != named else ""
        return (f"{unit}'s log names {named}{via}, which is the host's secret "
                f"{cover}, hidden from the sandbox",
                f"-C --private {cover} gives the instance a copy of the host's (create it "
                "again with them), or point its configuration at one of its own")
    return None


def host_network(unit: str, log: str) -> tuple[str, str] | None:
    """From a failed unit's log: one line naming the host address it could not bind, and
    the option that gives the sandbox such an address; None if the log shows no such bind."""
    line = next((ln for ln in log.splitlines() if _NO_ADDRESS.search(ln)), None)
    if line is None:
        return None
    found = [a for a in _ADDRESS.findall(line) if not a.startswith("127.") and a != "::1"]
    what = f"the address {found[0]}" if found else "an address"
    return (f"{unit} binds {what}, which the sandbox's network does not have (Cannot assign "
            "requested address)",
            f"-N source=NET,address={found[0] if found else 'IP'}/PREFIX gives the sandbox "
            "that address on a libvirt network of its own; the host's network stays the host's")
