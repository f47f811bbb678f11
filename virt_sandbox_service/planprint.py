"""--dry-run: the plan as text, each step with its reason."""

from __future__ import annotations

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
