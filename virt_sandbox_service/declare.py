"""apply: converge the host to sandbox files (sandboxfile.py), one file at a time.

For each file: it is read and every value checked (FILE:LINE on error) before anything
changes; then
- no sandbox of that name: it is made by `create` itself (the same request the CLI builds),
  and its config remembers the file (`extra` sandbox_file), which is what --prune goes by;
- a sandbox of that name: the config the file asks for is built by create's own
  build_config, with the sandbox's identity (machine-id, label, id range) kept, and compared
  with its config. What can change in place (limits, capabilities, system calls, mounts,
  networks, a generic sandbox's command) is written to the config and the sandbox is
  reconciled to it (reconcile.py, as `upgrade` and `limit` do: domain, init, host unit and
  the tool's files, in one Transaction with the config write); what cannot (its units, URI,
  state path, private data choices, identity) is refused with the way out. With nothing
  changed the definitions are still reconciled, so an apply also converges after a tool
  upgrade or a hand edit of the host unit; a second apply then changes nothing and says so.
A failing file is reported on one line and does not stop the others; the exit status is the
worst of them (2 bad input, 1 host failure), else 3 with --check when anything would change.
Sandboxes are deleted only with --prune: those made from a file in a given directory (or a
given file) that is no longer there. Never a sandbox made by `create` by hand.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from . import sandboxfile
from .config import Driver, Paths, SandboxConfig, all_configs, load_config
from .create import Checked, CreateRequest
from .errors import SandboxError, UserError
from .reconcile import Outcome

SOURCE = "sandbox_file"  # the config's `extra` key naming the file a sandbox was made from
CHECK_DRIFT = 3
# Config fields only a new create can change: its identity, what its trees were made from,
# where they are. Every other field (limits, capabilities, system calls, mounts, networks, a
# generic sandbox's command; and a tunable added later) is in the definitions a reconcile
# re-derives (domain, init, host unit), so it changes in place.
FIXED = frozenset({"name", "kind", "uri", "state_dir", "units", "packages", "private", "shared",
                   "copy", "security_mode", "security_label", "machine_id", "id_base", "uid",
                   "gid", "username", "homedir", "image_size", "etc_overlay",
                   "format_version"})
# The limits `limit` changes live in a running sandbox (manage.py); apply does the same.
LIVE_LIMITS = frozenset({"memory", "cpu_weight", "cpu_quota", "blkio_weight", "tasks"})
# A config field -> the file's key, for messages.
FIELD_KEYS = {"units": "Unit", "kind": "Unit", "uri": "Connect", "state_dir": "Path",
              "copy": "Copy", "packages": "Package", "private": "Private", "shared": "Shared",
              "security_mode": "Security", "security_label": "Security",
              "id_base": "UserNamespace", "uid": "User", "gid": "Group",
              "username": "UserName", "homedir": "HomeDir", "image_size": "ImageSize",
              "etc_overlay": "Etc", "memory": "Memory", "cpu_weight": "CPUWeight",
              "cpu_quota": "CPUQuota", "blkio_weight": "BlockIOWeight", "tasks": "Tasks",
              "memory_soft": "MemorySoft", "memory_swap": "MemorySwap", "cpuset": "CPUSet",
              "numa_nodes": "NUMANodes", "io_throttle": "DeviceReadBps=/DeviceWriteBps",
              "caps_drop": "CapabilityDrop", "caps_add": "CapabilityAdd",
              "syscalls_allow": "SyscallAllow", "devices": "Device", "mounts": "Mount",
              "networks": "Network", "graphics": "Graphics",
              "graphics_listen": "GraphicsListen", "command": "Exec"}


@dataclass
class Result:
    name: str
    lines: list[str] = field(default_factory=list)
    changed: bool = False
    error: SandboxError | None = None


def read(path: Path) -> tuple[sandboxfile.SandboxFile, CreateRequest, Checked]:
    """The file, every value checked on its line, as create's request (checked as create
    checks it). Reads only."""
    from . import create
    from .cli import create_request

    sf = sandboxfile.parse(path)
    sandboxfile.check_values(sf)
    try:
        req = create_request(sandboxfile.namespace(sf))
        checked = create.validate(req)
    except UserError as e:
        raise UserError(f"{path}: {e.message}", e.hint) from None
    return sf, req, checked


def wanted_config(req: CreateRequest, checked: Checked, have: SandboxConfig, paths: Paths,
                  source: str) -> SandboxConfig:
    """The config create would make of `req` (`checked`: its parsed values), with the
    identity `have` already holds."""
    from . import create, unitfile

    units = [unitfile.load_unit(unitfile.resolve_unit_name(u, req.name), hostname=req.name,
                                machine_id=have.machine_id) for u in req.units]
    overlay = have.etc_overlay if req.etc is None else req.etc == "overlay"
    cfg = create.build_config(req, checked, paths, units,
                              checked.security[1] or have.security_label, overlay,
                              have.machine_id)
    extra = (*(kv for kv in have.extra if kv[0] != SOURCE), (SOURCE, source))
    return dataclasses.replace(
        cfg, id_base=have.id_base if cfg.id_base is not None else None, extra=extra,
        format_version=have.format_version)


def changes(have: SandboxConfig, want: SandboxConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(SandboxConfig)
            if getattr(have, f.name) != getattr(want, f.name)]


def apply_file(paths: Paths, path: Path, *, check: bool) -> Result:
    sf, req, checked = read(path)
    source = str(path.resolve())
    res = Result(sf.name)
    if not paths.config_file(sf.name).exists():
        res.changed = True
        if check:
            res.lines.append(f"{sf.name}: would be created from {path}")
            return res
        _create(paths, req, checked, source)
        res.lines.append(f"{sf.name}: created from {path}")
        return res
    have = load_config(paths, sf.name)
    want = wanted_config(req, checked, have, paths, source)
    diff = changes(have, want)
    fixed = [f for f in diff if f in FIXED]
    if fixed:
        keys = ", ".join(sorted({FIELD_KEYS.get(f, f) + "=" for f in fixed}))
        raise UserError(f"{path}: sandbox '{sf.name}' differs in {keys}, which cannot change "
                        "in place",
                        f"delete it (virt-sandbox-service delete {sf.name}) and apply again, "
                        "or set the file back")
    verb = "would change" if check else "changed"
    for f in diff:
        if f == "extra":  # made by hand (or from another file): from now on, this file's
            res.lines.append(f"{sf.name}: {'would be' if check else 'now'} managed from {path}")
            continue
        res.lines.append(f"{sf.name}: {verb} {FIELD_KEYS.get(f, f)}: "
                         f"{_shown(getattr(have, f))} -> {_shown(getattr(want, f))}")
    outcome, live = _converge(paths, have, want, check=check)
    res.changed = bool(diff or outcome.differences)
    if outcome.differences:
        from .reconcile import format_outcome

        res.lines += [line for line in format_outcome(sf.name, outcome)
                      if "upgrade" not in line]  # its hint is upgrade's; apply's is apply
    elif diff and outcome.running and not check:
        from .reconcile import next_start

        res.lines.append(next_start(sf.name))
    if live:
        res.lines.append(f"{sf.name}: applied live: "
                         + ", ".join(FIELD_KEYS[f] for f in sorted(live)))
    if not res.changed:
        res.lines.append(f"{sf.name}: unchanged ({path})")
    return res


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        # mounts and networks: their canonical -m/-N text
        return " ".join(getattr(v, "text", str(v)) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _create(paths: Paths, req: CreateRequest, checked: Checked, source: str) -> None:
    """create, then the file it came from recorded in its config (under the lock)."""
    from .apply.files import write_file
    from .create import config_lock, create

    create(req, paths, checked=checked)
    with config_lock(paths):
        cfg = load_config(paths, req.name)
        cfg = dataclasses.replace(cfg, extra=(*cfg.extra, (SOURCE, source)))
        write_file(paths.config_file(req.name), cfg.to_json(), 0o644)


def _converge(paths: Paths, have: SandboxConfig, want: SandboxConfig, *, check: bool
              ) -> tuple[Outcome, set[str]]:
    """Write `want` (if it differs) and reconcile the sandbox to it, in one Transaction;
    then a running sandbox's changed limits live. The limits applied live come back too."""
    from . import create, reconcile
    from .apply import libvirt as lv
    from .apply.txn import Transaction

    conn = lv.connect(have.uri)
    if want.networks != have.networks:
        create.check_networks(conn, want.networks)
    facts = reconcile.host_facts(conn)
    evidence, hidden = reconcile.recorded_evidence(have)
    units = reconcile.units_of(have)
    p = reconcile.desired(want, paths, facts, evidence, hidden, units)
    dom = lv.lookup(conn, have.name)
    running = dom is not None and bool(dom.isActive())
    with create.config_lock(paths), reconcile.private_trees(have, running) as trees, \
            Transaction() as txn:
        if not check and want != have:
            create.ensure_our_filter(conn, want.networks)
            reconcile.write_undoable(paths.config_file(have.name), want.to_json(), txn)
        outcome = reconcile.reconcile(paths, want, conn, p, trees=trees, check=check, txn=txn)
    live = _limits_live(dom, have, want) if running and not check and dom else set()
    return outcome, live


def _limits_live(dom: libvirt.virDomain, have: SandboxConfig, want: SandboxConfig
                 ) -> set[str]:
    """A running sandbox's changed limits, live where libvirt can, as `limit` applies them
    (the rest of the new definition waits for its next start)."""
    from . import manage

    changed = set(changes(have, want)) & LIVE_LIMITS
    if changed:
        live = manage._apply_live_kvm if want.driver is Driver.KVM else manage._apply_live
        live(dom, want, changed)
    return changed


def prune_absent(paths: Paths, given: list[Path], *, check: bool) -> list[Result]:
    """Sandboxes made from a file in a given directory (or a given file) that is gone."""
    from .manage import delete

    dirs = {p.resolve() for p in given if p.is_dir()}
    named = {p.resolve() for p in given if not p.is_dir()}
    out = []
    for cfg in all_configs(paths):
        source = dict(cfg.extra).get(SOURCE)
        if source is None or Path(source).exists():
            continue
        if Path(source).parent not in dirs and Path(source) not in named:
            continue
        res = Result(cfg.name, changed=True)
        try:
            if not check:
                delete(paths, cfg.name, force=True)
            res.lines.append(f"{cfg.name}: {'would be deleted' if check else 'deleted'} "
                             f"({source} is gone)")
        except SandboxError as e:
            res.error = e
        out.append(res)
    return out


def command(paths: Paths, given: list[str], *, check: bool, prune: bool) -> int:
    """The CLI's apply: each file on its own; the worst exit status, else 3 for --check when
    anything would change, else 0."""
    targets = [Path(p) for p in given] or [paths.sandbox_files_dir]
    missing = [p for p in targets if not p.exists() and p != paths.sandbox_files_dir]
    if missing:
        raise UserError(f"{missing[0]}: no such file or directory",
                        f"give sandbox files (NAME{sandboxfile.SUFFIX}) or directories of them")
    results = []
    seen: dict[str, Path] = {}
    for path in sandboxfile.find([p for p in targets if p.exists()]):
        try:
            _check_twice(seen, path)
            results.append(apply_file(paths, path, check=check))
        except SandboxError as e:
            results.append(Result(path.stem, error=_named(e, path)))
        _show(results[-1])
    if prune:
        results += [_show(r) for r in prune_absent(paths, targets, check=check)]
    if not results:
        print(f"no sandbox files in {', '.join(map(str, targets))}")
    errors = [r.error.exit_status for r in results if r.error is not None]
    if errors:
        return max(errors)
    return CHECK_DRIFT if check and any(r.changed for r in results) else 0


def _named(e: SandboxError, path: Path) -> SandboxError:
    """The error, naming the file it came from (one line each when several files fail)."""
    if e.message.startswith(str(path)):
        return e
    return type(e)(f"{path}: {e.message}", e.hint)


def _show(r: Result) -> Result:
    for line in r.lines:
        print(line, flush=True)
    if r.error is not None:
        print(f"virt-sandbox-service: error: {r.error.message}", file=sys.stderr)
        if r.error.hint:
            print(f"virt-sandbox-service: hint: {r.error.hint}", file=sys.stderr)
    return r


def _check_twice(seen: dict[str, Path], path: Path) -> None:
    name = path.stem
    if name in seen and seen[name].resolve() != path.resolve():
        raise UserError(f"{path}: sandbox '{name}' is also described by {seen[name]}",
                        "keep one file per sandbox")
    seen[name] = path
