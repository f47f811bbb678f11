"""The KVM domain: a micro-VM booting the host's kernel and root filesystem.

qemu's `microvm` machine (virtio-mmio, no PCI, no firmware) boots the host's kernel directly
(the uncompressed vmlinux as PVH where possible) with the tiny initrd of initrd.py. Every
mount of the plan becomes a virtio-9p share (the host's `/` read-only, the private trees
writable), a raw virtio-blk disk (-m host-image, and -i's image of the private trees) or a
tmpfs the guest init makes; the init
learns them, and what to run, from the kernel command line (see initrd/init). Built with
lxml in libvirt's element order; nothing here reads the host: the facts say whether
hardware KVM is usable and where the boot files are.

qemu runs as root (a static DAC label, nothing relabelled): the 9p shares must read and
write files of any owner, as the LXC driver does, and the host's root-only files (the private
/etc is a copy made by root) must stay readable to the sandbox's root. A normal user's
one-shot run (qemu:///session, runtime/session.py) is the exception: its qemu is the user's,
so it reads the host's root as the user, relabels nothing, and the command runs as the user.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Sequence
from typing import cast

from lxml import etree
from lxml.builder import ElementMaker

from ..config import Kind, SandboxConfig
from ..errors import UserError
from ..graphics import Graphics, no_xorg, of_config
from ..graphics import devices as graphics_devices
from ..graphics import qemu_args as graphics_qemu_args
from ..host import HostFacts
from ..image import IMAGE_MOUNT
from ..initscript import command
from ..limits import CPU_PERIOD_US, blkiotune_element, memtune_element, numatune_element
from ..mounts import MountType
from ..network import guest_args, guest_mac, host_device, kvm_interface_element
from ..plantypes import Mount, Plan, kept_generators
from .common import metadata, selinux_label, what

E = ElementMaker()

DEFAULT_MEMORY_KIB = 512 * 1024
# x86's COMMAND_LINE_SIZE: the kernel truncates a longer command line.
CMDLINE_MAX = 2047
AGENT_CHANNEL = "org.qemu.guest_agent.0"
LOGIN_CONSOLE_PORT = "1"
LOGIN_CONSOLE = "console1"  # libvirt's alias of the login console, what `connect` opens
DISK_SERIAL = "vss-disk"
RUN_PORTS = ("stdin", "stdout", "stderr", "status")
# Kernel arguments for a fast, quiet boot of a machine with no PCI, no firmware, no disks.
BASE_CMDLINE = ("console=ttyS0", "quiet", "panic=-1", "mitigations=off", "pci=off",
                "tsc=reliable", "no_timer_check", "cryptomgr.notests", "random.trust_cpu=on",
                "8250.nr_uarts=1")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_@%+=:./-]*")


def domain_type(facts: HostFacts) -> str:
    """'kvm' only with real hardware virtualization (HostFacts.kvm); else TCG."""
    return "kvm" if facts.kvm else "qemu"


def build(plan: Plan, facts: HostFacts, metadata_ns: str) -> str:
    """The persistent domain of a unit or generic sandbox; a generic one created with
    --graphics gets build_run's display, GPU and X server (graphics.of_config)."""
    kind = "service" if plan.config.kind is Kind.SERVICE else "generic"
    graphics = of_config(plan.config)
    devices = [
        *_controllers(),
        *_filesystems(plan.mounts, facts),
        *_interfaces(plan.config),
        *_console(None),
        _login_console(),
        _channel(AGENT_CHANNEL, None),
        *(graphics_devices(graphics) if graphics else ()),
        E.memballoon(model="none"),
    ]
    devices[0:0] = _disks(plan.mounts)
    return _domain(plan, facts, metadata_ns, kind, command(plan.config, facts), devices,
                   graphics=graphics is not None)


def build_run(plan: Plan, facts: HostFacts, metadata_ns: str, channel_dir: str,
              console_log: str, *, session: bool = False,
              graphics: Graphics | None = None) -> str:
    """The transient domain of a one-shot `run`: stdio and status over virtio-serial ports
    whose host ends are unix sockets in `channel_dir`, the console in `console_log`.
    session: for a user's own daemon (qemu:///session, see runtime/session.py): qemu runs as
    that user, so nothing is relabelled and the 9p shares are read and written as the user
    (accessmode 'squash'), never over virtiofs (libvirt starts virtiofsd only as root); the
    command runs as the config's user (-U's payload).
    graphics: a display and a GPU, and the guest init starts the host's X server (facts.xorg)
    on it before the command (graphics.py)."""
    if session:
        facts = dataclasses.replace(facts, virtiofsd="")
    devices = [
        *_controllers(),
        *_filesystems(plan.mounts, facts, squash=session),
        *_interfaces(plan.config),
        *_console(console_log),
        *[_channel(f"vss.{p}", f"{channel_dir}/{p}.sock") for p in RUN_PORTS],
        *(graphics_devices(graphics) if graphics else ()),
        E.memballoon(model="none"),
    ]
    return _domain(plan, facts, metadata_ns, "run", command(plan.config, facts), devices,
                   session=session, graphics=graphics is not None)


def _domain(plan: Plan, facts: HostFacts, ns: str, kind: str, command: Sequence[str],
            devices: list[etree._Element], *, session: bool = False,
            graphics: bool = False) -> str:
    cfg = plan.config
    if cfg.id_base is not None:
        raise UserError("user namespaces are for LXC sandboxes only",
                        "create the sandbox with -c lxc:///")
    memory_kib = cfg.memory // 1024 if cfg.memory else DEFAULT_MEMORY_KIB
    dom = E.domain(
        E.name(cfg.name),
        E.title(f"virt-sandbox-service: {what(plan)}"),
        metadata(plan, ns),
        E.memory(str(memory_kib), unit="KiB"),
        *_memory_backing(plan, facts),
        E.vcpu("1"),
        _os(plan, facts, kind, command, graphics),
        E.features(E.acpi()),
        type=domain_type(facts),
    )
    if facts.kvm:
        dom.append(E.cpu(mode="host-passthrough"))
    _insert_tunables(dom, cfg)
    dom.extend([
        E.clock(offset="utc"),
        E.on_poweroff("destroy"),
        E.on_reboot("destroy"),
        E.on_crash("destroy"),
        E.devices(*devices),
        # A session daemon runs qemu as its user, who cannot chown anything to root.
        E.seclabel(type="none") if session else
        E.seclabel(E.label("+0:+0"), type="static", model="dac", relabel="no"),
    ])
    label = selinux_label(plan, facts)
    if label is not None:
        dom.append(label)
    args = []
    if graphics or any(_virtiofs_root(m, facts) for m in plan.mounts):
        args += ["-global", "virtio-mmio.force-legacy=false"]
    if graphics:
        args += graphics_qemu_args()
    if args:
        dom.append(_qemu_commandline(args))
    return etree.tostring(dom, pretty_print=True, encoding="unicode")


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def _qemu_commandline(args: Sequence[str]) -> etree._Element:
    """Arguments libvirt 9.0 has no element for. qemu's virtio-mmio devices are legacy
    (virtio 0.9) unless told otherwise (`-global virtio-mmio.force-legacy=false`): virtiofsd
    (libvhost-user) refuses legacy devices ("virtio legacy devices aren't supported"), and
    the virtio GPU is a virtio 1.0 device. The GPU itself: see graphics.py."""
    q = ElementMaker(namespace=QEMU_NS, nsmap={"qemu": QEMU_NS})
    return cast(etree._Element, q.commandline(*(q.arg(value=a) for a in args)))


def _os(plan: Plan, facts: HostFacts, kind: str, command: Sequence[str],
        graphics: bool = False) -> etree._Element:
    return cast(etree._Element, E.os(
        E.type("hvm", arch="x86_64", machine="microvm"),
        E.kernel(facts.kvm_kernel),
        E.initrd(facts.kvm_initrd),
        E.cmdline(kernel_cmdline(plan, facts, kind, command, graphics)),
    ))


def kernel_cmdline(plan: Plan, facts: HostFacts, kind: str, command: Sequence[str],
                   graphics: bool = False) -> str:
    """The kernel's arguments, then what the guest init reads (see initrd/init)."""
    args = list(BASE_CMDLINE)
    if not facts.kvm and facts.tsc_khz:
        # Under TCG the guest's TSC runs at the host's rate: calibrating it only costs time.
        args.append(f"tsc_early_khz={facts.tsc_khz}")
    args += [f"vss.kind={kind}", f"vss.name={plan.config.name}"]
    if kind == "service":
        args.append(f"vss.init={_checked(facts.systemd, 'systemd path')}")
        args += [f"vss.unit={_checked_unit(u)}" for u in plan.config.units]
        # The service's own generators run; the init masks every other (kept_generators).
        args += [f"vss.keepgen={_checked_name(g)}" for g in kept_generators(plan.evidence)]
    if plan.config.caps_drop:
        args.append(f"vss.capdrop={','.join(sorted(plan.config.caps_drop))}")
    tag = disk = 0
    for m in plan.mounts:
        target = _checked(m.target, "mount target")
        if m.tmpfs_kib:
            args.append(f"vss.mount=tmpfs,{m.tmpfs_kib},{target}")
        elif m.image:
            args.append(f"vss.mount=disk,{DISK_SERIAL}{disk},{target},rw")
            disk += 1
        elif _from_host_root(m):
            args.append(f"vss.mount=hostro,{_checked(m.source, 'mount source')},{target}")
        else:
            fs = "virtiofs" if _virtiofs_root(m, facts) else "9p"
            args.append(f"vss.mount={fs},vss{tag},{target},{'ro' if m.readonly else 'rw'}")
            tag += 1
    if plan.config.image_size is not None:
        # -i: once everything under the image is mounted, its etc/ and var/ go on /etc and
        # /var (as the LXC sandbox's first process binds them; see image.py).
        args.append(f"vss.mount=private,{IMAGE_MOUNT}")
    args += _guest_bind_args(plan)
    args += _network_args(plan.config)
    if graphics:  # the guest init starts the host's X server before the command
        if not facts.xorg:
            raise no_xorg()
        args.append(f"vss.xorg={_checked(facts.xorg, 'X server path')}")
    args += [f"vss.arg={base64.b64encode(a.encode()).decode()}" for a in command]
    text = " ".join(args)
    if len(text) > CMDLINE_MAX:
        raise UserError(f"the KVM sandbox's kernel command line would be {len(text)} bytes "
                        f"(at most {CMDLINE_MAX})",
                        "shorten the command: put it in a script and run that")
    return text


def _checked(path: str, what: str) -> str:
    if not _SAFE_PATH.fullmatch(path) or "," in path:
        raise UserError(f"{what} '{path}' cannot be passed to a KVM sandbox",
                        "KVM sandboxes accept paths of letters, digits and _@%+=:./- only")
    return path


def _checked_name(name: str) -> str:
    """A generator's file name, a word of the guest init's space-separated list."""
    if not re.fullmatch(r"[A-Za-z0-9_@:.+-]+", name):
        raise UserError(f"generator name '{name}' cannot be passed to a KVM sandbox",
                        "KVM sandboxes accept names of letters, digits and _@:.+- only")
    return name


def _checked_unit(unit: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_@:.\\-]+", unit):
        raise UserError(f"unit name '{unit}' cannot be passed to a KVM sandbox",
                        "unit names there use letters, digits and '_@:.-\\'")
    return unit


def _controllers() -> list[etree._Element]:
    return [
        E.controller(type="usb", model="none"),
        E.controller(E.address(type="virtio-mmio"), type="virtio-serial", index="0"),
    ]


def _from_host_root(m: Mount) -> bool:
    """A host tree under /etc shown read-only (the trees the host's package tools manage,
    host.SHARED_ETC, on the private /etc or, with -i, where the image's etc/ is put
    together): the guest already has the host's root, so its init binds the tree from there
    (initrd/init: hostro) instead of a share of its own. Not only one device fewer:
    libvirt's AppArmor helper refuses a share whose source lies under /etc ("skipped
    restricted file"), so with one no KVM sandbox would start on an AppArmor host."""
    return (m.readonly and not m.tmpfs_kib and not m.image
            and m.source.startswith("/etc/"))


def _virtiofs_root(m: Mount, facts: HostFacts) -> bool:
    """The host's root goes over virtiofs where the host has virtiofsd (facts.virtiofsd:
    our read-only wrapper, libexec/virtiofsd-ro); every other share, and the root elsewhere,
    over 9p."""
    return bool(facts.virtiofsd) and m.source == "/" and m.target == "/" and m.readonly


def _virtiofs(m: Mount, tag: str, facts: HostFacts) -> etree._Element:
    """A virtiofs share served by our wrapper of virtiofsd, which makes every mount read-only
    in its own mount namespace (qemu 7.2's virtiofsd has no read-only mode, and libvirt 9.0
    refuses <readonly/> for virtiofs); chroot sandboxing within it; the guest caches freely,
    as with 9p's cache=loose."""
    return cast(etree._Element, E.filesystem(
        E.driver(type="virtiofs", queue="1024"),
        E.binary(E.cache(mode="always"), E.sandbox(mode="chroot"), path=facts.virtiofsd),
        E.source(dir=m.source), E.target(dir=tag), E.address(type="virtio-mmio"),
        type="mount", accessmode="passthrough"))


def _memory_backing(plan: Plan, facts: HostFacts) -> list[etree._Element]:
    """virtiofs needs the guest's memory shared with virtiofsd."""
    if not any(_virtiofs_root(m, facts) for m in plan.mounts):
        return []
    return [E.memoryBacking(E.source(type="memfd"), E.access(mode="shared"))]


def _filesystems(mounts: tuple[Mount, ...], facts: HostFacts, *, squash: bool = False
                 ) -> list[etree._Element]:
    """One share per mount with a host source (virtio-9p; the root over virtiofs where the
    host can), tagged vss0, vss1... in plan order (the kernel command line says where each
    goes). squash: qemu's security_model=none, for a qemu that is not root (passthrough
    needs root's chown and setuid)."""
    out = []
    tag = 0
    for m in mounts:
        if m.tmpfs_kib or m.image or _from_host_root(m):  # images are disks (_disks)
            continue
        if _virtiofs_root(m, facts):
            out.append(_virtiofs(m, f"vss{tag}", facts))
            tag += 1
            continue
        # multidevs=remap: the host's root spans several filesystems (/proc, /sys, /run...)
        # whose inode numbers collide; unremapped, the guest's 9p cache mistakes one
        # directory for another (seen: /proc and /sys, both inode 1).
        fs = E.filesystem(E.source(dir=m.source), E.target(dir=f"vss{tag}"),
                          type="mount", accessmode="squash" if squash else "passthrough",
                          multidevs="remap")
        if m.readonly:
            fs.append(E.readonly())
        fs.append(E.address(type="virtio-mmio"))
        out.append(fs)
        tag += 1
    return out


def _guest_bind_args(plan: Plan) -> list[str]:
    """-m guest-bind:DST=SRC: bind mounts the guest init makes after every other mount (the
    source may itself be one of them)."""
    binds = [m for m in plan.config.mounts if m.type is MountType.GUEST_BIND]
    return [f"vss.mount=bind,{_checked(s.source, 'mount source')},"
            f"{_checked(s.target, 'mount target')}" for s in binds]


# --- resource limits (<blkiotune>, <cputune>) ---------------------------------------------------


def tunables(cfg: SandboxConfig) -> tuple[etree._Element | None, etree._Element | None]:
    """(<blkiotune>, <cputune>) for the configured limits, None where nothing is set.

    The CPU cap is libvirt's global quota: it bounds the whole qemu process (the vCPU, and
    the emulator and I/O threads serving 9p), which is the sandbox's CPU time; a vCPU quota
    would leave the host-side file I/O of the sandbox uncapped.
    """
    blk = blkiotune_element(cfg)
    cpu = None
    if cfg.cpu_weight or cfg.cpu_quota or cfg.cpuset:
        cpu = E.cputune()
        if cfg.cpu_weight:
            cpu.append(E.shares(str(cfg.cpu_weight)))
        if cfg.cpu_quota:
            cpu.append(E.global_period(str(CPU_PERIOD_US)))
            cpu.append(E.global_quota(str(cfg.cpu_quota * CPU_PERIOD_US // 100)))
        if cfg.cpuset:  # the one vCPU, and qemu's own threads (9p, virtiofs, the monitor)
            cpu.append(E.vcpupin(vcpu="0", cpuset=cfg.cpuset))
            cpu.append(E.emulatorpin(cpuset=cfg.cpuset))
    return blk, cpu


def _insert_tunables(dom: etree._Element, cfg: SandboxConfig) -> None:
    """In libvirt's order: <blkiotune> after <memory>, <cputune> after <vcpu>."""
    blk, cpu = tunables(cfg)
    # addnext in reverse: memory, blkiotune, memtune; vcpu, cputune, numatune.
    for anchor_tag, el in (("memory", memtune_element(cfg, hard=False)), ("memory", blk),
                           ("vcpu", numatune_element(cfg)), ("vcpu", cpu)):
        anchor = dom.find(anchor_tag)
        if el is None:
            continue
        if anchor is None:
            dom.append(el)
        else:
            anchor.addnext(el)


def set_tunables(dom: etree._Element, cfg: SandboxConfig) -> None:
    """`limit` on a defined KVM domain: its memory (the guest's RAM, effective at the next
    boot: the guest has no balloon), <blkiotune> and <cputune>, replacing what was there."""
    for tag in ("blkiotune", "cputune", "memtune", "numatune"):
        for old in dom.findall(tag):
            dom.remove(old)
    memory = dom.find("memory")
    if memory is not None:
        memory.text = str(cfg.memory // 1024 if cfg.memory else DEFAULT_MEMORY_KIB)
        memory.set("unit", "KiB")
        for current in dom.findall("currentMemory"):
            dom.remove(current)
    _insert_tunables(dom, cfg)


# --- devices -----------------------------------------------------------------------------------


def _disks(mounts: tuple[Mount, ...]) -> list[etree._Element]:
    """-m host-image: one raw virtio-blk disk per image, read-write as an LXC loop mount is.
    The guest finds each by its serial (vss-disk0, vss-disk1...), not by probe order.

    -i's image (the one mounted at IMAGE_MOUNT) has one writer, this guest: clone and
    upgrade refuse a running sandbox, so the host reads it only once qemu has exited, through
    the same page cache. cache='writeback' keeps the guest's flushes (ext4's journal
    commits) honoured and needs no O_DIRECT, which the state directory's file system may
    lack (tmpfs); io='threads' is what a raw file without O_DIRECT gets."""
    out = []
    for index, m in enumerate(m for m in mounts if m.image):
        driver = E.driver(name="qemu", type="raw")
        if m.target == IMAGE_MOUNT:
            driver.set("cache", "writeback")
            driver.set("io", "threads")
        out.append(E.disk(driver, E.source(file=m.source),
                          E.target(dev=f"vd{chr(ord('a') + index)}", bus="virtio"),
                          E.serial(f"{DISK_SERIAL}{index}"), E.address(type="virtio-mmio"),
                          type="file", device="disk"))
    return out


def _login_console() -> etree._Element:
    """`connect`: a virtio console (hvc0 in the guest, libvirt alias console1) with a root
    login on it, apart from the serial console that `start` copies to the journal."""
    return cast(etree._Element,
                E.console(E.target(type="virtio", port=LOGIN_CONSOLE_PORT), type="pty"))


def _interfaces(cfg: SandboxConfig) -> list[etree._Element]:
    """One virtio-net device per -N, with the MAC the guest finds it by."""
    return [kvm_interface_element(spec, host_device(cfg.name, i), guest_mac(cfg.name, i, spec))
            for i, spec in enumerate(cfg.networks)]


def _network_args(cfg: SandboxConfig) -> list[str]:
    """What the guest init configures on each interface (see network.guest_args)."""
    return [arg for i, spec in enumerate(cfg.networks)
            for arg in guest_args(spec, guest_mac(cfg.name, i, spec))]


def _console(log_path: str | None) -> list[etree._Element]:
    """The serial console: a pty `start` copies to the journal, or a file for `run`."""
    if log_path is None:
        return [E.serial(E.target(port="0"), type="pty"),
                E.console(E.target(type="serial", port="0"), type="pty")]
    return [E.serial(E.source(path=log_path), E.target(port="0"), type="file"),
            E.console(E.source(path=log_path), E.target(type="serial", port="0"), type="file")]


def _channel(name: str, path: str | None) -> etree._Element:
    ch = E.channel(type="unix")
    if path is not None:
        ch.append(E.source(mode="bind", path=path))
    ch.append(E.target(type="virtio", name=name))
    return cast(etree._Element, ch)
