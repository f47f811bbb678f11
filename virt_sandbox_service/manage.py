"""delete, list, inspect: commands over existing sandboxes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import libvirt

from . import host
from .apply import files
from .apply import libvirt as lv
from .apply import systemd as sd
from .config import Paths, all_configs, load_config
from .create import EVIDENCE_FILE, config_lock
from .errors import UserError
from .runtime import backend
from .runtime import lxc as rt
from .units import unit_name


def delete(paths: Paths, name: str, *, force: bool = False) -> None:
    """Refuse a running sandbox unless forced; then remove unit, domain, state and config."""
    cfg = load_config(paths, name)
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
        files.remove_state_dir(Path(cfg.state_dir), name)
        paths.config_file(name).unlink(missing_ok=True)
        run = rt.run_dir(paths, name)
        if run.is_dir():
            for f in run.iterdir():
                f.unlink()
            run.rmdir()


def sandbox_rows(paths: Paths) -> list[dict[str, Any]]:
    conns: dict[str, libvirt.virConnect] = {}
    rows = []
    for cfg in all_configs(paths):
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
            "address": None,  # networks come with the -N option (none by default)
            "unit": unit_name(cfg.name),
        })
    return rows


def format_list(rows: list[dict[str, Any]]) -> str:
    header = ("NAME", "DRIVER", "UNITS", "STATE", "ADDRESS")
    table = [header] + [
        (r["name"], r["driver"], " ".join(r["units"]) or "-- " + " ".join(r["command"]),
         r["state"], r["address"] or "-")
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
        "state": lv.state_name(dom) if dom is not None else "missing",
        "paths": {
            "config": str(paths.config_file(name)),
            "state": cfg.state_dir,
            "unit": str(paths.unit_dir / unit_name(name)),
            "journal": rt.journal_dir(cfg),
        },
        "hostname": cfg.name,
        "machine_id": cfg.machine_id,
        "security": {
            "mode": cfg.security_mode.value,
            "label": cfg.security_label,
            "enforced": facts_selinux,
            "note": None if facts_selinux else "this host has no SELinux: the label is "
                    "recorded and shown, but not applied",
        },
        "network": "none (loopback only, private network namespace)",
        "limits": {"memory_bytes": cfg.memory},
        "mounts": record.get("mounts", []),
        "private": [e for e in record.get("evidence", []) if e["access"] != "shared"],
        "shared": [{"path": "/", "access": "shared", "dir": True,
                    "reasons": ["the host's root filesystem, read-only"]}]
        + [e for e in record.get("evidence", []) if e["access"] == "shared"],
        "hidden": record.get("hidden", []),
    }


def format_inspect(d: dict[str, Any]) -> str:
    lines = [
        f"name:        {d['name']}",
        f"kind:        {d['kind']} ({' '.join(d['units']) or ' '.join(d['command'])})",
        f"driver:      {d['driver']} ({d['uri']})",
        f"state:       {d['state']}",
        f"hostname:    {d['hostname']}",
        f"machine-id:  {d['machine_id']}",
        f"label:       {d['security']['label']} ({d['security']['mode']}"
        + ("" if d["security"]["enforced"] else "; not enforced: host has no SELinux") + ")",
        f"network:     {d['network']}",
        f"memory:      {d['limits']['memory_bytes'] or 'no limit set'}",
    ]
    lines += [f"{k + ':':12} {v}" for k, v in d["paths"].items()]
    lines.append("mounts:")
    for m in d["mounts"]:
        src = "tmpfs" if m["tmpfs_kib"] else m["source"]
        ro = " (read-only)" if m["readonly"] else ""
        lines.append(f"  {m['target']:<24} <- {src}{ro}")
    for title in ("private", "shared", "hidden"):
        lines.append(f"{title}:")
        for e in d[title]:
            lines.append(f"  {e['path']:<40} {e['access']:<8} {'; '.join(e['reasons'])}")
    return "\n".join(lines)
