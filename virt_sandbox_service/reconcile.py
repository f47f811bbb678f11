"""Reconcile: re-derive a sandbox's generated definitions from its config and the host's
current facts, compare them with what is in place, and (unless only checking) replace what
differs. `upgrade` and `limit` go through it; `upgrade --check` only shows the differences.

Re-derived, so the tool's own (a hand edit there is shown as a difference, and replaced):
- the libvirt domain, the sandbox's init script included (initscript.py), keeping what
  libvirt gave it: its uuid and its interfaces' MAC addresses;
- the host unit NAME_sandbox.service;
- the managed parts of the sandbox's trees (plantypes: `managed`): a unit sandbox's
  enablement and mask links, its confined units' drop-ins 50-virt-sandbox-service.conf and
  zz-virt-sandbox-service-confinement.conf, the failure-report unit and networkd's -N dhcp
  files (innerunits.py), the empty loader preload, its SysV link directories (empty and, on
  an overlay /etc, opaque), and the directories its mounts need. Directories are made when
  missing; nothing is ever removed.
The instance's and the admin's, never touched: everything else in its private /etc and /var
(its data; `upgrade` compares the conffiles in it with the host's), the content of -m
directories, drop-ins of other names (the sandbox's /etc/systemd/system/UNIT.d/*.conf, the
host's NAME_sandbox.service.d/*.conf), and the config, whose identity (machine-id, MCS label,
user-namespace id range) is an input of the plan and never allocated again.

A running sandbox keeps its live definition; the new one takes effect at its next start.
The comparisons are pure (compare_domain, text_diff); every change registers its undo on the
caller's Transaction.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from . import host, image, unitfile
from .apply import libvirt as lv
from .apply import systemd as sd
from .apply import tree
from .apply.files import write_file
from .apply.txn import Transaction
from .config import Kind, Paths, SandboxConfig
from .create import plan_units
from .errors import HostError, UserError
from .evidence import PathEvidence
from .plan import EVIDENCE_FILE, FileOp, MakeDir, Opaque, Plan, Symlink, WriteFile


@dataclass(frozen=True)
class Difference:
    what: str  # init, domain, host unit, file, link, directory, opaque
    where: str  # the domain's name, the unit file, a path in the state directory
    detail: str
    diff: str = ""
    kept: bool = False  # not the tool's to replace (something else is there): left as it is


@dataclass(frozen=True)
class Outcome:
    differences: tuple[Difference, ...] = ()
    applied: bool = False  # the differences were replaced (not --check)
    running: bool = False  # the new definitions take effect at its next start
    note: str = ""  # what could not be compared, and why


# --- inputs ----------------------------------------------------------------------------------


def units_of(cfg: SandboxConfig) -> tuple[unitfile.UnitFile, ...]:
    """The confined units as the sandbox's systemd reads them (its name, its machine-id)."""
    return tuple(unitfile.load_unit(u, hostname=cfg.name, machine_id=cfg.machine_id)
                 for u in cfg.units)


def recorded_evidence(cfg: SandboxConfig) -> tuple[tuple[PathEvidence, ...],
                                                    tuple[PathEvidence, ...]]:
    """What create (or the last upgrade) recorded: the evidence the trees were made from."""
    from .clone import load_evidence

    return load_evidence(cfg)


def host_facts(conn: libvirt.virConnect) -> host.HostFacts:
    return dataclasses.replace(host.detect(), secmodels=host.libvirt_secmodels(conn))


def desired(cfg: SandboxConfig, paths: Paths, facts: host.HostFacts,
            evidence: tuple[PathEvidence, ...], hidden: tuple[PathEvidence, ...],
            units: tuple[unitfile.UnitFile, ...]) -> Plan:
    """The plan this version makes of the config, with its domain and host unit: create's."""
    return plan_units(cfg, paths, facts, evidence, hidden, units)


@contextlib.contextmanager
def private_trees(cfg: SandboxConfig, running: bool | None = None) -> Iterator[Path | None]:
    """Where the instance's etc/ and var/ are: its state dir, or (-i) its image mounted in a
    private mount namespace for the time of the command. A running -i sandbox's image is
    libvirt's: refused, or (running given) None, its trees then left alone."""
    if cfg.image_size is None:
        yield Path(cfg.state_dir)
        return
    if running is None:
        dom = lv.lookup(lv.connect(cfg.uri), cfg.name)
        image.refuse_running(cfg.name, dom is not None and bool(dom.isActive()), "upgrade")
    elif running:
        yield None
        return
    with image.mounted(image.image_path(cfg.state_dir), writable=True) as root:
        yield root


# --- the domain ------------------------------------------------------------------------------

# What libvirt (9.0, LXC and QEMU) adds to a definition as it stores it: left out of the
# comparison where the generated domain does not say it. Element paths from the root; an
# attribute after "@". tests/test_reconcile.py checks that a sandbox this version made
# compares equal, so a libvirt that adds more shows up there first.
LIBVIRT_ADDS = frozenset({
    "uuid", "currentMemory", "vcpu", "vcpu@placement", "resource", "cpu", "cpu@check",
    "cpu@migratable", "os/type@arch",
    "os/type@machine", "os/boot", "devices/emulator", "devices/filesystem@accessmode",
    "devices/controller@index", "devices/controller/address", "devices/channel/address",
    "devices/serial/target/model", "devices/serial/target@type",
    "devices/input", "devices/audio", "devices/interface/mac",
    "devices/interface/address", "devices/console/target@port", "devices/memballoon/address",
    "devices/disk/address", "devices/rng/address", "seclabel",
    # --graphics: the display's address as an attribute too, and VNC's port (-1: autoport).
    "devices/graphics@listen", "devices/graphics@port",
})


def _strip_added(d: etree._Element, g: etree._Element | None, path: str = "") -> None:
    """Remove from the defined domain `d` what libvirt added and the generated `g` lacks;
    elements correspond by tag and their target directory (file systems), else by position
    among their same-tag siblings."""
    for raw in list(d.attrib):
        name = str(raw)
        if f"{path}@{name}" in LIBVIRT_ADDS and (g is None or name not in g.attrib):
            del d.attrib[name]
    seen: dict[str, int] = {}
    for child in list(d):
        if not isinstance(child.tag, str):
            d.remove(child)
            continue
        i = seen[child.tag] = seen.get(child.tag, -1) + 1
        local = etree.QName(child).localname
        cpath = f"{path}/{local}" if path else local
        same = g.findall(child.tag) if g is not None else []
        where = child.find("target")
        if where is not None and where.get("dir"):
            twin = next((s for s in same if s.find(f"target[@dir='{where.get('dir')}']")
                         is not None), None)
        else:
            twin = same[i] if i < len(same) else None
        if cpath in LIBVIRT_ADDS and twin is None:
            d.remove(child)
            continue
        _strip_added(child, twin, cpath)


def _comparable(root: etree._Element) -> etree._Element:
    """A copy of the domain whose interfaces have their children sorted by tag (same-tag ones
    keeping their order): libvirt writes an interface's children in an order of its own
    (seen: <bandwidth> moved up before <target>), and their order carries no meaning there."""
    root = copy.deepcopy(root)
    for iface in root.findall("devices/interface"):
        for c in sorted((c for c in iface if isinstance(c.tag, str)), key=lambda c: str(c.tag)):
            iface.append(c)
    return root


def keep_identity(new: etree._Element, defined: etree._Element) -> None:
    """The domain's identity stays: its uuid (libvirt cannot change it, and a sandbox made
    before uuids were derived from the machine-id has a random one), and each interface's MAC
    address where the config names none."""
    uuid = defined.find("uuid")
    name = new.find("name")
    if uuid is not None and name is not None:
        for old in new.findall("uuid"):
            new.remove(old)
        name.addnext(etree.fromstring(etree.tostring(uuid)))
    old_ifaces = defined.findall("devices/interface")
    for i, iface in enumerate(new.findall("devices/interface")):
        mac = old_ifaces[i].find("mac") if i < len(old_ifaces) else None
        if iface.find("mac") is None and mac is not None:
            iface.insert(0, etree.fromstring(etree.tostring(mac)))


def _tag(el: etree._Element, name: str) -> str:
    q = etree.QName(name)
    prefixes = [p for p, ns in el.nsmap.items() if p and ns == q.namespace]
    return f"{prefixes[0]}:{q.localname}" if prefixes else q.localname


def render(el: etree._Element, depth: int = 0, hide: Callable[[etree._Element], bool]
           = lambda _: False) -> list[str]:
    """One line per element and per line of text, attributes sorted: a form both sides of a
    comparison share, whatever quotes or namespace declarations each was written with."""
    pad = "  " * depth
    tag = _tag(el, str(el.tag))
    attrs = "".join(f' {_tag(el, str(k))}="{v!s}"'
                    for k, v in sorted((str(k), str(v)) for k, v in el.attrib.items()))
    text = "(see init)" if hide(el) else (el.text or "").strip("\n")
    text = "" if not text.strip() else text
    children = [c for c in el if isinstance(c.tag, str)]
    if not children and "\n" not in text:
        return [f"{pad}<{tag}{attrs}>{text}</{tag}>" if text else f"{pad}<{tag}{attrs}/>"]
    out = [f"{pad}<{tag}{attrs}>", *(f"{pad}  {line}" for line in text.split("\n") if text)]
    for c in children:
        out += render(c, depth + 1, hide)
    return [*out, f"{pad}</{tag}>"]


def init_script(root: etree._Element) -> str:
    """An LXC domain's init as text: the program, its arguments (the script) and environment."""
    os_el = root.find("os")
    if os_el is None or os_el.find("init") is None:
        return ""
    parts = [f"# init: {os_el.findtext('init')}"]
    parts += [a.text or "" for a in os_el.findall("initarg")]
    parts += [f"# environment: {e.get('name')}={e.text}" for e in os_el.findall("initenv")]
    return "\n".join(parts) + "\n"


def text_diff(old: str, new: str, a: str, b: str) -> str:
    return "".join(line if line.endswith("\n") else line + "\n"
                   for line in difflib.unified_diff(old.splitlines(keepends=True),
                                                    new.splitlines(keepends=True), a, b))


def compare_domain(name: str, defined: str, generated: str
                   ) -> tuple[str, list[Difference]]:
    """(the XML to define, the differences): the generated domain with the defined one's
    identity kept, compared with the defined one less what libvirt adds."""
    parser = etree.XMLParser(remove_blank_text=True)
    new = etree.fromstring(generated.encode(), parser)
    old = etree.fromstring(defined.encode(), parser)
    keep_identity(new, old)
    _strip_added(old, new)
    out = []
    init_old, init_new = init_script(old), init_script(new)
    if init_old != init_new:
        out.append(Difference("init", name, "the sandbox's init differs from this version's",
                              text_diff(init_old, init_new, "defined", "this version")))

    def is_initarg(el: etree._Element) -> bool:
        return el.tag == "initarg"

    a = "\n".join(render(_comparable(old), hide=is_initarg)) + "\n"
    b = "\n".join(render(_comparable(new), hide=is_initarg)) + "\n"
    if a != b:
        out.append(Difference("domain", name, "the libvirt domain differs from this version's",
                              text_diff(a, b, "defined", "this version")))
    return etree.tostring(new, pretty_print=True, encoding="unicode"), out


# --- reconcile -------------------------------------------------------------------------------


class _Run:
    """One reconcile: finds the differences in order and, unless checking, replaces each as
    it is found (so a directory is there before the files and marks that go in it)."""

    def __init__(self, cfg: SandboxConfig, trees: Path | None, check: bool,
                 txn: Transaction) -> None:
        self.cfg, self.trees, self.check, self.txn = cfg, trees, check, txn
        self.found: list[Difference] = []
        self.skipped_trees = False

    def differs(self, d: Difference, fix: Callable[[], None], undo: Callable[[], None]) -> None:
        self.found.append(d)
        if not self.check:
            try:
                fix()
            except OSError as e:
                raise HostError(f"cannot update {d.what} {d.where}: {e.strerror or e}",
                                "nothing was changed (what was done is undone)") from e
            self.txn.did(f"reconciled {d.what} {d.where}", undo)

    def locate(self, path: str) -> tuple[Path, str, int] | None:
        """(base, path in it, owner shift) of a path in the state directory."""
        state = self.cfg.state_dir
        rel = os.path.relpath(path, state)
        if rel == "." or rel.startswith("../"):
            return None
        top = rel.split("/")[0]
        shift = (self.cfg.id_base or 0) if top in ("etc", "var", "paths", "home") else 0
        if self.cfg.image_size is not None and top in image.TREES:
            if self.trees is None:
                self.skipped_trees = True
                return None
            return self.trees, rel, shift
        return Path(state), rel, shift

    def file_op(self, op: FileOp) -> None:
        if not isinstance(op, MakeDir | WriteFile | Symlink | Opaque):
            return
        where = self.locate(op.path)
        if where is None:
            return
        base, rel, shift = where

        def parents(_: str) -> tuple[int, int, int]:
            return 0o755, shift, shift

        shown = os.path.join(self.cfg.state_dir, rel)
        if isinstance(op, MakeDir) and not tree.lexists(base, rel):
            self.differs(Difference("directory", shown, f"missing ({op.reason})"),
                         lambda: tree.make_dir(base, rel, op.mode, op.uid + shift,
                                               op.gid + shift, parents),
                         lambda: tree.remove_dir(base, rel))
        elif isinstance(op, WriteFile):
            self._write(op, base, rel, shift, shown, parents)
        elif isinstance(op, Symlink):
            self._link(op, base, rel, shift, shown, parents)
        elif isinstance(op, Opaque) and tree.is_opaque(base, rel) is False:
            self.differs(Difference("opaque", shown, f"not opaque ({op.reason})"),
                         lambda: tree.set_opaque(base, rel, True),
                         lambda: tree.set_opaque(base, rel, False))

    def _write(self, op: WriteFile, base: Path, rel: str, shift: int, shown: str,
               parents: tree.ParentMeta) -> None:
        cur, want = tree.read(base, rel), op.content.encode()
        if cur.data == want:
            return
        if cur.exists and cur.data is None and not cur.kind.startswith("symlink"):
            self.found.append(Difference("file", shown, f"{cur.kind} in its place ("
                                         f"{op.reason})", kept=True))
            return
        old = cur.data.decode(errors="replace") if cur.data is not None else ""
        detail = f"{'differs' if cur.exists else 'missing'} ({op.reason})"
        diff = text_diff(old, op.content, "in place" if cur.exists else "/dev/null",
                         "this version")

        def undo() -> None:
            if cur.data is not None and cur.meta is not None:
                tree.write(base, rel, cur.data, *cur.meta, parents)
            else:
                tree.remove_file(base, rel)

        self.differs(Difference("file", shown, detail, diff),
                     lambda: tree.write(base, rel, want, op.mode, shift, shift, parents), undo)

    def _link(self, op: Symlink, base: Path, rel: str, shift: int, shown: str,
              parents: tree.ParentMeta) -> None:
        cur = tree.read_link(base, rel)
        if cur == op.target:
            return
        if cur is None and tree.lexists(base, rel):
            self.found.append(Difference("link", shown, f"something else in its place ("
                                         f"{op.reason})", kept=True))
            return
        detail = (f"points to {cur}, not {op.target}" if cur is not None
                  else f"missing: -> {op.target}") + f" ({op.reason})"

        def undo() -> None:
            if cur is None:
                tree.remove_file(base, rel)
            else:
                tree.symlink(base, rel, cur, shift, shift, parents)

        self.differs(Difference("link", shown, detail),
                     lambda: tree.symlink(base, rel, op.target, shift, shift, parents), undo)


def reconcile(paths: Paths, cfg: SandboxConfig, conn: libvirt.virConnect, p: Plan, *,
              trees: Path | None, check: bool, txn: Transaction) -> Outcome:
    """Compare the plan `p` (desired) with what is in place; replace what differs unless
    `check`. The caller holds the config lock and owns the Transaction."""
    run = _Run(cfg, trees, check, txn)
    dom = lv.lookup(conn, cfg.name)
    if dom is not None and not lv.is_ours(dom):
        raise UserError(f"libvirt domain '{cfg.name}' was not made by virt-sandbox-service",
                        "not touching it")
    running = dom is not None and bool(dom.isActive())
    for op in p.files:
        if getattr(op, "managed", False):
            run.file_op(op)
    if cfg.kind is Kind.SERVICE and not cfg.etc_overlay:
        _host_boot_links(run)
    _domain(run, conn, dom, p)
    reload_needed = False
    for path, text in p.unit_files:
        reload_needed |= _unit(run, Path(path), text)
    if not check:
        _record_mounts(cfg, p, txn)
        if reload_needed:
            sd.daemon_reload()
    note = ("its private trees are in its image, which the running sandbox holds: they were "
            "not compared (run upgrade once it is stopped)" if run.skipped_trees else "")
    return Outcome(tuple(run.found), applied=not check and any(not d.kept for d in run.found),
                   running=running, note=note)


# The host's SysV boot links: a trimmed copy of /etc made before they were left out has them,
# and systemd's sysv generator then starts each host init script linked there in the sandbox.
RC_DIRS = tuple(f"/etc/rc{r}.d" for r in "0123456S")


def _host_boot_links(run: _Run) -> None:
    """A copied /etc: each link in its rc?.d that is the host's own (same name, same
    target) goes; a link of the instance's own (another name or target) stays."""
    for rc in RC_DIRS:
        where = run.locate(os.path.join(run.cfg.state_dir, rc.lstrip("/")))
        if where is None:
            continue
        base, rel, shift = where
        for entry in tree.list_dir(base, rel):
            try:
                hosts = os.readlink(os.path.join(rc, entry))
            except OSError:
                continue
            if tree.read_link(base, f"{rel}/{entry}") != hosts:
                continue
            _drop_host_link(run, base, f"{rel}/{entry}", hosts, shift)


def _drop_host_link(run: _Run, base: Path, link: str, target: str, shift: int) -> None:
    def parents(_: str) -> tuple[int, int, int]:
        return 0o755, shift, shift

    run.differs(Difference("link", os.path.join(run.cfg.state_dir, link),
                           f"the host's SysV boot link (-> {target}): systemd's sysv "
                           "generator would start that host init script in the sandbox"),
                lambda: tree.remove_file(base, link),
                lambda: tree.symlink(base, link, target, shift, shift, parents))


def _domain(run: _Run, conn: libvirt.virConnect, dom: libvirt.virDomain | None,
            p: Plan) -> None:
    name = p.config.name
    if dom is None:
        run.differs(Difference("domain", name, "not defined in libvirt"),
                    lambda: None, lambda: None)
        if not run.check:
            lv.define(conn, p.domain_xml, run.txn)
        return
    defined = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml, found = compare_domain(name, defined, p.domain_xml)
    for i, d in enumerate(found):
        last = i == len(found) - 1  # one redefinition carries them all
        run.differs(d, (lambda: lv.redefine(conn, xml)) if last else (lambda: None),
                    (lambda: lv.redefine(conn, defined)) if last else (lambda: None))


def _unit(run: _Run, path: Path, text: str) -> bool:
    try:
        cur: str | None = path.read_text()
    except FileNotFoundError:
        cur = None
    if cur == text:
        return False
    detail = "differs from this version's (a hand edit goes in a drop-in: "\
             f"{path.name}.d/*.conf)" if cur is not None else "missing"

    def undo() -> None:
        if cur is None:
            path.unlink(missing_ok=True)
        else:
            write_file(path, cur, 0o644)

    run.differs(Difference("host unit", str(path), detail,
                           text_diff(cur or "", text, "in place" if cur is not None
                                     else "/dev/null", "this version")),
                lambda: write_file(path, text, 0o644), undo)
    return True


def _record_mounts(cfg: SandboxConfig, p: Plan, txn: Transaction) -> None:
    """evidence.json's list of mounts (what `inspect` shows) follows the domain."""
    path = Path(cfg.state_dir) / EVIDENCE_FILE
    try:
        text = path.read_text()
        data: dict[str, Any] = json.loads(text)
    except (OSError, ValueError):
        return
    mounts = [dataclasses.asdict(m) for m in p.mounts]
    if not isinstance(data, dict) or data.get("mounts") == mounts:
        return
    data["mounts"] = mounts
    write_undoable(path, json.dumps(data, indent=2) + "\n", txn)


def write_undoable(path: Path, text: str, txn: Transaction) -> None:
    try:
        old: str | None = path.read_text()
    except FileNotFoundError:
        old = None
    write_file(path, text, 0o644)
    if old is None:
        txn.did(f"wrote {path}", path.unlink)
    else:
        previous = old
        txn.did(f"wrote {path}", lambda: write_file(path, previous))


# --- output ----------------------------------------------------------------------------------


def next_start(name: str) -> str:
    return (f"{name}: it is running: the new definitions take effect at its next start "
            f"(virt-sandbox-service stop {name} && virt-sandbox-service start {name}, or "
            f"systemctl restart {name}_sandbox.service)")


def format_outcome(name: str, o: Outcome) -> list[str]:
    lines = []
    verb = "updated" if o.applied else "differs:"
    for d in o.differences:
        lines.append(f"{name}: {'left as it is:' if d.kept else verb} {d.what} {d.where}: "
                     f"{d.detail}")
        lines += [f"  {line}" for line in d.diff.splitlines()]
    if not o.differences:
        lines.append(f"{name}: definitions up to date (domain, init, host unit, sandbox files)")
    elif not o.applied:
        lines.append(f"{name}: {len(o.differences)} definition(s) differ from this version's: "
                     f"virt-sandbox-service upgrade {name} replaces them (its data and "
                     "admin's drop-ins are kept)")
    elif o.running:
        lines.append(next_start(name))
    if o.note:
        lines.append(f"{name}: note: {o.note}")
    return lines


def outcome_json(o: Outcome) -> dict[str, Any]:
    return {"differences": [{"what": d.what, "where": d.where, "detail": d.detail,
                             "diff": d.diff or None, "kept": d.kept}
                            for d in o.differences],
            "applied": o.applied, "running": o.running, "note": o.note or None}
