"""The one planner: a frozen config, the host's facts and what the caller read or allocated
for it (Inputs) -> the whole Plan: file operations, mounts, init, the libvirt domain's XML
and the host unit. Pure: reads nothing, writes nothing, makes up nothing (the machine-id,
label and id range are in the config; the tool's path and the conffiles' baseline in Inputs).

Every command that makes or compares a sandbox goes through `build`:
- create (a new sandbox), upgrade and limit (reconcile.py: what this version would make of a
  config, compared with what is in place);
- clone (a new identity over a copy of the source's private trees: CloneSource);
- run (a transient sandbox: no state, no config, no unit; its init comes from the runtime).
plan.py lays out the files and mounts of a sandbox with state; this module adds what is
generated from them. Its heavier imports wait for a plan with state, so that `run` imports
only what a transient sandbox needs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from .config import Driver, Paths, SandboxConfig
from .pathevidence import PathEvidence
from .plantypes import EVIDENCE_FILE, TMPFS, FileOp, Mount, Plan, WriteFile

if TYPE_CHECKING:  # host.py is not imported at run time for a transient plan
    from .graphics import Graphics
    from .host import HostFacts

# Files of a source's /etc that carry its identity: rewritten for a clone.
IDENTITY = ("hostname", "machine-id", "hosts")


@dataclass(frozen=True)
class UnitSource:
    """A confined unit as the planner needs it (unitfile.load_unit read it)."""

    name: str
    fragment: str  # its file as the sandbox's systemd finds it
    generated: str | None = None  # the sysv generator's text, for a unit with no file
    source: str = ""  # what that was made from (the init script)


@dataclass(frozen=True)
class CloneSource:
    """The sandbox a clone copies: its config, and what its state directory holds."""

    config: SandboxConfig
    trees: tuple[str, ...]  # which of etc, var, paths, home it has
    journal: tuple[str, ...] = ()  # its journal's directories: its history, not copied


@dataclass(frozen=True)
class Inputs:
    """What the caller read from the host, or chose, for the planner."""

    evidence: tuple[PathEvidence, ...] = ()
    hidden: tuple[PathEvidence, ...] = ()
    units: tuple[UnitSource, ...] = ()
    # (unit, capability) pairs a unit asks for that the sandbox does not give (capneeds.py).
    unit_needs: tuple[tuple[str, str], ...] = ()
    # The md5 of each conffile the host has now (conffiles.baseline), for evidence.json.
    conffiles: tuple[tuple[str, str | None], ...] = ()
    # Where the config, run directory and host unit go; None: a transient sandbox.
    paths: Paths | None = None
    tool: str = ""  # the command the host unit runs (create.tool_path)
    clone_of: CloneSource | None = None
    # A transient sandbox's init and its environment (runtime/oneshot.py composes them).
    init: tuple[str, ...] = ()
    init_env: tuple[tuple[str, str], ...] = field(default=())
    run_dir: str = ""  # a transient KVM sandbox's channel directory
    session: bool = False  # a normal user's run through qemu:///session (runtime/session.py)
    graphics: Graphics | None = None  # run --graphics: a display (graphics.py)


def build(config: SandboxConfig, facts: HostFacts, inputs: Inputs) -> Plan:
    """The whole plan of `config`."""
    if inputs.paths is None:
        return transient(config, facts, inputs)
    from .plan import plan

    paths = inputs.paths
    p = plan(config, facts, inputs.evidence, inputs.hidden, str(paths.config_file(config.name)),
             str(paths.run_dir / config.name), tuple((u.name, u.fragment) for u in inputs.units),
             inputs.unit_needs)
    if inputs.clone_of is not None:
        ops = clone_files(p, facts, inputs.clone_of)
        why = "why each path is private, hidden or shared (from the source)"
    else:
        ops = [*p.files, *_generated_units(config, inputs.units)]
        why = "why each path is private, hidden or shared"
    record = WriteFile(os.path.join(config.state_dir, EVIDENCE_FILE),
                       evidence_json(p, dict(inputs.conffiles)), reason=why)
    p = replace(p, files=(*ops, record))
    return _generated(p, facts, paths, inputs.tool)


def _generated_units(config: SandboxConfig, units: tuple[UnitSource, ...]) -> list[FileOp]:
    """A unit made by systemd's sysv generator has no file on the host: one in its /etc."""
    from .plan import state_path

    return [WriteFile(state_path(config.state_dir, u.fragment, "/etc"), u.generated,
                      reason=f"{u.name}: made by systemd's sysv generator from {u.source}",
                      managed=True)
            for u in units if u.generated is not None]


def _generated(p: Plan, facts: HostFacts, paths: Paths, tool: str) -> Plan:
    """The plan's generated texts: its libvirt domain and its host unit."""
    from .domain import domain_xml
    from .units import render_sandbox_unit, unit_name

    return replace(p, domain_xml=domain_xml(p, facts),
                   unit_files=((str(paths.unit_dir / unit_name(p.config.name)),
                                render_sandbox_unit(p.config, tool, paths)),))


def evidence_json(p: Plan, conffiles: dict[str, str | None]) -> str:
    def item(e: PathEvidence) -> dict[str, object]:
        return {"path": e.path, "access": e.access.value, "dir": e.is_dir,
                "reasons": list(e.reasons)}
    data = {"evidence": [item(e) for e in p.evidence], "hidden": [item(e) for e in p.hidden],
            "mounts": [asdict(m) for m in p.mounts],
            # What the instance's conffiles were when copied: `upgrade` tells edits by it.
            "conffiles": conffiles}
    return json.dumps(data, indent=2) + "\n"


def clone_files(p: Plan, facts: HostFacts, src: CloneSource) -> list[FileOp]:
    """A clone's files: the new sandbox's own skeleton (its state directory, marker, overlay
    work directory and loader files, made as for a new one), the source's private trees
    copied over it, then its identity, written last over the copied one."""
    from . import image
    from .plan import _identity_ops, _loader_ops
    from .plantypes import ETC_WORK, MARKER, CopyTree, MakeDir, MakeImage, managed

    cfg, state = p.config, p.config.state_dir
    how = dict(cfg.extra).get("copy", "full copy")
    ops: list[FileOp] = [
        MakeDir(state, 0o700, reason="the sandbox's state directory"),
        WriteFile(os.path.join(state, MARKER), f"{cfg.name}\n", 0o644,
                  reason="marks the directory as made by virt-sandbox-service (delete checks it)"),
    ]
    if src.config.image_size is not None:
        ops.append(MakeDir(os.path.join(state, "etc"), 0o755, reason="staging"))
    if cfg.etc_overlay:
        ops += managed([MakeDir(os.path.join(state, ETC_WORK), 0o700,
                                reason="the overlay's work directory (same file system as "
                                "the upper layer)")])
    ops += _loader_ops(cfg, facts)
    ops += [CopyTree(os.path.join(src.config.state_dir, tree), os.path.join(state, tree),
                     src.journal, reason=f"{src.config.name}'s private {tree} ({how})")
            for tree in src.trees]
    ops += [op for op in _identity_ops(cfg, os.path.join(state, "etc"))
            if isinstance(op, WriteFile) and os.path.basename(op.path) in IDENTITY]
    if src.config.image_size is not None:  # copy the image, then write the identity into it
        ops.append(MakeImage(image.image_path(state), src.config.image_size,
                             source=image.image_path(src.config.state_dir),
                             drop=("var/log/journal",),
                             reason=f"{src.config.name}'s image (sparse copy), its journal "
                             "emptied"))
    return ops


def transient(config: SandboxConfig, facts: HostFacts, inputs: Inputs) -> Plan:
    """What a one-shot sandbox sees: the host's root read-only, private tmpfs, and the -m
    mounts it was given; its domain, started and gone with its command."""
    from .initscript import confine_mount
    from .mounts import user_mounts

    mounts = (Mount("/", "/", readonly=True, reason="the host's root filesystem, read-only"),
              *(Mount(t, "", tmpfs_kib=k, reason="private tmpfs") for t, k in TMPFS),
              *((confine_mount(facts),) if config.driver is Driver.LXC else ()),
              *(user_mounts(config) if config.mounts else ()))
    p = Plan(config=config, config_path="", state_dir="", run_dir=inputs.run_dir, evidence=(),
             hidden=(), mounts=mounts, files=(), init=inputs.init, init_env=inputs.init_env)
    from .domain import METADATA_NS

    if config.driver is Driver.LXC:
        from .domain import lxc

        return replace(p, domain_xml=lxc.build(p, facts, METADATA_NS))
    from .domain import kvm

    return replace(p, domain_xml=kvm.build_run(p, facts, METADATA_NS, inputs.run_dir,
                                               os.path.join(inputs.run_dir, "console.log"),
                                               session=inputs.session,
                                               graphics=inputs.graphics))

