"""--dry-run: the plan as text, each step with its reason."""

from __future__ import annotations

import json
from typing import Any

from .evidence import PathEvidence
from .plan import (
    AddUser,
    CopyTree,
    MakeDir,
    MakeImage,
    Opaque,
    Plan,
    Symlink,
    Whiteout,
    WriteFile,
)


def format_plan(p: Plan) -> str:
    out = [f"# plan for sandbox {p.config.name} (nothing was changed)", "", "## config",
           f"# {p.config_path}", p.config.to_json().rstrip(), "", "## files"]
    for op in p.files:
        if isinstance(op, MakeDir):
            out.append(f"mkdir   {op.path} {op.mode:04o} {op.uid}:{op.gid}  # {op.reason}")
        elif isinstance(op, WriteFile):
            out.append(f"write   {op.path} {op.mode:04o}  # {op.reason}")
        elif isinstance(op, Symlink):
            out.append(f"symlink {op.path} -> {op.target}  # {op.reason}")
        elif isinstance(op, CopyTree):
            out.append(f"copy    {op.src} -> {op.dst}  # {op.reason}")
            out += [f"          without {x}" for x in op.exclude]
        elif isinstance(op, MakeImage):
            out.append(f"image   {op.path} {op.size} bytes"
                       + (f" from {op.source}" if op.source else "") + f"  # {op.reason}")
        elif isinstance(op, Whiteout):
            out.append(f"hide    {op.hides} (whiteout {op.path})  # {op.reason}")
        elif isinstance(op, Opaque):
            out.append(f"opaque  {op.path}  # {op.reason}")
        elif isinstance(op, AddUser):
            out.append(f"user    {op.name} {op.uid}:{op.gid} home {op.home} in {op.path}"
                       f"  # {op.reason}")
    out += ["", "## mounts"]
    for m in p.mounts:
        src = f"tmpfs {m.tmpfs_kib} KiB" if m.tmpfs_kib else m.source
        out.append(f"{m.target} <- {src}{' (read-only)' if m.readonly else ''}  # {m.reason}")
    out += ["", "## libvirt domain", p.domain_xml.rstrip()]
    for path, text in p.unit_files:
        out += ["", f"## host unit {path}", text.rstrip()]
    return "\n".join(out)


def plan_json(p: Plan) -> dict[str, Any]:
    """--dry-run --json: the plan as one object (schema: the man page's JSON OUTPUT)."""
    return {
        "name": p.config.name,
        "config_path": p.config_path,
        "config": json.loads(p.config.to_json()),
        "state_dir": p.state_dir,
        "evidence": [_evidence(e) for e in p.evidence],
        "hidden": [_evidence(e) for e in p.hidden],
        "files": [_file_op(op) for op in p.files],
        "mounts": [{"target": m.target, "source": m.source or None, "readonly": m.readonly,
                    "tmpfs_kib": m.tmpfs_kib or None, "reason": m.reason} for m in p.mounts],
        "domain_xml": p.domain_xml,
        "unit_files": [{"path": path, "text": text} for path, text in p.unit_files],
    }


def _evidence(e: PathEvidence) -> dict[str, Any]:
    return {"path": e.path, "access": e.access.value, "is_dir": e.is_dir,
            "reasons": list(e.reasons)}


_OPS: dict[type, str] = {MakeDir: "mkdir", WriteFile: "write", Symlink: "symlink",
                         CopyTree: "copy", MakeImage: "image", Whiteout: "hide",
                         Opaque: "opaque", AddUser: "user"}


def _file_op(op: object) -> dict[str, Any]:
    """Every step with the same keys; null where a key means nothing for its kind."""
    out: dict[str, Any] = {"op": _OPS[type(op)], "path": getattr(op, "path", None),
                           "reason": getattr(op, "reason", ""), "mode": None, "uid": None,
                           "gid": None, "source": None, "exclude": [], "size": None,
                           "content": None, "name": None, "home": None}
    if isinstance(op, MakeDir | WriteFile):
        out["mode"] = op.mode
    if isinstance(op, MakeDir | AddUser):
        out["uid"], out["gid"] = op.uid, op.gid
    if isinstance(op, WriteFile):
        out["content"] = op.content
    elif isinstance(op, Symlink):
        out["source"] = op.target
    elif isinstance(op, CopyTree):
        out["source"], out["path"], out["exclude"] = op.src, op.dst, list(op.exclude)
    elif isinstance(op, MakeImage):
        out["source"], out["size"] = op.source or None, op.size
    elif isinstance(op, Whiteout):
        out["source"] = op.hides
    elif isinstance(op, AddUser):
        out["name"], out["home"] = op.name, op.home
    return out
