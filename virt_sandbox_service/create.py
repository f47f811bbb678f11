"""create: validate the request, gather host facts and evidence, plan, then apply.

Everything up to `plan` reads only; `apply_plan` is where the host changes, inside one
Transaction so that a failure or Ctrl-C undoes exactly what was done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from . import (
    capneeds,
    conffiles,
    devices,
    graphics,
    host,
    hostsources,
    image,
    layers,
    maintscripts,
    planner,
    registry,
    unitfile,
    users,
)
from . import evidence as ev
from .apply import domainlogs, files
from .apply import labels as file_labels
from .apply import libvirt as lv
from .apply.txn import Transaction
from .config import (
    DEFAULT_URI,
    Driver,
    GraphicsType,
    Kind,
    Paths,
    SandboxConfig,
    SecurityMode,
    all_configs,
    check_arg_text,
    driver_for_uri,
    new_machine_id,
    shown,
    validate_abs_path,
    validate_dir_path,
    validate_name,
)
from .errors import UserError
from .limits import (
    LimitArgs,
    check_enforceable,
    check_memory_tune,
    confined_caps,
    kvm_tasks_refusal,
    norm_caps,
    parse_caps,
    parse_limits,
    parse_syscall_allow,
)
from .mounts import MountSpec, MountType, check_loop_path
from .network import NetSpec
from .plan import EVIDENCE_FILE, Plan
from .provision import apply_plan as apply_plan
from .provision import apply_state, check_free, register, reserve, tool_path
from .provision import check_networks as check_networks
from .provision import ensure_our_filter as ensure_our_filter

# The registry's names, where they were before registry.py.
from .registry import config_lock as config_lock
from .registry import parse_security as parse_security
from .runtime.lxc import remove_cgroups
from .users import UserArgs


@dataclass(frozen=True)
class CreateRequest:
    name: str
    uri: str = DEFAULT_URI
    units: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    state_parent: str | None = None
    packages: tuple[str, ...] = ()
    private: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    copy: bool = False
    security: str | None = None
    limits: LimitArgs = field(default_factory=LimitArgs)
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    syscall_allow: tuple[str, ...] = ()
    userns: bool = False
    mounts: tuple[MountSpec, ...] = ()  # parsed where they came in (cli.create_request)
    networks: tuple[NetSpec, ...] = ()
    user: UserArgs = field(default_factory=UserArgs)
    image_size: str | None = None
    etc: str | None = None  # "overlay", "copy"; None: overlay where it can be (etc_overlay)
    devices: tuple[str, ...] = ()  # --device PATH (devices.py)
    graphics: str | None = None  # --graphics vnc|spice (graphics.py)
    graphics_listen: str | None = None


@dataclass(frozen=True)
class Options:
    """The sandbox options create and run share, each parsed once (validate_options)."""

    limits: tuple[tuple[str, Any], ...] = ()  # config field -> value, the given ones only
    caps_drop: tuple[str, ...] = ()
    caps_add: tuple[str, ...] = ()
    syscalls_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checked:
    """A create request's values, parsed once by validate; build_config takes them from
    here instead of parsing them again."""

    options: Options
    security: tuple[SecurityMode, str | None] = registry.DEFAULT_SECURITY
    run_as: users.RunAs | None = None
    image_size: int | None = None
    devices: tuple[str, ...] = ()
    graphics: tuple[GraphicsType | None, str] = (None, "")  # (type, listen address)


def validate(req: CreateRequest) -> Checked:
    """Checks that need nothing but the request itself; the values, parsed."""
    validate_name(req.name)
    if req.units and req.command:
        raise UserError("give either -u UNIT or a command after --, not both",
                        "a unit sandbox runs systemd; a generic sandbox runs one command")
    if not req.units and not req.command:
        raise UserError("nothing to run: give -u UNIT or a command after --",
                        "e.g. create -u apache2.service web1, or create web3 -- /bin/sh")
    display = check_graphics(req)
    if req.state_parent is not None:
        validate_dir_path(req.state_parent, "-p path")
    for p in (*req.private, *req.shared):
        validate_abs_path(p, "path")
    options = validate_options(req)
    security = registry.security_option(req.security)
    if req.userns:
        problem = host.cgroup_layout().userns_problem
        if problem:
            raise UserError(f"--userns is not possible on this host: {problem}",
                            "create the sandbox without --userns; 'doctor' explains")
    check_command(req.command)
    if driver_for_uri(req.uri) is Driver.KVM:
        host.check_kvm_lsm()
    return Checked(options, security, check_user(req), check_image(req),
                   devices.check_all(req.devices), display)


def check_graphics(req: CreateRequest) -> tuple[GraphicsType | None, str]:
    """--graphics and --graphics-listen (a generic KVM sandbox), and the host's X server,
    which the guest starts from the host's root."""
    display = graphics.create_request(req.graphics, req.graphics_listen, req.uri,
                                      driver_for_uri(req.uri), bool(req.units))
    if display[0] is not None:
        graphics.find_xorg()
    return display


def check_image(req: CreateRequest) -> int | None:
    """-i SIZE: its size, and what it cannot be combined with (yet); mkfs.ext4 is there.
    Both backends: LXC loop-mounts the image, a KVM guest gets it as a disk (see image.py)."""
    if req.image_size is None:
        return None
    size = image.parse_image_size(req.image_size)
    if req.userns:
        raise UserError("-i cannot be combined with --userns yet",
                        "leave one of them out")
    image.mkfs_tool()
    return size


def check_user(req: CreateRequest) -> users.RunAs | None:
    """-U and friends: generic sandboxes only; ids, names and the home checked on the host."""
    if req.user.given() and req.units:
        raise UserError(f"{req.user.given()[0]} is for generic sandboxes: a unit sandbox runs "
                        "its unit as the unit's User= says",
                        "set User= in the unit (a drop-in), or leave the option out")
    run_as = users.resolve(req.user, req.userns)
    if run_as is not None:
        users.check_home(run_as.home, tuple((s.target, s.source)
                                            for s in req.mounts
                                            if s.type.value == "host-bind"))
    return run_as


def check_bandwidth(net: NetSpec, limit: bool = False) -> None:
    """-N ...,inbound=/outbound= (limit: --inbound/--outbound): refused up front where the
    kernel lacks what libvirt's tc commands need (libvirt would fail the start with tc's
    "qdisc kind is unknown")."""
    from . import host

    for direction in ("inbound", "outbound"):
        missing = host.bandwidth_missing(direction) if getattr(net, direction) else []
        if missing:
            option = f"--{direction}" if limit else f"-N ...,{direction}="
            raise UserError(f"{option} cannot be enforced on this host: its kernel "
                            f"lacks {', '.join(missing)} (libvirt shapes an interface with tc)",
                            f"leave {option} out, or use a kernel with them (Debian's has "
                            "them as modules)")


def validate_options(req: CreateRequest, own_trees: tuple[str, ...] | None = None) -> Options:
    """The sandbox options create and one-shot `run` share: limits, capabilities, mounts
    (`own_trees`: where the sandbox makes mount points itself), networks, and what a KVM
    sandbox cannot do."""
    kvm = driver_for_uri(req.uri) is Driver.KVM
    if kvm:
        _validate_kvm(req)
    limits = parse_limits(req.limits, os.cpu_count() or 1)
    check_enforceable(limits)
    check_memory_tune(limits.get("memory"), limits.get("memory_soft"),
                      limits.get("memory_swap"))
    options = Options(tuple(limits.items()), parse_caps(req.cap_drop, req.cap_add),
                      norm_caps(req.cap_add), parse_syscall_allow(req.syscall_allow))
    for spec in req.mounts:
        check_mount_target(spec, OWN_TREES if own_trees is None else own_trees)
        if not kvm:
            check_loop_path(spec)
    for net in req.networks:
        check_bandwidth(net)
        if net.dhcp and req.command:
            raise UserError("-N ...,dhcp needs a unit sandbox (its systemd-networkd is the "
                            "DHCP client)", "give a generic sandbox address=IP/PREFIX")
    return options


def check_command(command: tuple[str, ...]) -> None:
    """A generic sandbox's command: absolute, and text libvirt's XML can carry."""
    check_arg_text(command)
    if command and not command[0].startswith("/"):
        raise UserError(f"command {shown(command[0])} must be an absolute path",
                        "the sandbox has no shell PATH lookup for its init; use e.g. /usr/bin/"
                        f"{os.path.basename(command[0]) or 'true'}")


# Mount points the sandbox makes itself: its private trees and tmpfs.
OWN_TREES = ("/etc", "/var", "/run", "/tmp", "/dev/shm")


def check_mount_target(spec: MountSpec, own_trees: tuple[str, ...] = OWN_TREES) -> None:
    """The host root is read-only in the sandbox: a mount point outside the sandbox's own
    trees must already exist on the host."""
    if any(spec.target.startswith(t + "/") for t in own_trees):
        return
    if not os.path.exists(spec.target):
        raise UserError(f"mount target {spec.target} does not exist on the host root, which "
                        "the sandbox sees read-only",
                        f"mount under {', '.join(own_trees)}, or create the directory on "
                        "the host first")


def _validate_kvm(req: CreateRequest) -> None:
    """What a KVM sandbox (a VM of its own, see domain/kvm.py) cannot do (yet)."""
    if req.userns:
        raise UserError("--userns is for LXC sandboxes: a KVM sandbox is a VM with a kernel "
                        "of its own", "leave --userns out, or use -c lxc:///")
    for spec in req.mounts:
        if spec.type is MountType.HOST_IMAGE:
            check_kvm_image(spec.source)
    if req.limits.tasks is not None:
        raise kvm_tasks_refusal()
    if req.devices:
        raise UserError("--device is for LXC sandboxes: a KVM sandbox is a VM, which gets "
                        "virtual hardware, not the host's device nodes", "use -c lxc:///")


# An ext2/3/4 superblock: its magic 0xEF53 (little-endian) at byte 1080 of the image.
EXT_MAGIC_OFFSET, EXT_MAGIC = 1080, b"\x53\xef"


def check_kvm_image(path: str) -> None:
    """A KVM guest mounts -m host-image disks as ext4 (its initrd carries that driver, which
    also reads ext2 and ext3): anything else would fail only at start, inside the guest."""
    try:
        with open(path, "rb") as f:
            f.seek(EXT_MAGIC_OFFSET)
            magic = f.read(2)
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e.strerror}",
                        "give an image file that root can read") from None
    if magic != EXT_MAGIC:
        raise UserError(f"image {path} holds no ext2/3/4 file system, the kind a KVM "
                        "sandbox can mount",
                        "make it with mkfs.ext4, or use -c lxc:/// for other file systems")


def etc_overlay(req: CreateRequest, parent: Path, overlayfs: bool,
                evidence: Sequence[ev.PathEvidence]) -> bool:
    """Whether the sandbox's /etc is an overlay (see plan.py): asked for or not refused, and
    possible: LXC, no -i image, no user namespace (the host's files would be owned by
    nobody), an overlayfs kernel, a state directory on a file system that can hold an upper
    layer, and not all of /etc private anyway."""
    why_not = (
        "KVM sandboxes share their files over 9p or virtiofs" if driver_for_uri(req.uri)
        is Driver.KVM else
        "-i keeps /etc in an image" if req.image_size is not None else
        "--userns would show the host's files as owned by nobody" if req.userns else
        "this kernel has no overlayfs" if not overlayfs else
        host.upper_layer_refusal(parent) or
        ("all of /etc is private" if any(
            e.path == "/etc" and e.access is ev.Access.PRIVATE for e in evidence) else ""))
    if req.etc == "overlay" and why_not:
        raise UserError(f"--etc overlay is not possible here: {why_not}",
                        "leave --etc out, or use --etc copy")
    return req.etc != "copy" and not why_not


def build_config(req: CreateRequest, checked: Checked, paths: Paths,
                 units: Sequence[unitfile.UnitFile], label: str, overlay: bool = False,
                 machine_id: str = "") -> SandboxConfig:
    """The config of a validated request (`checked`: its parsed values) with its label."""
    parent = Path(req.state_parent) if req.state_parent else paths.state_parent
    run_as, opts = checked.run_as, checked.options
    return SandboxConfig(
        name=req.name,
        kind=Kind.SERVICE if req.units else Kind.GENERIC,
        uri=req.uri,
        state_dir=str(parent / req.name),
        units=tuple(u.name for u in units),
        command=req.command,
        packages=req.packages,
        private=tuple(os.path.normpath(p) for p in req.private),
        shared=tuple(os.path.normpath(p) for p in req.shared),
        copy=req.copy,
        security_mode=checked.security[0],
        security_label=label,
        machine_id=machine_id or new_machine_id(),
        caps_drop=opts.caps_drop,
        caps_add=opts.caps_add,
        syscalls_allow=opts.syscalls_allow,
        devices=checked.devices,
        id_base=registry.choose_id_base(paths) if req.userns else None,
        mounts=req.mounts,
        networks=req.networks,
        uid=run_as.uid if run_as else None, gid=run_as.gid if run_as else None,
        username=run_as.name if run_as else "", homedir=run_as.home if run_as else "",
        image_size=checked.image_size,
        etc_overlay=overlay,
        graphics=checked.graphics[0], graphics_listen=checked.graphics[1],
        **dict(opts.limits),
    )


@dataclass(frozen=True)
class Gathered:
    """What create reads from the host before it takes the lock."""

    units: tuple[unitfile.UnitFile, ...]
    evidence: tuple[ev.PathEvidence, ...]
    hidden: tuple[ev.PathEvidence, ...]
    # Where a fresh instance is made (fresh_possible): the packages whose postinst make it.
    fresh_packages: tuple[str, ...] = ()
    machine_id: str = ""  # the sandbox's, which %m in its units resolved to


def gather(req: CreateRequest, machine_id: str | None = None) -> Gathered:
    """machine_id: the sandbox's (a new one for a create); %m in its units resolves to it, and
    %H and %l to its name, its host name: what the sandbox's own systemd will read."""
    machine_id = machine_id or new_machine_id()
    names = [unitfile.resolve_unit_name(u, req.name) for u in req.units]
    units = tuple(unitfile.load_unit(n, hostname=req.name, machine_id=machine_id)
                  for n in names)
    pkgdb = ev.detect_package_db()
    evidence = ev.gather(units, pkgdb, packages=req.packages, private=req.private,
                         shared=req.shared, generic=not units)
    allowed = [e.path for e in evidence if e.path.startswith("/etc")]
    hidden = ev.hidden_secrets(Path("/etc"), allowed)
    if not fresh_possible(req, pkgdb) or pkgdb is None:
        return Gathered(units, evidence, hidden, machine_id=machine_id)
    if not req.copy:
        hidden += maintscripts.host_made_secrets(evidence)  # its secrets are its own
    # The units' own packages and -P's, not what they depend on: a dependency's postinst was
    # run by the host for the host's /usr, which every sandbox shares read-only.
    own = tuple(pkg for pkg, via in ev._packages(units, pkgdb, req.packages).items()
                if via is None)
    return Gathered(units, evidence, hidden, own, machine_id)


def fresh_possible(req: CreateRequest, pkgdb: ev.PackageDB | None) -> bool:
    """Where the packages' postinst makes a fresh instance (see fresh_instance): an LXC unit
    sandbox whose trees are directories, on a dpkg host."""
    return (bool(req.units) and driver_for_uri(req.uri) is Driver.LXC
            and req.image_size is None and pkgdb is not None and pkgdb.kind == "dpkg")


def make_plan(req: CreateRequest, checked: Checked, paths: Paths, facts: host.HostFacts,
              got: Gathered) -> Plan:
    """Everything create will do, decided from the request and the host. Reads only."""
    label = registry.choose_label(paths, req.uri, checked.security)
    parent = Path(req.state_parent) if req.state_parent else paths.state_parent
    overlay = etc_overlay(req, parent, facts.overlayfs, got.evidence)
    config = build_config(req, checked, paths, got.units, label, overlay, got.machine_id)
    missing = capneeds.lacking(list(got.units), confined_caps(config))
    if missing:
        line, hint = capneeds.describe(missing)
        _warn_fails_at_start(line, hint)
    lacking = capneeds.lacking_devices(list(got.units), config.devices)
    if lacking:
        line, hint = capneeds.describe_devices(lacking)
        _warn_fails_at_start(line, hint)
    unhonoured = capneeds.unhonoured(list(got.units)) if config.driver is Driver.LXC else []
    if unhonoured:
        line, hint = capneeds.describe_unhonoured(unhonoured, config.state_dir)
        _warn_fails_at_start(line, hint)
    return plan_units(config, paths, facts, got.evidence, got.hidden, got.units)


def _warn_fails_at_start(line: str, hint: str) -> None:
    print(f"virt-sandbox-service: warning: {line}: it will fail at start ({hint})",
          file=sys.stderr)


def plan_units(config: SandboxConfig, paths: Paths, facts: host.HostFacts,
               evidence: tuple[ev.PathEvidence, ...], hidden: tuple[ev.PathEvidence, ...],
               units: Sequence[unitfile.UnitFile]) -> Plan:
    """The plan of a unit sandbox's (or a generic one's: no units) config, whole: what
    create makes, and what upgrade and limit compare with what is in place (reconcile.py).
    Here the host is read (the units' needs, the conffiles' baseline, the tool's path);
    planner.build decides."""
    return planner.build(config, facts, planner.Inputs(
        evidence=evidence, hidden=hidden, units=unit_sources(units),
        unit_needs=tuple((unit, cap) for unit, cap, _ in
                         capneeds.lacking(list(units), confined_caps(config))),
        conffiles=tuple(conffiles.baseline(evidence).items()), paths=paths, tool=tool_path()))


def unit_sources(units: Sequence[unitfile.UnitFile]) -> tuple[planner.UnitSource, ...]:
    return tuple(planner.UnitSource(u.name, _fragment(u), u.generated, str(u.source or ""))
                 for u in units)


def _fragment(unit: unitfile.UnitFile) -> str:
    """The unit's file as the sandbox's systemd finds it: the host's, or, for a unit made by
    the sysv generator (no file on the host), the one create writes into its /etc."""
    if unit.generated is None:
        return str(unit.path)
    return f"/etc/systemd/system/{unit.name}"


def fresh_instance(req: CreateRequest, p: Plan, paths: Paths, conn: libvirt.virConnect,
                   facts: host.HostFacts, got: Gathered, meanwhile: Callable[[], None]) -> None:
    """An LXC unit sandbox: the packages' own postinst sets the new instance up, as on a first
    installation (maintscripts.py); what it made is recorded as evidence. With -C, what it
    made and the host has too is then replaced by the host's: an instance that starts from
    the host's data, including what no file list names.

    `meanwhile` runs while the set-up runs (its domain started; always, with or without one):
    create's define, units and daemon-reload (register), which are not in the set-up's way
    and cost a systemd host a reload's time. Should it fail, the set-up domain is ended."""
    cfg = p.config
    postinsts = [(pkg, os.path.basename(path)) for pkg in got.fresh_packages
                 if (path := maintscripts.postinst_path(pkg))]
    if not postinsts:
        meanwhile()
        return
    state = Path(cfg.state_dir)
    trees = [state / "etc", state / "var"]
    before = maintscripts.snapshot(trees)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    run_dir, setup = maintscripts.setup_names(paths.run_dir, cfg.name)
    run_dir.mkdir(0o700)
    rdir = str(run_dir)  # the plan's and the label's form
    sp = maintscripts.setup_plan(cfg, facts, got.evidence, got.hidden, rdir,
                                 maintscripts.script(postinsts), setup)
    try:
        file_labels.label_channel(cfg, rdir)
        maintscripts.run(conn, sp, facts, meanwhile)
    finally:
        shutil.rmtree(rdir, ignore_errors=True)
        remove_cgroups(sp.config.name)
    new = maintscripts.made(before, maintscripts.snapshot(trees))
    if req.copy:
        for path in new:
            if os.path.lexists(path):
                _take_hosts(path, state / path.lstrip("/"))
    _record_made(state, new, [pkg for pkg, _ in postinsts], req.copy)


def _take_hosts(host_path: str, instance: Path) -> None:
    """-C: the host's version of what the scripts made, in place of the instance's."""
    if instance.is_dir() and not instance.is_symlink():
        shutil.rmtree(instance)
    elif os.path.lexists(instance):
        instance.unlink()
    files.copy_tree(host_path, str(instance), frozenset())


# The reason evidence.json gives what the packages' scripts made (bench/create.py reads it).
MADE_BY_POSTINST = "made by the postinst of "


def _record_made(state: Path, new: list[str], packages: list[str], copied: bool) -> None:
    """evidence.json: what the packages' scripts made, as private paths with that reason."""
    record = state / EVIDENCE_FILE
    data = json.loads(record.read_text())
    why = f"{MADE_BY_POSTINST}{', '.join(packages)}" + (
        "; the host's copied (-C)" if copied else " (a fresh instance)")
    data["evidence"] += [{"path": path, "access": "private",
                          "dir": (state / path.lstrip("/")).is_dir(), "reasons": [why]}
                         for path in new]
    record.write_text(json.dumps(data, indent=2) + "\n")


def create(req: CreateRequest, paths: Paths, *, dry_run: bool = False,
           checked: Checked | None = None) -> Plan:
    """`checked`: what validate(req) gave, where the caller validated already (apply)."""
    checked = checked or validate(req)
    facts = host.detect()
    got = gather(req)
    conn = lv.connect(req.uri, readonly=dry_run)  # --dry-run: libvirt read, never changed
    facts = dataclasses.replace(facts, secmodels=host.libvirt_secmodels(conn))
    parent = Path(req.state_parent) if req.state_parent else paths.state_parent
    # Early, for a clear error; again below, under the lock.
    check_free(req.name, req.networks, paths, parent / req.name, conn)
    if req.image_size is not None and driver_for_uri(req.uri) is Driver.LXC:
        image.check_image_path(str(parent / req.name))  # KVM: qemu opens it, no loop device
    if dry_run:  # reads only: no lock (its file would be a change), no reservation
        p = make_plan(req, checked, paths, facts, got)
        hostsources.check_among(p.config, all_configs(paths), paths)
        layers.warn_if_unprotected(facts.secmodels, req.uri, req.name)
        return p
    with Transaction() as txn:
        with config_lock(paths):
            check_free(req.name, req.networks, paths, parent / req.name, conn)
            p = make_plan(req, checked, paths, facts, got)
            hostsources.check_among(p.config, all_configs(paths), paths)
            reserve(p, txn)
        apply_state(p, conn, txn)
        # libvirt's logs of earlier set-up domains go before this one runs: after its end,
        # libvirtd's event loop is held by its teardown, and a call then would wait for that.
        domainlogs.sweep_transient(conn, req.uri)
        fresh_instance(req, p, paths, conn, facts, got,
                       meanwhile=lambda: register(p, conn, txn))
    missing = capneeds.missing_instance_paths(list(got.units), capneeds.instance_view(p.config))
    if missing:
        line, hint = capneeds.describe_missing_paths(missing)
        _warn_fails_at_start(line, hint)
    lv.close_without_waiting(conn)  # the set-up domain's teardown is libvirt's own
    layers.warn_if_unprotected(facts.secmodels, req.uri, req.name)
    if driver_for_uri(req.uri) is Driver.KVM and not facts.kvm:
        _, why = host.kvm_choice()
        print(f"virt-sandbox-service: warning: {why}: the sandbox's VM will run under TCG "
              "(emulated, slow)", file=sys.stderr)
    return p
