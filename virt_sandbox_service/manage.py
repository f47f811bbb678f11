"""delete, list, inspect: commands over existing sandboxes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import libvirt

from . import devices, host, image, layers
from .apply import apparmor, domainlogs, files
from .apply import libvirt as lv
from .apply import systemd as sd
from .config import (
    IDMAP_COUNT,
    Driver,
    Kind,
    Paths,
    SandboxConfig,
    load_config,
    scan_configs,
    validate_name,
)
from .create import config_lock
from .errors import HostError, UserError
from .limits import (
    CAP_NUMBERS,
    LimitArgs,
    blkio_live_params,
    check_enforceable,
    check_memory_tune,
    cpu_map,
    effective_caps,
    init_caps,
    kvm_tasks_refusal,
    merge_throttles,
    parse_limits,
    sched_params,
)
from .network import (
    NetSpec,
    guest_mac,
    host_device,
    interface_params,
    rates_text,
    set_bandwidth,
)
from .plan import EVIDENCE_FILE, seen_at
from .runtime import backend, common, poweroff
from .runtime import lxc as rt
from .runtime.enter import init_pid
from .units import unit_name


def _config_for_delete(paths: Paths, name: str) -> SandboxConfig:
    """The sandbox's config; for a damaged config file, what its domain's metadata says (or
    the defaults), so that `delete` can still remove the sandbox it belongs to."""
    validate_name(name)
    try:
        return load_config(paths, name)
    except UserError:
        if not paths.config_file(name).is_file():
            raise
    state = str(paths.state_parent / name)
    uri = "lxc:///"
    for candidate in ("lxc:///", "qemu:///system"):
        with contextlib.suppress(HostError, libvirt.libvirtError):
            dom = lv.lookup(lv.connect(candidate), name)
            if dom is not None and lv.is_ours(dom):
                uri, state = candidate, lv.metadata(dom).get("state", state)
                break
    print(f"virt-sandbox-service: warning: {paths.config_file(name)} is damaged; deleting "
          f"what its domain names (state {state})", file=sys.stderr)
    return SandboxConfig(name=name, kind=Kind.GENERIC, uri=uri, state_dir=state)


def delete(paths: Paths, name: str, *, force: bool = False) -> None:
    """Refuse a running sandbox unless forced; then remove unit, domain, state and config.
    The config goes last: until then, a delete that was killed can be run again."""
    cfg = _config_for_delete(paths, name)
    conn = lv.connect(cfg.uri)
    dom = lv.lookup(conn, name)
    if dom is not None and not lv.is_ours(dom):
        raise UserError(f"libvirt domain '{name}' was not made by virt-sandbox-service",
                        "not touching it; remove the config file by hand if it is stale")
    if dom is not None and dom.isActive():
        if not force:
            raise UserError(f"sandbox '{name}' is running",
                            f"stop it first, or use: virt-sandbox-service delete --force {name}")
        backend(cfg).stop(conn, cfg, paths)
    with config_lock(paths):
        # Check the marker before anything goes, so a refusal leaves the sandbox whole.
        files.check_removable(Path(cfg.state_dir), name)
        sd.disable_and_remove(paths.unit_dir, unit_name(name))
        sd.daemon_reload()
        if dom is not None:
            lv.undefine(dom)
        domainlogs.remove_logs(cfg.uri, name)  # libvirt's, which libvirt never removes
        apparmor.unload_machine(cfg.machine_id)  # loaded by its last start, if any
        rt.remove_cgroups(name)  # also after a stop by someone else, or a failed start
        files.remove_state_dir(Path(cfg.state_dir), name)
        # The run dir is the sandbox's host channel: whatever it made there goes, and no link
        # in it is followed.
        shutil.rmtree(common.run_dir(paths, name), ignore_errors=True)
        _remove_setup_leftovers(paths, name)
        poweroff.clear_stop_marker(paths, name)
        paths.config_file(name).unlink(missing_ok=True)


def _remove_setup_leftovers(paths: Paths, name: str) -> None:
    """What a create killed during the fresh instance's set-up left: its run directory, and
    the cgroups the set-up domain's init made (libvirt ended that domain with the create's
    connection, but removes only its own cgroups)."""
    from .maintscripts import leftovers

    for run_dir, setup in leftovers(paths.run_dir, name):
        rt.remove_cgroups(setup)
        shutil.rmtree(run_dir, ignore_errors=True)


def set_limits(paths: Paths, name: str, args: LimitArgs) -> list[str]:
    """A config change plus a reconcile: the new limits go into the config, the domain is
    re-derived from it (reconcile.py) and, if the sandbox runs, applied live where libvirt
    can. A sandbox made by an older version is brought up to date with it, and says so."""
    from . import reconcile
    from .apply.txn import Transaction

    cfg = load_config(paths, name)
    changes = parse_limits(args, os.cpu_count() or 1)
    nets = _bandwidth_changes(cfg, args)
    if nets != cfg.networks:
        changes["networks"] = nets
    if not changes:
        return []
    check_enforceable(changes)
    kvm = cfg.driver is Driver.KVM
    if "tasks" in changes and kvm:
        raise kvm_tasks_refusal()
    if "io_throttle" in changes:
        changes["io_throttle"] = merge_throttles(cfg.io_throttle, changes["io_throttle"])
    # A limit given at the value it has is no change: nothing to write or apply.
    changes = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
    if not changes:
        return []
    new = dataclasses.replace(cfg, **changes)
    check_memory_tune(new.memory, new.memory_soft, new.memory_swap)
    conn = lv.connect(cfg.uri)
    dom = backend(cfg).domain(conn, cfg)
    running = bool(dom.isActive())
    facts = reconcile.host_facts(conn)
    evidence, hidden = reconcile.recorded_evidence(cfg)
    units = reconcile.units_of(cfg)
    with config_lock(paths), reconcile.private_trees(cfg, running) as trees, \
            Transaction() as txn:
        before = reconcile.reconcile(
            paths, cfg, conn, reconcile.desired(cfg, paths, facts, evidence, hidden, units),
            trees=trees, check=True, txn=txn)
        reconcile.write_undoable(paths.config_file(name), new.to_json(), txn)
        reconcile.reconcile(
            paths, new, conn, reconcile.desired(new, paths, facts, evidence, hidden, units),
            trees=trees, check=False, txn=txn)
    if before.differences:
        what = ", ".join(sorted({d.what for d in before.differences}))
        print(f"virt-sandbox-service: note: '{name}' was made by an older version: its "
              f"definitions were brought up to date with the limits ({what}; as upgrade does)",
              file=sys.stderr)
        if running:
            print(f"virt-sandbox-service: note: {reconcile.next_start(name)}", file=sys.stderr)
    if running:
        (_apply_live_kvm if kvm else _apply_live)(dom, new, set(changes))
        _apply_tuning_live(dom, cfg, new, set(changes))
        _apply_bandwidth_live(dom, cfg, new)
    return [f"{k}={v}" for k, v in changes.items() if k != "networks"] + [
        f"{d}({n.source})={rates_text(getattr(n, d)) or 0}"
        for o, n in zip(cfg.networks, new.networks, strict=True)
        for d in ("inbound", "outbound") if getattr(o, d) != getattr(n, d)]


def _bandwidth_changes(cfg: SandboxConfig, args: LimitArgs) -> tuple[NetSpec, ...]:
    """--inbound/--outbound: the interfaces with their new rates, checked against what this
    host's kernel can hold."""
    from .create import check_bandwidth

    nets = cfg.networks
    for direction in ("inbound", "outbound"):
        nets = set_bandwidth(cfg.name, nets, direction, getattr(args, direction))
    for net in nets:
        if net not in cfg.networks:
            check_bandwidth(net, limit=True)
    return nets


def _apply_bandwidth_live(dom: libvirt.virDomain, old: SandboxConfig,
                          new: SandboxConfig) -> None:
    """New rates on a running sandbox's interfaces: live on KVM (libvirt re-runs its tc on
    the host end); libvirt's LXC driver sets them only when the container starts."""
    changed = [(i, n) for i, (o, n) in enumerate(zip(old.networks, new.networks, strict=True))
               if (o.inbound, o.outbound) != (n.inbound, n.outbound)]
    if not changed:
        return
    if new.driver is Driver.LXC:
        print(f"virt-sandbox-service: note: libvirt sets the bandwidth of LXC sandbox "
              f"'{dom.name()}' when it starts: --inbound/--outbound apply at its next start",
              file=sys.stderr)
        return
    try:
        for i, net in changed:
            dom.setInterfaceParameters(host_device(new.name, i), interface_params(net),
                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as e:
        raise HostError(f"the new limits are saved but could not be applied live: "
                        f"{e.get_error_message()}", "they apply at the next start") from e


def _apply_live_kvm(dom: libvirt.virDomain, cfg: SandboxConfig, changed: set[str]) -> None:
    """A running KVM sandbox: CPU and block I/O through libvirt, live and in the definition.
    Its memory is the guest's RAM, fixed while it runs (no balloon): the next start has it."""
    if "memory" in changed:
        print(f"virt-sandbox-service: note: the memory of KVM sandbox '{dom.name()}' is its "
              "VM's RAM: the new size applies at its next start", file=sys.stderr)
    sched = sched_params(cfg, changed, "global")
    # Live, then the definition (already redefined above; this keeps the two in step). One
    # flag a call: libvirt-python reads the current parameters with the same flags, and
    # libvirt refuses LIVE|CONFIG for that read.
    try:
        for flags in (libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG):
            if sched:
                dom.setSchedulerParametersFlags(sched, flags)
            if "blkio_weight" in changed and cfg.blkio_weight:
                dom.setBlkioParameters({"weight": cfg.blkio_weight}, flags)
    except libvirt.libvirtError as e:
        raise HostError(f"the new limits are saved but could not be applied live: "
                        f"{e.get_error_message()}", "they apply at the next start") from e


def _apply_tuning_live(dom: libvirt.virDomain, old: SandboxConfig, new: SandboxConfig,
                       changed: set[str]) -> None:
    """The tuning controls on a running sandbox, where libvirt changes them live; where it
    cannot for the driver (an LXC sandbox's CPUs), a note: the next start has them."""
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    memory = {k: v // 1024 for k, v in (("soft_limit", new.memory_soft),
                                         ("swap_hard_limit", new.memory_swap))
              if v and f"memory_{k.split('_')[0]}" in changed}
    try:
        if memory:
            dom.setMemoryParameters(memory, live)
        blkio = blkio_live_params(old, new)
        if blkio:
            _blkiotune_live(new.uri, dom.name(), blkio)
            if new.driver is Driver.LXC:
                rt.copy_throttles_live(dom)
        if "numa_nodes" in changed and new.numa_nodes:
            dom.setNumaParameters({"numa_nodeset": new.numa_nodes}, live)
        if "cpuset" in changed and new.cpuset:
            if new.driver is Driver.KVM:
                cpus = cpu_map(new.cpuset)
                lv.pin_cpus(dom, cpus, live)
            else:
                print(f"virt-sandbox-service: note: libvirt pins the CPUs of LXC sandbox "
                      f"'{dom.name()}' when it starts: --cpuset applies at its next start",
                      file=sys.stderr)
    except libvirt.libvirtError as e:
        raise HostError(f"the new limits are saved but could not be applied live: "
                        f"{e.get_error_message()}", "they apply at the next start") from e


def _blkiotune_live(uri: str, name: str, params: dict[str, str]) -> None:
    """Device throttles, live, through virsh: libvirt-python's setBlkioParameters first reads
    every blkio parameter to learn their types, and on a host without BFQ that read fails on
    the device weights ("blkio device weight is valid only for bfq or cfq scheduler", seen
    with libvirt 9.0 LXC), although the throttles work; virsh sends only what it is given."""
    from .util import run

    argv = ["virsh", "-q", "-c", uri, "blkiotune", name, "--live"]
    for key, value in params.items():
        argv += [f"--{key.replace('_', '-')}", value]
    try:
        run(argv)
    except HostError as e:
        raise HostError(f"the new limits are saved but could not be applied live: {e}",
                        "they apply at the next start") from e


def _apply_live(dom: libvirt.virDomain, cfg: SandboxConfig, changed: set[str]) -> None:
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    try:
        if "memory" in changed and cfg.memory:
            dom.setMemoryParameters({"hard_limit": cfg.memory // 1024}, live)
        sched = sched_params(cfg, changed, "vcpu")
        if sched:
            dom.setSchedulerParametersFlags(sched, live)
        if "blkio_weight" in changed and cfg.blkio_weight:
            dom.setBlkioParameters({"weight": cfg.blkio_weight}, live)
        if "tasks" in changed and cfg.tasks:
            from .runtime import lxc

            lxc.set_tasks_live(dom, cfg.tasks)
    except libvirt.libvirtError as e:
        raise HostError(f"the new limits are saved but could not be applied live: "
                        f"{e.get_error_message()}", "they apply at the next start") from e


def addresses(cfg: SandboxConfig, dom: libvirt.virDomain | None) -> list[str]:
    """Static addresses from the config; DHCP leases from libvirt while it runs."""
    out = [f"{a.ip}/{a.prefix}" for n in cfg.networks for a in n.addresses]
    if dom is not None and any(n.dhcp for n in cfg.networks):
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                out += [f"{a['addr']}/{a['prefix']}" for i in lv.lease_addresses(dom).values()
                        for a in i.get("addrs") or []]
    return out


def _network_info(cfg: SandboxConfig, dom: libvirt.virDomain | None) -> Any:
    if not cfg.networks:
        return "none (loopback only, private network namespace)"
    info = []
    for i, spec in enumerate(cfg.networks):
        # A KVM guest's MAC is always fixed (derived unless given): the guest finds it by it.
        mac = guest_mac(cfg.name, i, spec) if cfg.driver is Driver.KVM else spec.mac
        info.append({"interface": f"eth{i}", "network": spec.source, "mac": mac,
                     "dhcp": spec.dhcp,
                     "addresses": [f"{a.ip}/{a.prefix}" for a in spec.addresses],
                     "routes": [f"{r.network}/{r.prefix} via {r.gateway}" for r in spec.routes],
                     "filter": spec.filter, "ports": list(spec.ports)})
    return info


def sandbox_rows(paths: Paths) -> list[dict[str, Any]]:
    conns: dict[str, libvirt.virConnect] = {}
    rows: list[dict[str, Any]] = []
    for name, cfg in scan_configs(paths):
        if isinstance(cfg, UserError):
            print(f"virt-sandbox-service: warning: {cfg.message}", file=sys.stderr)
            rows.append({"name": name, "driver": None, "kind": None, "units": [],
                         "command": [], "state": "damaged", "address": None, "addresses": [],
                         "unit": unit_name(name), **_unit_state(name)})
            continue
        if cfg.uri not in conns:
            conns[cfg.uri] = lv.connect(cfg.uri)
        dom = lv.lookup(conns[cfg.uri], cfg.name)
        rows.append({
            "name": cfg.name,
            "driver": cfg.driver.value,
            "kind": cfg.kind.value,
            "units": list(cfg.units),
            "command": list(cfg.command),
            "state": lv.state_name(dom) if dom is not None else "missing",
            "address": next(iter(addresses(cfg, dom)), None),
            "addresses": addresses(cfg, dom),
            "unit": unit_name(cfg.name),
            **_unit_state(cfg.name),
        })
    return rows


def _unit_state(name: str) -> dict[str, str | None]:
    """The host unit as the host's systemd sees it (null where none runs)."""
    active, enabled = sd.unit_state(unit_name(name))
    return {"unit_active": active, "unit_enabled": enabled}


def format_list(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "DRIVER", "UNITS", "STATE", "HOST UNIT", "ADDRESS")
    table = [header] + [
        (r["name"], r["driver"] or "-", " ".join(r["units"]) or "-- " + " ".join(r["command"]),
         r["state"], ",".join(filter(None, (r["unit_active"], r["unit_enabled"]))) or "-",
         r["address"] or "-")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def inspect_data(paths: Paths, name: str) -> dict[str, Any]:
    cfg = load_config(paths, name)
    conn = lv.connect(cfg.uri)
    dom = lv.lookup(conn, name)
    record: dict[str, Any] = {}
    # The record is informative: a sandbox whose record is gone is still inspectable.
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((Path(cfg.state_dir) / EVIDENCE_FILE).read_text())
    facts_selinux = host.selinux_enabled()
    return {
        "name": cfg.name,
        "kind": cfg.kind.value,
        "driver": cfg.driver.value,
        "uri": cfg.uri,
        "units": list(cfg.units),
        "command": list(cfg.command),
        "user": None if cfg.uid is None else {"uid": cfg.uid, "gid": cfg.gid,
                                              "name": cfg.username, "home": cfg.homedir},
        "state": lv.state_name(dom) if dom is not None else "missing",
        "paths": {
            "config": str(paths.config_file(name)),
            "state": cfg.state_dir,
            "unit": str(paths.unit_dir / unit_name(name)),
            "journal": common.journal_dir(cfg),
        },
        "graphics": _graphics_info(cfg, dom),
        "image": None if cfg.image_size is None else {
            "path": image.image_path(cfg.state_dir), "size_bytes": cfg.image_size,
            **image.usage(image.image_path(cfg.state_dir))},
        "hostname": cfg.name,
        "origin": dict(cfg.extra),
        "machine_id": cfg.machine_id,
        "security": {
            "mode": cfg.security_mode.value,
            "label": cfg.security_label,
            "enforced": facts_selinux,
            "note": None if facts_selinux else "this host has no SELinux: the label is "
                    "recorded and shown, but not applied",
        },
        "network": _network_info(cfg, dom),
        "limits": {"memory_bytes": cfg.memory, "cpu_weight": cfg.cpu_weight,
                   "cpu_quota_percent": cfg.cpu_quota, "blkio_weight": cfg.blkio_weight,
                   "tasks": cfg.tasks},
        "capabilities": _caps(cfg),
        "layers": layers.live(_running_init(cfg, dom), cfg),
        "user_namespace": None if cfg.id_base is None else {
            "host_id_start": cfg.id_base, "count": IDMAP_COUNT},
        "network_filters": sorted({n.filter for n in cfg.networks
                                   if n.filter}),
        "devices": [{"path": d.path, "kind": d.kind} for d in map(devices.parse, cfg.devices)],
        "etc": _etc_info(cfg),
        "read_only": [seen_at(m["target"]) for m in record.get("mounts", [])
                      if m.get("readonly")],
        "mounts": record.get("mounts", []),
        "private": [e for e in record.get("evidence", []) if e["access"] != "shared"],
        "shared": [{"path": "/", "access": "shared", "dir": True,
                    "reasons": ["the host's root filesystem, read-only"]}]
        + [e for e in record.get("evidence", []) if e["access"] == "shared"],
        "hidden": record.get("hidden", []),
        # What `learn` saw the service open that the sandbox lacks (not evidence yet).
        "learned": record.get("learned", []),
    }


def _etc_info(cfg: SandboxConfig) -> dict[str, Any]:
    own = os.path.join(cfg.state_dir, "etc")
    if cfg.etc_overlay:
        return {"layout": "overlay", "own": own, "lower": "/etc",
                "note": "the host's /etc as it is now, below the instance's own files "
                        "(its service's configuration, identity, systemd setup, and "
                        "whiteouts hiding the host's secrets); what the sandbox changes "
                        "lands in the upper layer"}
    return {"layout": "copy", "own": own, "lower": None,
            "note": "a trimmed copy of the host's /etc as it was at create, without its secrets"}


def _caps(cfg: SandboxConfig) -> dict[str, Any]:
    """From the config: for LXC, what every process of the sandbox keeps once its init has
    confined it (confine.py; the live sets are under `layers`); for KVM, the drops the guest
    applies."""
    if cfg.driver is Driver.LXC:
        kept = init_caps(cfg)
        return {"dropped": [c for c in CAP_NUMBERS if c not in kept], "kept": list(kept),
                "source": "config: every process of the sandbox after its init (its systemd, "
                          "the confined units, the command, execute and connect)"}
    # A VM has a kernel of its own: libvirt's LXC capabilities do not apply; the guest drops
    # these from the bounding sets (see initrd/init).
    return {"dropped": list(cfg.caps_drop), "kept": list(effective_caps(cfg)),
            "source": "config, applied inside the guest: bounding set of " +
                      ("the confined units, the guest agent (execute) and the console "
                       "(connect); the guest's systemd keeps them"
                       if cfg.kind is Kind.SERVICE else
                       "the command, the guest agent (execute) and the console (connect)")}


def _running_init(cfg: SandboxConfig, dom: libvirt.virDomain | None) -> int | None:
    """The host PID of a running LXC sandbox's PID 1; None otherwise."""
    if dom is None or cfg.driver is not Driver.LXC:
        return None
    with contextlib.suppress(OSError, libvirt.libvirtError):
        if dom.isActive():
            return init_pid(dom)
    return None


def _userns_text(userns: dict[str, int] | None) -> str:
    if not userns:
        return "none (root inside is root on the host)"
    start, count = userns["host_id_start"], userns["count"]
    return f"root inside is host uid/gid {start} (ids {start}..{start + count - 1})"


def _security_summary(d: dict[str, Any]) -> list[str]:
    """The effective sandbox, as an admin would audit it."""
    lim = d["limits"]
    limits = ", ".join(f"{k}={v}" for k, v in lim.items() if v) or "none set"
    return [
        "security:",
        f"  label:        {d['security']['label']} ({d['security']['mode']}"
        + ("" if d["security"]["enforced"] else "; not enforced: host has no SELinux") + ")",
        f"  user ns:      {_userns_text(d['user_namespace'])}",
        f"  caps dropped: {' '.join(d['capabilities']['dropped']) or 'none'}",
        f"  caps source:  {d['capabilities']['source']}",
        f"  caps kept:    {' '.join(d['capabilities']['kept'])}",
        f"  limits:       {limits}",
        f"  net filters:  {' '.join(d['network_filters']) or 'none'}",
        f"  devices:      {' '.join(x['path'] for x in d['devices']) or 'none of the host'}",
        f"  read-only:    {' '.join(d['read_only'])}",
    ]


def _network_text(net: Any) -> str:
    if isinstance(net, str):
        return net
    return "; ".join(
        f"{n['interface']} on {n['network']}: "
        + (" ".join(n["addresses"]) or ("dhcp" if n["dhcp"] else "no address"))
        + (f", filter {n['filter']} ports {','.join(map(str, n['ports']))}" if n["filter"]
           else "")
        for n in net)


def _graphics_info(cfg: SandboxConfig, dom: libvirt.virDomain | None) -> dict[str, Any] | None:
    """create --graphics: the display, and while it runs the address libvirt gave it (its
    port is chosen at each start: read from the live domain)."""
    if cfg.graphics is None:
        return None
    from .graphics import display_uri

    address = None
    if dom is not None and lv.is_active(dom):
        with contextlib.suppress(libvirt.libvirtError):
            address = display_uri(dom.XMLDesc(0))
    return {"type": cfg.graphics.value, "listen": cfg.graphics_listen, "address": address}


def _graphics_line(g: dict[str, Any] | None) -> list[str]:
    if g is None:
        return []
    return [f"display:     {g['type']} on {g['listen']}: "
            f"{g['address'] or 'its port is chosen at start'}"]


def _image_line(img: dict[str, Any] | None) -> list[str]:
    if img is None:
        return []
    def mib(n: int | None) -> str:
        return "?" if n is None else f"{n / 1024**2:.1f} MiB"
    return [f"image:       {img['path']}: the private /etc and /var, "
            f"{mib(img['used_bytes'])} used of {mib(img['size_bytes'])} "
            f"({mib(img['allocated_bytes'])} allocated on the host)"]


def _user_line(user: dict[str, Any] | None) -> list[str]:
    if user is None:
        return []
    return [f"user:        {user['name']} (uid {user['uid']}, gid {user['gid']}), "
            f"home {user['home']}"]


def format_inspect(d: dict[str, Any]) -> str:
    lines = [
        f"name:        {d['name']}",
        f"kind:        {d['kind']} ({' '.join(d['units']) or ' '.join(d['command'])})",
        f"driver:      {d['driver']} ({d['uri']})",
        f"state:       {d['state']}",
        *_user_line(d["user"]),
        *_image_line(d["image"]),
        *_graphics_line(d["graphics"]),
        f"etc:         {d['etc']['layout']}: {d['etc']['note']} ({d['etc']['own']})",
        f"hostname:    {d['hostname']}",
        f"machine-id:  {d['machine_id']}",
        f"network:     {_network_text(d['network'])}",
    ]
    lines += _security_summary(d)
    lines += layers.format_live(d["layers"])
    lines += [f"{k + ':':12} {v}" for k, v in d["paths"].items()]
    if d["origin"].get("cloned_from"):
        lines.append(f"cloned from: {d['origin']['cloned_from']} "
                     f"({d['origin'].get('copy', 'copy')})")
    lines.append("mounts:")
    for m in d["mounts"]:
        src = "tmpfs" if m["tmpfs_kib"] else m["source"]
        ro = " (read-only)" if m["readonly"] else ""
        lines.append(f"  {m['target']:<24} <- {src}{ro}")
    for title in ("private", "shared", "hidden"):
        lines.append(f"{title}:")
        for e in d[title]:
            lines.append(f"  {e['path']:<40} {e['access']:<8} {'; '.join(e['reasons'])}")
    if d.get("learned"):
        lines.append("learned (opened by the service, missing here: 'learn --add NAME', or "
                     "create again with --private):")
        lines += [f"  {e['path']:<40} {'; '.join(e['reasons'])}" for e in d["learned"]]
    return "\n".join(lines)
