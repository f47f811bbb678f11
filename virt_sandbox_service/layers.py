"""The security layers that hold a sandbox's root: those in force, read from a running
sandbox's processes (`inspect`), and those this host can give a sandbox at all (`doctor`,
and `create`'s warning).

Read from the processes, not the config: what a sandbox's processes really run under is what
the kernel reports for them in /proc (capability sets, seccomp mode and filters, NoNewPrivs,
LSM label, user namespace), and that is what an admin auditing it needs, not what the tool
meant to set up. Which processes: the sandbox's init, and the confined ones (a generic
sandbox's command, the first child of its init; a unit sandbox's confined units, each found
by its cgroup among the init's descendants).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import host
from .config import Driver, Kind, SandboxConfig, driver_for_uri
from .limits import caps_from_mask

SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
# The uid_map of a process in the initial user namespace: every id is itself.
IDENTITY_MAP = ("0", "0", "4294967295")
NONE = "none"


# --- one process -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusLayers:
    """The layers /proc/PID/status shows."""

    caps_effective: tuple[str, ...]
    caps_bounding: tuple[str, ...]
    seccomp_mode: int
    seccomp_filters: int | None  # None: a kernel older than 5.9 does not say
    no_new_privs: bool


def parse_status(text: str) -> StatusLayers:
    """The layer record of a /proc/PID/status text."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    if "CapBnd" not in fields or "Seccomp" not in fields:
        raise ValueError("not a /proc/PID/status text: no CapBnd or Seccomp line")
    filters = fields.get("Seccomp_filters")
    return StatusLayers(
        caps_effective=caps_from_mask(int(fields.get("CapEff", "0"), 16)),
        caps_bounding=caps_from_mask(int(fields["CapBnd"], 16)),
        seccomp_mode=int(fields["Seccomp"]),
        seccomp_filters=None if filters is None else int(filters),
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
    )


def lsm_label(raw: bytes | None) -> str:
    """A /proc/PID/attr/current text; "none" where no LSM is active (the read fails, EINVAL)
    or it says nothing."""
    text = (raw or b"").replace(b"\0", b"").decode(errors="replace").strip()
    return text or NONE


def user_namespace(uid_map: str) -> str:
    """"none" for the initial user namespace (the identity map), else the mapping:
    'INSIDE OUTSIDE COUNT' per range, '; '-separated."""
    ranges = [tuple(line.split()) for line in uid_map.splitlines() if line.strip()]
    if ranges in ([], [IDENTITY_MAP]):
        return NONE
    return "; ".join(" ".join(r) for r in ranges)


@dataclass(frozen=True)
class ProcessLayers:
    role: str  # "init" or "confined"
    unit: str | None  # the confined unit, for a unit sandbox
    pid: int  # as seen from the host
    command: str
    status: StatusLayers
    lsm_label: str
    user_namespace: str

    def to_json(self) -> dict[str, Any]:
        s = self.status
        return {"role": self.role, "unit": self.unit, "pid": self.pid,
                "command": self.command,
                "capabilities_effective": list(s.caps_effective),
                "capabilities_bounding": list(s.caps_bounding),
                "seccomp_mode": s.seccomp_mode, "seccomp_filters": s.seccomp_filters,
                "no_new_privs": s.no_new_privs, "lsm_label": self.lsm_label,
                "user_namespace": self.user_namespace}


def _attr_current(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/attr/current").read_bytes()
    except OSError:
        return None


def read_process(pid: int, role: str, unit: str | None = None) -> ProcessLayers:
    """The layers of a host process (OSError if it is gone)."""
    proc = Path(f"/proc/{pid}")
    return ProcessLayers(role, unit, pid, (proc / "comm").read_text().strip(),
                         parse_status((proc / "status").read_text()),
                         lsm_label(_attr_current(pid)),
                         user_namespace((proc / "uid_map").read_text()))


# --- which processes ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The children of every thread of a process, in the kernel's order."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda t: int(t.name)):
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> Iterator[int]:
    """A process's descendants, nearest first (a unit's main process before its workers)."""
    queue = children(pid)
    while queue:
        child = queue.pop(0)
        yield child
        queue += children(child)


def in_unit(cgroup_text: str, unit: str) -> bool:
    """Whether a /proc/PID/cgroup text puts the process in the cgroup of a system unit
    (…/system.slice/UNIT, or …/system.slice/system-NAME.slice/UNIT for an instance)."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)[-1].split("/")
        if parts[-1] == unit and "system.slice" in parts[:-1]:
            return True
    return False


def unit_process(init: int, unit: str) -> int | None:
    """The first process of the unit's cgroup among the init's descendants."""
    for pid in descendants(init):
        with contextlib.suppress(OSError):
            if in_unit(Path(f"/proc/{pid}/cgroup").read_text(), unit):
                return pid
    return None


def confined(init: int, cfg: SandboxConfig) -> list[tuple[str, int | None]]:
    """(what, host PID or None) of each confined process: a unit sandbox's units, or a
    generic sandbox's command (the init's first child)."""
    if cfg.kind is Kind.SERVICE:
        return [(u, unit_process(init, u)) for u in cfg.units]
    return [("the command", next(iter(children(init)), None))]


# --- a sandbox ---------------------------------------------------------------------------------

STOPPED = "the sandbox is not running: the layers in force are shown while it runs"
KVM = ("a KVM sandbox's processes run under the guest's own kernel, out of the host's sight: "
       "see capabilities for what the guest applies")


def _record(pid: int | None, role: str, unit: str | None) -> dict[str, Any] | None:
    if pid is None:
        return None
    try:
        return read_process(pid, role, unit).to_json()
    except OSError:  # gone meanwhile
        return None


def live(init: int | None, cfg: SandboxConfig) -> dict[str, Any]:
    """The `layers` section of inspect: from the running processes (`init`: the host PID of
    the sandbox's PID 1; None: not running)."""
    out: dict[str, Any] = {"live": False, "source": STOPPED, "processes": [], "missing": []}
    if cfg.driver is Driver.KVM:
        return {**out, "source": KVM}
    if init is None:
        return out
    procs = [p for p in [_record(init, "init", None)] if p]
    missing = []
    for what, pid in confined(init, cfg):
        record = _record(pid, "confined", what if cfg.kind is Kind.SERVICE else None)
        if record:
            procs.append(record)
        else:
            missing.append(what)
    return {"live": True, "source": "the running sandbox's processes, read from /proc on the "
            "host (not the config)", "processes": procs, "missing": missing}


def _caps_text(p: dict[str, Any]) -> str:
    eff, bnd = p["capabilities_effective"], p["capabilities_bounding"]
    same = "the same" if eff == bnd else " ".join(bnd) or "none"
    return f"effective {' '.join(eff) or 'none'}; bounding {same}"


def _seccomp_text(p: dict[str, Any]) -> str:
    mode = SECCOMP_MODES.get(p["seccomp_mode"], str(p["seccomp_mode"]))
    n = p["seccomp_filters"]
    filters = "" if n is None or p["seccomp_mode"] != 2 else \
        f", {n} filter{'s' if n != 1 else ''}"
    return f"{mode}{filters}; no_new_privs {'yes' if p['no_new_privs'] else 'no'}"


def format_live(section: dict[str, Any]) -> list[str]:
    """The text of inspect's live section."""
    if not section["live"]:
        return [f"layers in force: {section['source']}"]
    lines = ["layers in force (live: read from the running processes, not the config):"]
    for p in section["processes"]:
        who = "init" if p["role"] == "init" else (p["unit"] or "confined command")
        userns = p["user_namespace"]
        lines += [
            f"  {who}, pid {p['pid']} ({p['command']}):",
            f"    capabilities: {_caps_text(p)}",
            f"    seccomp:      {_seccomp_text(p)}",
            f"    LSM label:    {p['lsm_label']}",
            "    user ns:      " + (userns if userns != NONE else
                                    "none (root inside is root on the host)"),
        ]
    lines += [f"  {m}: no running process" for m in section["missing"]]
    return lines


# --- this host ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostLayers:
    """What this host can put between a sandbox's root and itself."""

    seccomp: bool  # libseccomp loads (confine.py needs it)
    apparmor: bool  # the kernel's AppArmor is active
    selinux: str  # "enforcing", "permissive", "disabled"
    userns_problem: str | None  # why libvirt cannot start user-namespaced sandboxes here
    # The security models of libvirt's LXC driver; None: not asked (the kernel's word only).
    libvirt_models: tuple[str, ...] | None = None

    def _driven(self, model: str) -> bool:
        return self.libvirt_models is None or model in self.libvirt_models

    @property
    def lsm(self) -> tuple[str, ...]:
        """The LSMs that confine sandboxes here: active in the kernel, and used by libvirt."""
        return tuple(name for name, on in (
            ("AppArmor", self.apparmor and self._driven("apparmor")),
            ("SELinux", self.selinux == "enforcing" and self._driven("selinux"))) if on)

    def protecting(self) -> list[str]:
        return ["capabilities", *(["seccomp"] if self.seccomp else []), "namespaces",
                *self.lsm, *([] if self.userns_problem else ["user namespaces (--userns)"])]

    def missing(self) -> list[tuple[str, str]]:
        """(layer, why) of each layer a sandbox here goes without."""
        out = []
        if not self.seccomp:
            out.append(("seccomp", "libseccomp.so.2 not found: LXC sandboxes cannot start"))
        if "AppArmor" not in self.lsm:
            out.append(("AppArmor", "active, but not used by libvirt's LXC driver"
                        if self.apparmor else "not active in the kernel"))
        if "SELinux" not in self.lsm:
            out.append(("SELinux", "not enabled" if self.selinux == "disabled" else
                        "permissive: not enforced" if self.selinux == "permissive" else
                        "enforcing, but not used by libvirt's LXC driver"))
        if self.userns_problem:
            out.append(("user namespaces", self.userns_problem))
        return out

    def unprotected(self) -> bool:
        """Neither an LSM nor user namespaces: a sandbox's root is the host's root, held only
        by capabilities, seccomp and namespaces."""
        return not self.lsm and self.userns_problem is not None


def host_layers(secmodels: tuple[str, ...] | None = None) -> HostLayers:
    """This host's layers; with the security models of a libvirt LXC connection
    (host.libvirt_secmodels), also which LSM libvirt uses."""
    return HostLayers(host.libseccomp_available(), host.apparmor_enabled(), host.selinux_mode(),
                      host.cgroup_layout().userns_problem, secmodels)


def summary(h: HostLayers) -> str:
    """doctor's "confinement" line."""
    missing = "; ".join(f"{layer} ({'not usable here' if layer == 'user namespaces' else why})"
                        for layer, why in h.missing())
    return f"protected by {', '.join(h.protecting())}" + (f"; missing: {missing}"
                                                          if missing else "")


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def unprotected_warning(h: HostLayers, name: str) -> str | None:
    """create's warning for an LXC sandbox on a host with neither an LSM nor user namespaces."""
    if not h.unprotected():
        return None
    held = _and([x for x in h.protecting() if not x.startswith("user")])
    gone = ", ".join(layer for layer, _ in h.missing())
    return (f"sandbox '{name}' is confined only by {held}: this host has no active LSM and no "
            f"usable user namespaces, so its root is the host's root (missing: {gone}; "
            "'virt-sandbox-service doctor' says why)")


def warn_if_unprotected(secmodels: tuple[str, ...], uri: str, name: str) -> None:
    """create's one warning line, for an LXC sandbox (a KVM sandbox's root is its guest's).

    `secmodels`: what create read from libvirt before its set-up domain ran. Asking libvirt
    again after it waits for libvirt's teardown of that domain (a 200 ms round on 9.0)."""
    if driver_for_uri(uri) is not Driver.LXC:
        return
    text = unprotected_warning(host_layers(secmodels), name)
    if text:
        print(f"virt-sandbox-service: warning: {text}", file=sys.stderr)
