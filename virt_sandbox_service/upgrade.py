"""upgrade: bring sandboxes up to date after the host's packages changed.

For each sandbox, in order:
1. Config: a file written by an older version of this tool is migrated one format version at
   a time (MIGRATIONS); a newer format is refused.
2. Private paths: the evidence is gathered again from the config (create.gather). A private
   path under /var that is new to the evidence and missing from the state is made: a
   directory as an empty skeleton with the host's owner and mode, a file as a copy of the
   host's. Nothing that exists is touched. evidence.json is updated.
3. Conffiles: each packaged conffile is compared four ways: the instance's copy, the host's
   file, what the instance was given (md5 recorded in evidence.json by create, kept by
   upgrade) and what the package shipped (dpkg's md5). Every difference is reported with a
   unified diff, host -> instance. Only with apply_host_changes, and only where the instance's
   copy is still what it was given or what was packaged, is the host's version copied in: an
   admin's edit is never overwritten.

4. Definitions: the domain (its init included), the host unit and the tool's own files in
   the sandbox's trees are re-derived from the config and compared with what is in place;
   what differs is replaced (reconcile.py), never the instance's data or an admin's
   drop-ins. A running sandbox takes them at its next start.

With check, nothing is changed: each step only says what it would do.

The comparisons (migrate, classify, diff_text, new_private_paths) are pure; files are read
through conffiles (the host) and apply.tree (the sandbox's trees, never following a symlink
the sandbox made), and every change registers its undo on one Transaction per sandbox.
"""

from __future__ import annotations

import difflib
import enum
import json
import os
import stat
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import create, reconcile
from .apply import libvirt as lv
from .apply import tree
from .apply.files import copy_tree, remove_copy
from .apply.txn import Transaction
from .conffiles import (
    FileState,
    HostView,
    conffile_paths,
    packaged_md5s,
    read_host,
)
from .config import FORMAT_VERSION, Paths, SandboxConfig, parse_json_object, read_config_text
from .errors import SandboxError, UserError
from .evidence import Access, PathEvidence
from .plan import EVIDENCE_FILE, MARKER, other_path

# --- 1. config migrations ------------------------------------------------------------------------

Migration = Callable[[dict[str, Any]], dict[str, Any]]
# MIGRATIONS[v] turns the JSON object of a format-v config into format v+1. Version 1 is the
# first format, so there is nothing to migrate yet. A change to SandboxConfig that an older
# file cannot be loaded as bumps config.FORMAT_VERSION and adds its step here, with a test
# that loads a file of the old format (tests/test_upgrade.py checks the table is complete).
MIGRATIONS: dict[int, Migration] = {}


def migrate(data: dict[str, Any], source: str, table: dict[int, Migration] | None = None,
            current: int = FORMAT_VERSION) -> tuple[dict[str, Any], int]:
    """(the config's JSON object in format `current`, the version it was written in)."""
    table = MIGRATIONS if table is None else table
    version = data.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{source}: format_version {version!r} is not a format version",
                        "it is a positive integer; was the file edited by hand?")
    if version > current:
        raise UserError(f"{source} has format version {version}, newer than this "
                        f"virt-sandbox-service knows ({current})",
                        "it was written by a newer version: upgrade virt-sandbox-service")
    written = version
    while version < current:
        step = table.get(version)
        if step is None:
            raise UserError(f"{source}: no migration from format version {version}",
                            "this is a bug in virt-sandbox-service; please report it")
        data = {**step(dict(data)), "format_version": version + 1}
        version += 1
    return data, written


def load_migrated(paths: Paths, name: str) -> tuple[SandboxConfig, str, int]:
    """(config, the file's text as read, the format version it was written in)."""
    path, text = read_config_text(paths, name)
    data, written = migrate(parse_json_object(text, str(path)), str(path))
    return SandboxConfig.from_dict(data, str(path)), text, written


# --- 2. private paths ---------------------------------------------------------------------------


def request_from_config(cfg: SandboxConfig) -> create.CreateRequest:
    """The request `gather` needs to find the evidence again (the parsed mounts and networks
    pass as they are)."""
    return create.CreateRequest(
        name=cfg.name, uri=cfg.uri, units=cfg.units, command=cfg.command,
        state_parent=os.path.dirname(cfg.state_dir), packages=cfg.packages,
        private=cfg.private, shared=cfg.shared, copy=cfg.copy, mounts=cfg.mounts,
        networks=cfg.networks)


def new_private_paths(evidence: Sequence[PathEvidence], known: Collection[str] | None,
                      exists: Callable[[str], bool]) -> list[PathEvidence]:
    """Private paths the evidence names now but did not before (`known`; None: no record),
    and the state lacks. Parents come before their children."""
    return [e for e in evidence
            if e.access is Access.PRIVATE and e.path not in ("/var", "/etc")
            and (known is None or e.path not in known) and not exists(e.path)]


def _in_tree(path: str, top: str) -> bool:
    return path.startswith(top + "/")


@dataclass(frozen=True)
class NewPath:
    path: str
    dir: bool
    reasons: tuple[str, ...]
    made: bool
    note: str = ""


# --- 3. conffile drift ----------------------------------------------------------------------------


class Drift(enum.StrEnum):
    UNCHANGED = "unchanged"  # the instance's copy is the host's
    HOST_CHANGED = "host-changed"  # instance copy as given/packaged; the host's differs
    HOST_ADDED = "host-added"  # new on the host since the instance was made
    ADMIN_EDITED = "admin-edited"  # edited in the instance; never overwritten
    BOTH_CHANGED = "both-changed"  # edited in the instance and changed on the host: merge
    INSTANCE_REMOVED = "instance-removed"  # removed in the instance: the admin's choice
    HOST_REMOVED = "host-removed"  # gone from the host (or no longer a regular file there)


APPLICABLE = frozenset({Drift.HOST_CHANGED, Drift.HOST_ADDED})
NOTES = {
    Drift.HOST_CHANGED: "the instance has the version it was given; the host's differs "
                        "(--apply-host-changes copies it in)",
    Drift.HOST_ADDED: "new on the host; the instance has none (--apply-host-changes copies it)",
    Drift.ADMIN_EDITED: "edited in the instance; kept as it is",
    Drift.BOTH_CHANGED: "edited in the instance and changed on the host; merge by hand",
    Drift.INSTANCE_REMOVED: "removed in the instance; not restored",
    Drift.HOST_REMOVED: "no longer on the host; the instance's copy is kept",
}
UNRECORDED = ("no record of what the instance was given (it predates such records): an older "
              "packaged version looks like an edit")


def classify(instance: FileState, host: FileState, given: str | None, known: bool,
             packaged: str | None) -> Drift:
    """Compare one conffile. `given`: md5 of what the instance was given, if recorded;
    `known`: the instance was given this path (or the record is unknown); `packaged`: the
    md5 dpkg recorded for the shipped version."""
    if host.data is None:
        return Drift.HOST_REMOVED if instance.exists else Drift.UNCHANGED
    if not instance.exists:
        return Drift.INSTANCE_REMOVED if known else Drift.HOST_ADDED
    if instance.data is None:  # a symlink or directory in its place: the admin's doing
        return Drift.ADMIN_EDITED
    if instance.md5 == host.md5:
        return Drift.UNCHANGED
    if instance.md5 in {given, packaged} - {None}:
        return Drift.HOST_CHANGED
    if given is not None and host.md5 != given:
        return Drift.BOTH_CHANGED
    return Drift.ADMIN_EDITED


def diff_text(path: str, name: str, host: FileState, instance: FileState) -> str:
    """A unified diff from the host's file to the instance's copy ("" if they are the same)."""
    if host.data == instance.data and host.kind == instance.kind:
        return ""
    a, b = f"host:{path}", f"{name}:{path}"
    notes = [f"{label}: {side.kind}\n" for label, side in ((a, host), (b, instance))
             if side.data is None]
    if b"\0" in (host.data or b"") or b"\0" in (instance.data or b""):
        return "".join(notes) + f"Binary files {a} and {b} differ\n"
    out = []
    for line in difflib.unified_diff(_lines(host), _lines(instance),
                                     a if host.data is not None else "/dev/null",
                                     b if instance.data is not None else "/dev/null"):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(notes) + "".join(out)


def _lines(side: FileState) -> list[str]:
    return side.data.decode(errors="replace").splitlines(keepends=True) if side.data else []


@dataclass(frozen=True)
class ConffileDrift:
    path: str
    package: str
    status: Drift
    applied: bool
    diff: str
    note: str


# --- one sandbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    name: str
    format_version: int = FORMAT_VERSION
    migrated_from: int | None = None
    new_private: tuple[NewPath, ...] = ()
    conffiles: tuple[ConffileDrift, ...] = ()
    error: str | None = None
    definitions: reconcile.Outcome = field(default_factory=reconcile.Outcome)
    checked: bool = False  # --check: nothing was changed

    @property
    def drift(self) -> bool:
        """Anything that differs and was not brought up to date (an admin's edit of a
        conffile included: it is shown, never replaced)."""
        return (any(c.status is not Drift.UNCHANGED and not c.applied for c in self.conffiles)
                or any(not p.made for p in self.new_private)
                or (self.migrated_from is not None and self.checked)
                or any(not self.definitions.applied or d.kept
                       for d in self.definitions.differences))


def upgrade(paths: Paths, name: str, *, apply_host_changes: bool = False,
            host: HostView | None = None, check: bool = False) -> Report:
    """Upgrade one sandbox (see the module's docstring). All or nothing: a failure undoes it.
    With `check`, nothing is changed."""
    if check and apply_host_changes:
        raise UserError("--check changes nothing, --apply-host-changes changes conffiles",
                        "give one of them")
    host = host or HostView()
    cfg, text, written = load_migrated(paths, name)
    got = create.gather(request_from_config(cfg), cfg.machine_id)
    state = Path(cfg.state_dir)
    conn = lv.connect(cfg.uri)
    facts = reconcile.host_facts(conn)
    with create.config_lock(paths), reconcile.private_trees(cfg) as trees, \
            Transaction() as txn:
        assert trees is not None  # private_trees refuses a running -i sandbox here
        _check_unchanged(paths, name, text)
        _check_ours(state, name)
        if written != FORMAT_VERSION and not check:
            _write_undoable(paths.config_file(name), cfg.to_json(), txn)
        record = _read_record(state)
        known = {e["path"] for e in record["evidence"]} if "evidence" in record else None
        made = _make_new_private(cfg, trees, got.evidence, known, host, txn, dry=check)
        drift, given = _conffiles(cfg, trees, got.evidence, record.get("conffiles"), host,
                                  apply_host_changes, txn)
        pending = {p.path for p in made if not p.made}
        evidence = tuple(e for e in got.evidence if e.path not in pending)
        record.update(evidence=[_item(e) for e in evidence], conffiles=given)
        if not check:
            _write_undoable(state / EVIDENCE_FILE, json.dumps(record, indent=2) + "\n", txn)
        desired = reconcile.desired(cfg, paths, facts, evidence, got.hidden, got.units)
        outcome = reconcile.reconcile(paths, cfg, conn, desired, trees=trees, check=check,
                                      txn=txn)
    return Report(name, FORMAT_VERSION, written if written != FORMAT_VERSION else None,
                  tuple(made), tuple(drift), definitions=outcome, checked=check)


def _check_unchanged(paths: Paths, name: str, text: str) -> None:
    try:
        now = paths.config_file(name).read_text()
    except FileNotFoundError:
        raise UserError(f"sandbox '{name}' was deleted while it was being upgraded",
                        "nothing is left to upgrade: create it again if it is still wanted"
                        ) from None
    if now != text:
        raise UserError(f"the config of '{name}' changed while it was being upgraded",
                        "run the upgrade again")


def _check_ours(state: Path, name: str) -> None:
    try:
        owner = (state / MARKER).read_text().strip()
    except OSError:
        owner = None
    if owner != name:
        raise UserError(f"{state} is not the state directory of sandbox '{name}' (no {MARKER} "
                        "marker naming it); not touching it",
                        f"recreate the sandbox: virt-sandbox-service delete {name}, then create")


def _read_record(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / EVIDENCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _item(e: PathEvidence) -> dict[str, object]:
    # As create writes evidence.json.
    return {"path": e.path, "access": e.access.value, "dir": e.is_dir,
            "reasons": list(e.reasons)}


_write_undoable = reconcile.write_undoable


def _host_meta(host: HostView, path: str, shift: int) -> tuple[int, int, int]:
    """(mode, uid, gid) of the host's path, owners shifted into the sandbox's id range."""
    try:
        st = os.stat(host.path(path))
    except OSError:
        return 0o755, shift, shift
    return stat.S_IMODE(st.st_mode), st.st_uid + shift, st.st_gid + shift


def _make_new_private(cfg: SandboxConfig, trees: Path, evidence: Sequence[PathEvidence],
                      known: Collection[str] | None, host: HostView,
                      txn: Transaction, dry: bool = False) -> list[NewPath]:
    var = trees / "var"
    shift = cfg.id_base or 0

    def exists(path: str) -> bool:
        if _in_tree(path, "/etc"):
            return True  # the private /etc is a whole copy of the host's
        if _in_tree(path, "/var"):
            return tree.lexists(var, path[len("/var/"):])
        return os.path.lexists(other_path(cfg.state_dir, path))

    def parents(rel: str) -> tuple[int, int, int]:
        return _host_meta(host, f"/var/{rel}", shift)

    out = []
    for e in new_private_paths(evidence, known, exists):
        if not _in_tree(e.path, "/var"):
            out.append(_make_own_mount(cfg, e, host, txn, dry))
            continue
        if dry:
            out.append(NewPath(e.path, e.is_dir, e.reasons, False,
                               "to be made (upgrade without --check makes it)"))
            continue
        rel = e.path[len("/var/"):]
        uid, gid = e.owner if e.owner else (0, 0)
        mode = e.mode if e.mode is not None else 0o755
        if e.is_dir:
            tree.make_dir(var, rel, mode, uid + shift, gid + shift, parents)
            txn.did(f"made {var / rel}", partial(tree.remove_dir, var, rel))
        else:
            seen = read_host(host, e.path)
            if seen.data is None:
                out.append(NewPath(e.path, False, e.reasons, False, f"host's is {seen.kind}"))
                continue
            tree.write(var, rel, seen.data, mode, uid + shift, gid + shift, parents)
            txn.did(f"copied {e.path} to {var / rel}", partial(tree.remove_file, var, rel))
        out.append(NewPath(e.path, e.is_dir, e.reasons, True))
    return out


def _make_own_mount(cfg: SandboxConfig, e: PathEvidence, host: HostView, txn: Transaction,
                    dry: bool) -> NewPath:
    """A new private path outside /etc and /var (/srv/www, /opt/app/data): the host's copied
    to state/paths/ (plan.other_path), which the reconciled domain then binds over it. The
    host root is read-only in the sandbox, so the host must have the path to mount on."""
    source = host.path(e.path)
    if not os.path.lexists(source) or os.path.islink(source):
        return NewPath(e.path, e.is_dir, e.reasons, False,
                       "outside /etc and /var, and the host has no such "
                       f"{'directory' if e.is_dir else 'file'} to mount it on: make it on "
                       "the host, then upgrade again")
    if dry:
        return NewPath(e.path, e.is_dir, e.reasons, False,
                       "to be made, with a mount of its own (upgrade without --check)")
    dst = other_path(cfg.state_dir, e.path)
    os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
    copy_tree(str(source), dst, frozenset(), cfg.id_base or 0)
    txn.did(f"copied {e.path} to {dst}", partial(remove_copy, Path(dst)))
    return NewPath(e.path, os.path.isdir(source), e.reasons, True)


def _conffiles(cfg: SandboxConfig, trees: Path, evidence: Sequence[PathEvidence],
               given: object, host: HostView, apply: bool,
               txn: Transaction) -> tuple[list[ConffileDrift], dict[str, str | None]]:
    """Compare (and, if asked, update) every conffile; returns the report and the new record
    of what the instance was given."""
    etc = trees / "etc"
    record: dict[str, str | None] | None = given if isinstance(given, dict) else None
    packaged = packaged_md5s(host)
    out: list[ConffileDrift] = []
    new_record: dict[str, str | None] = {}
    for path, package in conffile_paths(evidence):
        rel = path[len("/etc/"):]
        inst, hst = tree.read(etc, rel), read_host(host, path)
        was_given = record.get(path) if record else None
        known = record is None or path in record
        status = classify(inst, hst, was_given, known, packaged.get(path))
        applied = apply and status in APPLICABLE
        if applied:
            _install(cfg, etc, rel, path, inst, hst, host, txn)
        note = NOTES.get(status, "")
        if status is Drift.ADMIN_EDITED and was_given is None and inst.data is not None:
            note += f"; {UNRECORDED}"
        out.append(ConffileDrift(path, package, status, applied,
                                 diff_text(path, cfg.name, hst, inst), note))
        keep, value = _next_given(status, applied, was_given, inst, hst)
        if keep:
            new_record[path] = value
    return out, new_record


def _next_given(status: Drift, applied: bool, was: str | None, inst: FileState,
                hst: FileState) -> tuple[bool, str | None]:
    """Whether the record lists the path after this run, and the md5 it says the instance
    was given (None: it had something, but what is not known)."""
    if applied or (status is Drift.UNCHANGED and hst.data is not None):
        return True, hst.md5
    if status is Drift.UNCHANGED or status is Drift.HOST_ADDED:
        return False, None  # nothing on either side, or not given yet: stays "new"
    if status is Drift.HOST_CHANGED:
        return True, was or inst.md5  # pristine: what it has is what it was given
    return True, was


def _install(cfg: SandboxConfig, etc: Path, rel: str, path: str, inst: FileState,
             hst: FileState, host: HostView, txn: Transaction) -> None:
    """Copy the host's version over the instance's copy, with the host's owner and mode."""
    assert hst.data is not None
    shift = cfg.id_base or 0
    mode, uid, gid = _host_meta(host, path, shift)

    def parents(prel: str) -> tuple[int, int, int]:
        return _host_meta(host, f"/etc/{prel}", shift)

    tree.write(etc, rel, hst.data, mode, uid, gid, parents)
    if inst.data is not None and inst.meta is not None:
        old, (omode, ouid, ogid) = inst.data, inst.meta
        txn.did(f"updated {etc / rel}",
                lambda: tree.write(etc, rel, old, omode, ouid, ogid, parents))
    else:
        txn.did(f"added {etc / rel}", lambda: tree.remove_file(etc, rel))


# --- many sandboxes, output --------------------------------------------------------------------


def upgrade_many(paths: Paths, names: Sequence[str], *, apply_host_changes: bool = False,
                 host: HostView | None = None, check: bool = False) -> list[Report]:
    """Each sandbox on its own: one that fails is reported and does not stop the others."""
    out = []
    for name in names:
        try:
            out.append(upgrade(paths, name, apply_host_changes=apply_host_changes, host=host,
                               check=check))
        except SandboxError as e:
            out.append(Report(name, error=e.message + (f" ({e.hint})" if e.hint else "")))
    return out


def all_names(paths: Paths) -> list[str]:
    """Every sandbox with a config file, whether or not this version can load it."""
    if not paths.sandboxes_dir.is_dir():
        return []
    return sorted(p.stem for p in paths.sandboxes_dir.glob("*.json"))


def report_json(r: Report) -> dict[str, Any]:
    return {
        "name": r.name,
        "format_version": r.format_version,
        "migrated_from": r.migrated_from,
        "new_private": [{"path": p.path, "dir": p.dir, "reasons": list(p.reasons),
                         "made": p.made, "note": p.note or None} for p in r.new_private],
        "conffiles": [{"path": c.path, "package": c.package, "status": c.status.value,
                       "applied": c.applied, "diff": c.diff or None, "note": c.note or None}
                      for c in r.conffiles],
        "definitions": reconcile.outcome_json(r.definitions),
        "checked": r.checked,
        "drift": r.drift,
        "error": r.error,
    }


def format_report(r: Report) -> str:
    if r.error:
        return f"{r.name}: error: {r.error}"
    lines = []
    if r.migrated_from is not None:
        lines.append(f"{r.name}: config migrated from format version {r.migrated_from} to "
                     f"{r.format_version}")
    for p in r.new_private:
        what = "directory" if p.dir else "file"
        if p.made:
            lines.append(f"{r.name}: made private {what} {p.path} ({'; '.join(p.reasons)})")
        else:
            lines.append(f"{r.name}: private {what} {p.path} not added: {p.note}")
    counts: dict[str, int] = {}
    for c in r.conffiles:
        key = f"{c.status.value} (applied)" if c.applied else c.status.value
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    lines.append(f"{r.name}: {len(r.conffiles)} conffiles: {summary or 'none'}")
    for c in r.conffiles:
        if c.status is Drift.UNCHANGED:
            continue
        done = "applied: " if c.applied else ""
        lines.append(f"{r.name}: {c.status.value} {c.path} ({c.package}): {done}{c.note}")
        lines += [f"  {line}" for line in c.diff.splitlines()]
    if any(c.applied for c in r.conffiles):
        lines.append(f"{r.name}: a running sandbox reads the new files when reloaded: "
                     f"virt-sandbox-service reload {r.name}")
    lines += reconcile.format_outcome(r.name, r.definitions)
    return "\n".join(lines)


CHECK_DRIFT = 3  # exit status of --check when some sandbox differs from this version's


def command(paths: Paths, names: Sequence[str], *, apply_host_changes: bool, check: bool,
            as_json: bool, single: bool) -> int:
    """The CLI's upgrade: prints the reports; 1 if any sandbox failed, 3 with --check when
    anything differs (which --check leaves as it is), else 0. A single NAME's failure is
    raised (one line and a hint)."""
    if check and apply_host_changes:
        raise UserError("--check changes nothing, --apply-host-changes changes conffiles",
                        "give one of them")
    if single:
        reports = [upgrade(paths, names[0], apply_host_changes=apply_host_changes,
                           check=check)]
    else:
        reports = upgrade_many(paths, names, apply_host_changes=apply_host_changes,
                               check=check)
    if as_json:
        print(json.dumps([report_json(r) for r in reports], indent=2))
    else:
        print("\n".join(format_report(r) for r in reports) or "no sandboxes")
    if any(r.error for r in reports):
        return 1
    return CHECK_DRIFT if check and any(r.drift for r in reports) else 0
