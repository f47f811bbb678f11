"""Resource limits and capabilities: parsing, defaults and their libvirt XML.

The same element builders serve `create` (a whole domain) and `limit` (editing the defined
domain in place), so the two cannot drift.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import confine
from .config import Driver, Kind, SandboxConfig, parse_size
from .errors import UserError

if TYPE_CHECKING:  # lxml is loaded where XML is built: `start` builds none
    from lxml import etree

# Every capability libvirt's LXC driver can switch (domaincommon.rng, featurecapabilities).
ALL_CAPS = (
    "audit_control", "audit_write", "block_suspend", "chown", "dac_override",
    "dac_read_search", "fowner", "fsetid", "ipc_lock", "ipc_owner", "kill", "lease",
    "linux_immutable", "mac_admin", "mac_override", "mknod", "net_admin", "net_bind_service",
    "net_broadcast", "net_raw", "setgid", "setfcap", "setpcap", "setuid", "sys_admin",
    "sys_boot", "sys_chroot", "sys_module", "sys_nice", "sys_pacct", "sys_ptrace",
    "sys_rawio", "sys_resource", "sys_time", "sys_tty_config", "syslog", "wake_alarm",
)
# What no confined daemon needs and a compromised one must not have: kernel modules, raw I/O,
# the clock, process accounting, reboot, MAC policy, the kernel log, timers that wake the host,
# audit configuration, file leases, the immutable flag. systemd as the sandbox's init needs
# sys_admin (mounts), sys_resource and the rest, so they stay.
DEFAULT_DROP = (
    "audit_control", "block_suspend", "lease", "linux_immutable", "mac_admin",
    "mac_override", "sys_boot", "sys_module", "sys_pacct", "sys_rawio", "sys_time",
    "sys_tty_config", "syslog", "wake_alarm",
)
CPU_PERIOD_US = 100_000
TASKS_MAX = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit
# How the LXC sandbox's init learns its tasks limit (see plan._cgroup_prologue): an init
# environment variable is part of the domain definition, so `limit` changes it with the rest.
TASKS_ENV = "VSS_TASKS_MAX"
# capabilities(7) numbering, for reading a process's CapBnd mask.
CAP_NUMBERS = confine.CAP_NUMBERS


def caps_from_mask(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in enumerate(CAP_NUMBERS) if mask >> bit & 1)


def bounding_set(pid: int) -> int:
    """The CapBnd mask of a process (what it and its children can ever have)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise OSError(f"no CapBnd in /proc/{pid}/status")


@dataclass(frozen=True)
class LimitArgs:
    """Limits as typed on the command line; None = not given."""

    memory: str | None = None
    cpu_weight: str | None = None
    cpu_quota: str | None = None
    blkio_weight: str | None = None
    tasks: str | None = None
    memory_soft: str | None = None
    memory_swap: str | None = None
    cpuset: str | None = None
    numa_nodes: str | None = None
    device_read_bps: tuple[str, ...] = ()
    device_write_bps: tuple[str, ...] = ()
    device_read_iops: tuple[str, ...] = ()
    device_write_iops: tuple[str, ...] = ()
    # limit only (create and run give them in -N): [NET=]AVG[:PEAK[:BURST]] an interface
    inbound: tuple[str, ...] = ()
    outbound: tuple[str, ...] = ()


# The device throttles: option, LimitArgs field, libvirt's <blkiotune><device> element (and
# its setBlkioParameters key, with "device_" before it). They are the blkio controller's
# throttling (blk-throttle), which needs no I/O scheduler: unlike --blkio-weight, no BFQ.
THROTTLES = (
    ("--device-read-bps", "device_read_bps", "read_bytes_sec"),
    ("--device-write-bps", "device_write_bps", "write_bytes_sec"),
    ("--device-read-iops", "device_read_iops", "read_iops_sec"),
    ("--device-write-iops", "device_write_iops", "write_iops_sec"),
)
IOPS_MAX = 2**32 - 1  # libvirt's unsignedInt
CPUS_ONLINE = "/sys/devices/system/cpu/online"
NODES_ONLINE = "/sys/devices/system/node/online"


@dataclass(frozen=True)
class Throttle:
    """One device I/O throttle, stored in the config as "KIND:DEVICE:VALUE"."""

    kind: str  # read_bytes_sec, write_bytes_sec, read_iops_sec, write_iops_sec
    device: str
    value: int  # bytes or operations per second; 0 (limit only): remove it

    def __str__(self) -> str:
        return f"{self.kind}:{self.device}:{self.value}"

    @classmethod
    def parse(cls, entry: str) -> Throttle:
        kind, rest = entry.split(":", 1)
        device, value = rest.rsplit(":", 1)
        return cls(kind, device, int(value))


def throttles(cfg: SandboxConfig) -> dict[str, dict[str, int]]:
    """The config's throttles by device, each {kind: value}, devices sorted."""
    out: dict[str, dict[str, int]] = {}
    for t in sorted(map(Throttle.parse, cfg.io_throttle), key=lambda t: (t.device, t.kind)):
        out.setdefault(t.device, {})[t.kind] = t.value
    return out


def merge_throttles(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    """`limit`: a device and kind given again replaces the old value; 0 removes it."""
    by_key = {(t.device, t.kind): t for t in map(Throttle.parse, old)}
    by_key.update({(t.device, t.kind): t for t in map(Throttle.parse, new)})
    return tuple(sorted(str(t) for t in by_key.values() if t.value))


def _throttle(text: str, option: str, kind: str) -> str:
    device, sep, value = text.rpartition(":")
    example = f"e.g. {option} /dev/vda:" + ("10M" if kind.endswith("bytes_sec") else "100")
    if not sep or not device.startswith("/"):
        raise UserError(f"{option} '{text}' is not DEVICE:RATE", example)
    try:
        st = os.stat(device)
    except OSError as e:
        raise UserError(f"{option}: {device}: {e.strerror}", "name a disk of this host "
                        "(lsblk -d lists them)") from None
    if not stat.S_ISBLK(st.st_mode):
        raise UserError(f"{option}: {device} is not a block device",
                        "name a disk of this host (lsblk -d lists them)")
    sysfs = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if os.path.exists(f"{sysfs}/partition"):
        disk = os.path.basename(os.path.dirname(os.path.realpath(sysfs)))
        raise UserError(f"{option}: {device} is a partition; the kernel throttles whole disks",
                        f"name its disk: {option} /dev/{disk}:{value}")
    if value.strip() == "0":
        number = 0
    elif kind.endswith("bytes_sec"):
        number = parse_size(value, option)
    else:
        number = _int(value, option, 1, IOPS_MAX, example)
    return str(Throttle(kind, device, number))


def _id_list(text: str, option: str, online: set[int], what: str) -> str:
    """A cpuset(7) list ("0-2,5") of CPUs or NUMA nodes this host has, normalised."""
    hint = f"a list like 0 or 0-1,3 of this host's {what}s ({_format_ids(online)})"
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        raise UserError(f"{option} '{text}' is not a list of {what}s", hint)
    for part in text.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise UserError(f"{option} '{text}': the range {part} runs backwards", hint)
    ids = _ids(text)
    if not ids <= online:
        missing = _format_ids(ids - online)
        raise UserError(f"{option} '{text}' names {what} {missing}, which this host does not "
                        "have online", hint)
    return _format_ids(ids)


def cpu_map(cpuset: str) -> tuple[bool, ...]:
    """A cpuset list as the CPU map libvirt's pinning calls take (one flag per host CPU)."""
    ids = _ids(cpuset)
    return tuple(i in ids for i in range(max(ids | online_ids(CPUS_ONLINE, 1)) + 1))


def _ids(text: str) -> set[int]:
    ids: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        ids.update(range(int(low), int(high or low) + 1))
    return ids


def _format_ids(ids: set[int]) -> str:
    out: list[str] = []
    for i in sorted(ids):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def online_ids(path: str, fallback: int) -> set[int]:
    """The CPUs or NUMA nodes sysfs lists as online (0..fallback-1 where it lists none)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return set(range(fallback))
    return _ids(text)


def check_memory_tune(memory: int | None, soft: int | None, swap: int | None) -> None:
    """The memory controls together: what the kernel (and libvirt) would refuse at start."""
    if soft and memory and soft > memory:
        raise UserError(f"--memory-soft ({soft // 2**20}M) is above --memory "
                        f"({memory // 2**20}M)", "a soft limit is what the sandbox is pushed "
                        "back to under memory pressure: give less than --memory")
    if swap and not memory:
        raise UserError("--memory-swap needs --memory: it bounds memory plus swap",
                        "give --memory too, e.g. --memory 512M --memory-swap 1G")
    if swap and memory and swap < memory:
        raise UserError(f"--memory-swap ({swap // 2**20}M) is below --memory "
                        f"({memory // 2**20}M): it bounds memory plus swap",
                        "give at least --memory (equal: no swap at all)")


def _int(text: str, option: str, low: int, high: int, hint: str) -> int:
    value = text[:-1] if option == "--cpu-quota" and text.endswith("%") else text
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{option} '{text}' is not a whole number", hint) from None
    if not low <= number <= high:
        raise UserError(f"{option} {number} is out of range ({low}..{high})", hint)
    return number


def check_enforceable(limits: dict[str, Any]) -> None:
    """Refuse a limit this host's kernel cannot hold, before anything is changed (libvirt
    would otherwise fail the sandbox's start, or a live change, with its own message)."""
    from . import host

    if limits.get("blkio_weight") and not host.blkio_weight_supported():
        raise UserError("--blkio-weight cannot be enforced on this host: its kernel has no "
                        "proportional-weight I/O scheduler for cgroups (BFQ, or io.cost)",
                        "leave --blkio-weight out, or use a kernel with the bfq scheduler")
    if limits.get("memory_swap") and not host.swap_limit_supported():
        raise UserError("--memory-swap cannot be enforced on this host: its memory cgroup "
                        "has no swap accounting",
                        "leave --memory-swap out, or boot the host with swapaccount=1")


def parse_limits(args: LimitArgs, cores: int) -> dict[str, Any]:
    """Only the given limits, as config field values."""
    out: dict[str, Any] = {}
    if args.memory is not None:
        out["memory"] = parse_size(args.memory, "--memory")
        if out["memory"] < 16 * 1024**2:
            raise UserError(f"--memory {args.memory} is below 16 MiB",
                            "a sandbox's systemd alone needs more")
    if args.cpu_weight is not None:
        out["cpu_weight"] = _int(args.cpu_weight, "--cpu-weight", 2, 262144,
                                 "relative weight; 1024 is the default share")
    if args.cpu_quota is not None:
        out["cpu_quota"] = _int(args.cpu_quota, "--cpu-quota", 1, 100 * cores,
                                "percent of one CPU, e.g. 50 or 150")
    if args.blkio_weight is not None:
        out["blkio_weight"] = _int(args.blkio_weight, "--blkio-weight", 100, 1000,
                                   "relative block I/O weight")
    if args.tasks is not None:
        # Below a few dozen, a sandbox's systemd and its journal cannot even start.
        out["tasks"] = _int(args.tasks, "--tasks", 32, TASKS_MAX,
                            "most processes plus threads at once, e.g. 512")
    out.update(_parse_tuning(args, cores))
    return out


def _parse_tuning(args: LimitArgs, cores: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.memory_soft is not None:
        out["memory_soft"] = parse_size(args.memory_soft, "--memory-soft")
    if args.memory_swap is not None:
        out["memory_swap"] = parse_size(args.memory_swap, "--memory-swap")
    if args.cpuset is not None:
        out["cpuset"] = _id_list(args.cpuset, "--cpuset", online_ids(CPUS_ONLINE, cores), "CPU")
    if args.numa_nodes is not None:
        out["numa_nodes"] = _id_list(args.numa_nodes, "--numa-nodes",
                                     online_ids(NODES_ONLINE, 1), "NUMA node")
    given = [_throttle(text, option, kind) for option, name, kind in THROTTLES
             for text in getattr(args, name)]
    if given:
        out["io_throttle"] = tuple(sorted(given))
    return out


def kvm_tasks_refusal() -> UserError:
    """--tasks guards the host's shared PID space; a VM's processes are in a kernel of its own
    (create and limit both refuse it for KVM, with this text)."""
    return UserError("--tasks is for LXC sandboxes: a KVM sandbox's processes live in its "
                     "own kernel and cannot use up the host's",
                     "leave --tasks out: bound a KVM sandbox with --memory")


def sched_params(cfg: SandboxConfig, changed: set[str], scope: str) -> dict[str, int]:
    """libvirt scheduler parameters for the changed CPU limits; `scope` is "vcpu" (LXC: the
    container's cgroup) or "global" (KVM: the whole qemu process)."""
    sched: dict[str, int] = {}
    if "cpu_weight" in changed and cfg.cpu_weight:
        sched["cpu_shares"] = cfg.cpu_weight
    if "cpu_quota" in changed and cfg.cpu_quota:
        sched[f"{scope}_period"] = CPU_PERIOD_US
        sched[f"{scope}_quota"] = cfg.cpu_quota * CPU_PERIOD_US // 100
    return sched


def parse_caps(drop: tuple[str, ...], keep: tuple[str, ...]) -> tuple[str, ...]:
    """The default drop list, plus --cap-drop, minus --cap-add."""
    for cap in (*drop, *keep):
        if cap.lower().removeprefix("cap_") not in ALL_CAPS:
            raise UserError(f"'{cap}' is not the name of a Linux capability",
                            "names like sys_module or net_raw; see capabilities(7)")
    norm = {c.lower().removeprefix("cap_") for c in drop}
    kept = {c.lower().removeprefix("cap_") for c in keep}
    return tuple(sorted((set(DEFAULT_DROP) | norm) - kept))


def norm_caps(names: tuple[str, ...]) -> tuple[str, ...]:
    """--cap-add names as stored: lower case, no cap_ prefix, sorted (checked by parse_caps)."""
    return tuple(sorted({c.lower().removeprefix("cap_") for c in names}))


def parse_syscall_allow(names: tuple[str, ...]) -> tuple[str, ...]:
    """--syscall-allow: a group of confine.GROUPS (@mount, or mount), or one of its calls."""
    calls = {c for group in confine.GROUPS.values() for c in group}
    out = []
    for name in names:
        bare = name.removeprefix("@")
        if bare not in confine.GROUPS and name not in calls:
            raise UserError(f"--syscall-allow {name!r} is not a group or call the sandbox "
                            "denies", "groups: " + ", ".join(f"@{g}" for g in confine.GROUPS)
                            + "; or one of their calls")
        out.append(f"@{bare}" if bare in confine.GROUPS else name)
    return tuple(sorted(set(out)))


def confined_caps(cfg: SandboxConfig) -> tuple[str, ...]:
    """What the confined processes keep: the default set, plus --cap-add, minus --cap-drop."""
    keep = (set(confine.CONFINED_CAPS) | set(cfg.caps_add)) - set(cfg.caps_drop)
    return tuple(c for c in CAP_NUMBERS if c in keep)


# systemd-networkd, the DHCP client of an LXC unit sandbox's -N ...,dhcp, configures its
# interface for as long as the lease lasts: the sandbox's systemd keeps these for it, and the
# confined units' drop-in takes them away from the service again.
NETWORKD_CAPS = ("net_admin", "net_raw")


def init_caps(cfg: SandboxConfig) -> tuple[str, ...]:
    """What the sandbox's systemd (or a generic sandbox's command) keeps after its init."""
    extra: set[str] = set()
    if cfg.kind is Kind.SERVICE and cfg.driver is Driver.LXC and any(
            n.dhcp for n in cfg.networks):
        extra = set(NETWORKD_CAPS) - set(cfg.caps_drop)
    keep = set(confined_caps(cfg)) | extra
    return tuple(c for c in CAP_NUMBERS if c in keep)


# What a process the tool starts inside a running sandbox (execute, connect, reload) runs
# under: the capabilities the sandbox's systemd or command has, and its seccomp allowances.
Jail = tuple[tuple[str, ...], tuple[str, ...]]


def jail(cfg: SandboxConfig) -> Jail:
    return init_caps(cfg), cfg.syscalls_allow


def effective_caps(cfg: SandboxConfig) -> tuple[str, ...]:
    return tuple(c for c in ALL_CAPS if c not in cfg.caps_drop)


def set_tunables(dom: etree._Element, cfg: SandboxConfig, host_memory_kib: int) -> None:
    """Write memory, cputune and blkiotune into a domain element (replacing what was there)."""
    from lxml import etree

    for tag in ("memory", "currentMemory", "memtune", "cputune", "blkiotune", "vcpu",
                "numatune"):
        for old in dom.findall(tag):
            dom.remove(old)
    anchor = dom.find("metadata")
    index = list(dom).index(anchor) + 1 if anchor is not None else 1
    # In the order libvirt writes them back (reconcile compares the text): memory,
    # blkiotune, memtune, vcpu, cputune, numatune.
    elements = [_el("memory", str(cfg.memory // 1024 if cfg.memory else host_memory_kib),
                    unit="KiB")]
    blk = blkiotune_element(cfg)
    if blk is not None:
        elements.append(blk)
    tune = memtune_element(cfg, hard=True)
    if tune is not None:
        elements.append(tune)
    if cfg.cpuset:
        # LXC: the container's cpuset cgroup and its processes' affinity (libvirt's cpumask).
        elements.append(_el("vcpu", "1", placement="static", cpuset=cfg.cpuset))
    if cfg.cpu_weight or cfg.cpu_quota:
        cpu = etree.Element("cputune")
        if cfg.cpu_weight:
            cpu.append(_el("shares", str(cfg.cpu_weight)))
        if cfg.cpu_quota:
            cpu.append(_el("period", str(CPU_PERIOD_US)))
            cpu.append(_el("quota", str(cfg.cpu_quota * CPU_PERIOD_US // 100)))
        elements.append(cpu)
    numa = numatune_element(cfg)
    if numa is not None:
        elements.append(numa)
    for offset, el in enumerate(elements):
        dom.insert(index + offset, el)
    if dom.get("type") == "lxc":
        _set_tasks_env(dom, cfg.tasks)


def memtune_element(cfg: SandboxConfig, hard: bool) -> etree._Element | None:
    """<memtune>: the hard limit (LXC: --memory; a VM's --memory is its RAM instead), the
    soft limit and the memory-plus-swap limit; None if none is set."""
    from lxml import etree

    parts = [(name, value) for name, value in (
        ("hard_limit", cfg.memory if hard else None), ("soft_limit", cfg.memory_soft),
        ("swap_hard_limit", cfg.memory_swap)) if value]
    if not parts:
        return None
    tune = etree.Element("memtune")
    for name, value in parts:
        tune.append(_el(name, str(value // 1024), unit="KiB"))
    return tune


def blkiotune_element(cfg: SandboxConfig) -> etree._Element | None:
    """<blkiotune>: the weight and each device's throttles; None if none is set."""
    from lxml import etree

    devices = {d: k for d, k in throttles(cfg).items() if any(k.values())}
    if not cfg.blkio_weight and not devices:
        return None
    blk = etree.Element("blkiotune")
    if cfg.blkio_weight:
        blk.append(_el("weight", str(cfg.blkio_weight)))
    for device, kinds in devices.items():
        dev = etree.SubElement(blk, "device")
        dev.append(_el("path", device))
        for kind in ("read_iops_sec", "write_iops_sec", "read_bytes_sec", "write_bytes_sec"):
            if kinds.get(kind):
                dev.append(_el(kind, str(kinds[kind])))
    return blk


def numatune_element(cfg: SandboxConfig) -> etree._Element | None:
    """<numatune>: memory only from these host NUMA nodes (strict: never from others)."""
    from lxml import etree

    if not cfg.numa_nodes:
        return None
    numa = etree.Element("numatune")
    numa.append(etree.Element("memory", mode="strict", nodeset=cfg.numa_nodes))
    return numa


def blkio_live_params(old: SandboxConfig, new: SandboxConfig) -> dict[str, str]:
    """setBlkioParameters' device keys for the throttles that changed (0: removed)."""
    before, after = throttles(old), throttles(new)
    params: dict[str, list[str]] = {}
    for device in sorted(set(before) | set(after)):
        for kind in ("read_iops_sec", "write_iops_sec", "read_bytes_sec", "write_bytes_sec"):
            value = after.get(device, {}).get(kind, 0)
            if value != before.get(device, {}).get(kind, 0):
                params.setdefault(f"device_{kind}", []).append(f"{device},{value}")
    return {k: ",".join(v) for k, v in params.items()}


def _set_tasks_env(dom: etree._Element, tasks: int | None) -> None:
    os_el = dom.find("os")
    if os_el is None:
        return
    for old in os_el.findall(f"initenv[@name='{TASKS_ENV}']"):
        os_el.remove(old)
    if tasks:
        # The schema orders <os>: type, init, initarg*, initenv*, then initdir/inituser/...
        before = [c for c in os_el if c.tag in ("type", "init", "initarg", "initenv")]
        os_el.insert(len(before), _el("initenv", str(tasks), name=TASKS_ENV))


def caps_element(cfg: SandboxConfig) -> etree._Element:
    """The LXC init's capabilities. libvirt's default policy drops some by itself (sys_time,
    sys_module, sys_boot, mac_admin, audit_control): one given back is switched on."""
    from lxml import etree

    caps = etree.Element("capabilities", policy="default")
    states = {c: "off" for c in cfg.caps_drop} | {c: "on" for c in cfg.caps_add
                                                  if c not in cfg.caps_drop}
    for cap in sorted(states):
        caps.append(etree.Element(cap, state=states[cap]))
    return caps


def _el(tag: str, text: str, **attrs: str) -> etree._Element:
    from lxml import etree

    el = etree.Element(tag, attrib=attrs)
    el.text = text
    return el
