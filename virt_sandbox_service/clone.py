"""clone: a new sandbox from an existing one, with its own identity.

The new instance gets the source's private content (copied with reflinks where the filesystem
can, else in full), and a new name, hostname, machine-id, MCS label, domain and unit. The
source is only read. Its journal is not copied: it is the source's history, not the clone's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import conffiles, host, hostsources, image, planner, registry
from .apply import files
from .apply import libvirt as lv
from .apply.txn import Transaction
from .config import (
    Driver,
    Paths,
    SandboxConfig,
    SecurityMode,
    all_configs,
    driver_for_uri,
    load_config,
    new_machine_id,
    validate_dir_path,
    validate_name,
)
from .errors import UserError
from .pathevidence import Access, PathEvidence
from .plan import EVIDENCE_FILE, Plan
from .provision import apply_plan, check_free, reserve, tool_path


@dataclass(frozen=True)
class CloneRequest:
    source: str
    dest: str
    state_parent: str | None = None
    security: str | None = None


def load_evidence(cfg: SandboxConfig) -> tuple[tuple[PathEvidence, ...], tuple[PathEvidence, ...]]:
    """The source's recorded evidence (why each path is private) becomes the clone's."""
    path = Path(cfg.state_dir) / EVIDENCE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}",
                        "the source sandbox's state is damaged; recreate it") from None

    def items(key: str) -> tuple[PathEvidence, ...]:
        return tuple(PathEvidence(e["path"], Access(e["access"]), e["dir"], tuple(e["reasons"]))
                     for e in data.get(key, []))
    return items("evidence"), items("hidden")


def journal_dirs(cfg: SandboxConfig) -> tuple[str, ...]:
    journal = Path(cfg.state_dir) / "var" / "log" / "journal"
    if not journal.is_dir():
        return ()
    return tuple(str(p) for p in journal.iterdir())


def clone_config(src: SandboxConfig, req: CloneRequest, paths: Paths,
                 security: tuple[SecurityMode, str | None]) -> SandboxConfig:
    """Same sandbox, new identity (caller holds the config lock for label and id range);
    `security`: -s, parsed."""
    mode, label = security[0], registry.choose_label(paths, src.uri, security)
    parent = Path(req.state_parent) if req.state_parent else Path(src.state_dir).parent
    extra = dict(src.extra)
    extra.update({"cloned_from": src.name,
                  "copy": "reflink" if files.can_reflink(Path(src.state_dir))
                  else "sparse copy" if src.image_size is not None else "full copy"})
    return dataclasses.replace(
        src, name=req.dest, state_dir=str(parent / req.dest), security_mode=mode,
        security_label=label, machine_id=new_machine_id(),
        id_base=registry.choose_id_base(paths) if src.id_base is not None else None,
        extra=tuple(sorted(extra.items())))


def clone_plan(src: SandboxConfig, cfg: SandboxConfig, paths: Paths,
               facts: host.HostFacts) -> Plan:
    """The clone's plan (planner.build): the source's evidence and trees, read here."""
    evidence, hidden = load_evidence(src)
    trees = tuple(t for t in ("etc", "var", "paths", "home")
                  if os.path.isdir(os.path.join(src.state_dir, t)))
    return planner.build(cfg, facts, planner.Inputs(
        evidence=evidence, hidden=hidden, conffiles=tuple(conffiles.baseline(evidence).items()),
        paths=paths, tool=tool_path(),
        clone_of=planner.CloneSource(src, trees, journal_dirs(src))))


def clone(req: CloneRequest, paths: Paths) -> Plan:
    validate_name(req.dest)
    if req.state_parent is not None:
        validate_dir_path(req.state_parent, "-p path")
    security = registry.security_option(req.security)
    src = load_config(paths, req.source)
    facts = host.detect()
    conn = lv.connect(src.uri)
    facts = dataclasses.replace(facts, secmodels=host.libvirt_secmodels(conn))
    src_dom = lv.lookup(conn, src.name)
    if src_dom is None:
        raise UserError(f"sandbox '{src.name}' has no libvirt domain", "nothing to clone from")
    parent = Path(req.state_parent) if req.state_parent else Path(src.state_dir).parent
    if src.image_size is not None:
        image.refuse_running(src.name, bool(src_dom.isActive()), "clone")
        if driver_for_uri(src.uri) is Driver.LXC:  # KVM: qemu opens it, no loop device
            image.check_image_path(str(parent / req.dest))
    check_free(req.dest, (), paths, parent / req.dest, conn)
    with Transaction() as txn:
        with registry.config_lock(paths):
            check_free(req.dest, (), paths, parent / req.dest, conn)
            cfg = clone_config(src, req, paths, security)
            hostsources.check_among(cfg, all_configs(paths), paths)
            p = clone_plan(src, cfg, paths, facts)
            reserve(p, txn)
        apply_plan(p, conn, txn)
    return p
