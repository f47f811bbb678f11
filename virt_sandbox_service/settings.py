"""The settings table: each of a sandbox's options declared once.

One row per option of `create` (and of `run` and `limit`, which share the limit, capability
and mount/network rows). The table drives:
- argparse: `add(parser_or_group, GROUP)` adds a group's rows, in table order;
- sandbox files: `file_keys()` is the [Sandbox] section's keys (sandboxfile.KEYS);
- the man page: `man_keys()` is the SANDBOX FILES key list, kept in the page between two
  markers and checked by tests/test_docs.py (`pytest --regenerate-output` rewrites it);
- completion: generated from argparse (completion.py), so from these rows too.
A new option is a new row; the tests then ask for its man page text and its config field.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .config import DEFAULT_URI
from .graphics import CHOICES as GRAPHICS_CHOICES
from .graphics import DEFAULT_LISTEN as GRAPHICS_LISTEN

Options = argparse._ActionsContainer  # a parser or one of its argument groups

BEGIN_KEYS = '.\\" The key list is made from settings.py (tests/test_docs.py checks it).\n'
END_KEYS = '.\\" End of the key list.\n'

# The kinds of value a sandbox file's key holds.
LIST, FLAG, TEXT, WORDS = "list", "flag", "text", "words"


@dataclass(frozen=True)
class Setting:
    key: str  # its sandbox file key
    flags: tuple[str, ...]  # its options; () for the positional command
    dest: str  # argparse's dest, the field of the request it fills
    kind: str  # LIST (repeatable), FLAG (a boolean), TEXT (last one wins), WORDS
    group: str  # which group of rows it belongs to (add)
    help: str = ""  # may hold {fresh}, filled in by add()
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    default: str | None = None

    @property
    def option(self) -> str:
        """How docs and messages name it: its first option."""
        return self.flags[0] if self.flags else "-- CMD ARGS"


ETC_CHOICES = ("overlay", "copy")  # create's --etc choices

_THROTTLES = tuple(
    Setting(f"Device{kind.title().replace('-', '').replace('Iops', 'IOPS')}",
            (f"--device-{kind}",), f"device_{kind.replace('-', '_')}", LIST, "limits",
            f"at most this many {kind.split('-')[0]} "
            f"{'bytes' if unit == 'RATE' else 'I/O operations'} a second on host disk DEV, "
            f"e.g. /dev/vda:{'10M' if unit == 'RATE' else '100'} (repeatable; limit: 0 removes)",
            f"DEV:{unit}")
    for kind, unit in (("read-bps", "RATE"), ("write-bps", "RATE"), ("read-iops", "N"),
                       ("write-iops", "N")))

SETTINGS: tuple[Setting, ...] = (
    # what it runs
    Setting("Unit", ("-u", "--unit"), "unit", LIST, "what",
            "host systemd unit to confine; foo@.service instantiates foo@NAME", "UNIT"),
    Setting("Exec", (), "command", WORDS, "command"),
    Setting("Connect", ("-c", "--connect"), "connect", TEXT, "what",
            f"libvirt URI (default {DEFAULT_URI})", "URI", default=DEFAULT_URI),
    # its private data
    Setting("Copy", ("-C", "--copy"), "copy", FLAG, "data",
            "start from the host's current data (its private directories, and its version of "
            "what the packages' scripts make); without -C a unit sandbox is a fresh instance, "
            "set up by its packages' own postinst"),
    Setting("Path", ("-p", "--path"), "path", TEXT, "data",
            "directory holding the sandbox's state (default /var/lib/virt-sandbox-service); "
            "remembered in its config", "PATH"),
    Setting("Package", ("-P", "--package"), "package", LIST, "data",
            "package whose file list is evidence, when it cannot be detected", "PACKAGE"),
    Setting("Private", ("--private",), "private", LIST, "data",
            "make PATH private to the instance", "PATH"),
    Setting("Shared", ("--shared",), "shared", LIST, "data",
            "show the host's PATH read-only, overriding the evidence", "PATH"),
    Setting("ImageSize", ("-i", "--imagesize"), "imagesize", TEXT, "data",
            "keep the private /etc and /var in an ext4 image of SIZE (e.g. 64M, 1G) instead "
            "of directories (LXC: loop-mounted; KVM: a disk)", "SIZE"),
    Setting("Etc", ("--etc",), "etc", TEXT, "data",
            "the private /etc: an overlay on the host's with the instance's own files above "
            "it (LXC default), or a trimmed copy of the host's (KVM, -i, --userns)",
            choices=ETC_CHOICES),
    # identity and confinement
    Setting("Security", ("-s", "--security"), "security", TEXT, "identity",
            "dynamic (default) or static,label=USER:ROLE:TYPE:LEVEL", "SECURITY"),
    Setting("UserNamespace", ("--userns",), "userns", FLAG, "identity",
            "map root inside to an unprivileged host id range of its own"),
    Setting("CapabilityDrop", ("--cap-drop",), "cap_drop", LIST, "caps",
            "also drop this capability (the sandbox's processes keep only chown, "
            "dac_override, fowner, fsetid, kill, net_bind_service, setfcap, setgid, setpcap, "
            "setuid, sys_chroot, audit_write; see inspect)", "CAP"),
    Setting("CapabilityAdd", ("--cap-add",), "cap_add", LIST, "caps",
            "give the sandbox's processes this capability too (e.g. sys_time for a time "
            "daemon; it also allows the calls that exist for it)", "CAP"),
    Setting("SyscallAllow", ("--syscall-allow",), "syscall_allow", LIST, "caps",
            "let a call the sandbox's seccomp filter denies through: a group (@mount, "
            "@keyring, @bpf, @io_uring, ...; see the man page) or one call", "GROUP|CALL"),
    Setting("Device", ("--device",), "device", LIST, "device",
            "give the sandbox this host device node (a character or block device under /dev, "
            "e.g. /dev/net/tun), at the same path; LXC only (repeatable)", "PATH"),
    # limits
    Setting("Memory", ("--memory",), "memory", TEXT, "limits",
            "memory limit, e.g. 512M or 2G", "SIZE"),
    Setting("CPUWeight", ("--cpu-weight",), "cpu_weight", TEXT, "limits",
            "relative CPU weight (shares), 2..262144", "N"),
    Setting("CPUQuota", ("--cpu-quota",), "cpu_quota", TEXT, "limits",
            "CPU time cap in percent of one CPU, e.g. 50 or 150", "PERCENT"),
    Setting("BlockIOWeight", ("--blkio-weight",), "blkio_weight", TEXT, "limits",
            "relative block I/O weight, 100..1000", "N"),
    Setting("Tasks", ("--tasks",), "tasks", TEXT, "limits",
            "most processes plus threads at once (pids.max), 32..4194304", "N"),
    Setting("MemorySoft", ("--memory-soft",), "memory_soft", TEXT, "limits",
            "memory it is pushed back to under host memory pressure (soft limit)", "SIZE"),
    Setting("MemorySwap", ("--memory-swap",), "memory_swap", TEXT, "limits",
            "memory plus swap limit (with --memory; equal to it: no swap)", "SIZE"),
    Setting("CPUSet", ("--cpuset",), "cpuset", TEXT, "limits",
            "run only on these host CPUs, e.g. 1 or 0-1,3 (KVM: vCPU and qemu pinned)",
            "LIST"),
    Setting("NUMANodes", ("--numa-nodes",), "numa_nodes", TEXT, "limits",
            "take memory only from these host NUMA nodes (strict), e.g. 0", "LIST"),
    *_THROTTLES,
    # mounts and networks
    Setting("Mount", ("-m", "--mount"), "mount", LIST, "mounts",
            "host-bind:DST=SRC (empty SRC: {fresh}), host-image:DST=IMG, guest-bind:DST=SRC, "
            "ram:DST=SIZE", "TYPE:DST=SRC"),
    Setting("Network", ("-N", "--network"), "network", LIST, "mounts",
            "an interface: source=NET[,address=IP/PREFIX][,route=NET/PREFIX%%GW][,mac=MAC]"
            "[,dhcp][,filter=NAME[,port=N]...][,inbound=AVG[:PEAK[:BURST]]][,outbound=...] "
            "(default: loopback only)", "OPTS"),
    # the command's user (generic sandboxes)
    Setting("User", ("-U", "--uid"), "uid", TEXT, "user",
            "generic sandbox: run the command as this user (number or host name)", "UID"),
    Setting("Group", ("-G", "--gid"), "gid", TEXT, "user",
            "with -U: its group (number or host name; default the user's)", "GID"),
    Setting("UserName", ("--username",), "username", TEXT, "user",
            "with -U: its name in the sandbox (default the host's, or uUID)", "NAME"),
    Setting("HomeDir", ("--homedir",), "homedir", TEXT, "user",
            "with -U: its home, made writable for it (default the host's, or /var/home/NAME)",
            "DIR"),
    # the display (KVM: run, and generic sandboxes; graphics.py)
    Setting("Graphics", ("--graphics",), "graphics", TEXT, "display",
            "give the VM a display and a GPU, start the host's X server on it and run the "
            "command there (DISPLAY=:0); {display}", "|".join(GRAPHICS_CHOICES)),
    Setting("GraphicsListen", ("--graphics-listen",), "graphics_listen", TEXT, "display",
            f"the address the display listens on (default {GRAPHICS_LISTEN})", "ADDR"),
)


def add(p: Options, group: str, **fmt: str) -> None:
    """Add a group's rows to a parser (or an argument group), in table order; `fmt` fills
    the rows' help templates (run's -m says what an empty source is for a run)."""
    rows = [s for s in SETTINGS if s.group == group and s.flags]
    if not rows:
        raise ValueError(f"no settings in group {group!r}")
    for s in rows:
        kw: dict[str, object] = {"help": s.help.format(**fmt) if fmt else s.help}
        if s.kind == FLAG:
            kw["action"] = "store_true"
        else:
            kw["metavar"] = s.metavar
            if s.kind == LIST:
                kw["action"] = "append"
        if s.choices is not None:
            kw["choices"] = s.choices
            kw.pop("metavar", None)
        if s.default is not None:
            kw["default"] = s.default
        p.add_argument(*s.flags, dest=s.dest, **kw)  # type: ignore[arg-type]


def by_key() -> dict[str, Setting]:
    """The sandbox file's [Sandbox] keys."""
    return {s.key: s for s in SETTINGS}


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def man_keys() -> str:
    """The man page's SANDBOX FILES key list: each key, its option and its value."""
    lines = []
    for s in SETTINGS:
        value = ("yes or no" if s.kind == FLAG else
                 " or ".join(s.choices) if s.choices else
                 "the command, quoted as in ExecStart=" if s.kind == WORDS else s.metavar or "")
        if s.kind == LIST:
            value += " (repeatable)"
        lines += [".TP", f".B {s.key}=", _roff(f"{s.option}: {value}")]
    return "\n".join(lines) + "\n"
