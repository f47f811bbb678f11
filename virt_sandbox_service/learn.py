"""learn: what a sandbox's service really opens, observed once, as evidence.

The static evidence (unit directives, file lists, configuration, the postinst's work) can
miss what a daemon opens only because of how it is set up on this host. `learn NAME` starts
the sandbox's units once in a transient LXC domain that sees the host's whole /etc, /var and
/srv as copy-up overlays (the host's files below, a temporary upper layer above: what the
service writes is thrown away, the host is never written), watches with fanotify which paths
there the confined units' processes open, and compares them with what the sandbox has:
a path under /var or /srv that is not private, or a host secret under /etc that the sandbox
hides, would be added. The observed paths are recorded in evidence.json with the reason
"observed" (shown by `inspect`); `--add` also copies those to add under /var from the host
into the instance's private /var, and those under /srv into its state with a mount of their
own (through upgrade), and remembers them in its config as --private. The anchors are the
Slim toolkit's sensor (fanotify on a container's file systems during a probe run) and
firejail's --build (run once, write down what was used).

Why overlays mounted by this command on the host, not by the sandbox's init: fanotify must
watch them before the first process starts, so they are marked (FAN_MARK_FILESYSTEM on each
overlay's own superblock, which only this run uses) before the domain exists; they are
unmounted (lazily) when the run ends, and the temporary directory is removed, also on error.
The run's root, namespaces, capabilities and seccomp filter are the sandbox's own plan's.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import os
import select
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import libvirt

from . import capneeds, unitfile
from .apply import apparmor, domainlogs, files, kernelfs
from .apply.libvirt import is_active
from .apply.txn import Transaction
from .config import Driver, Kind, Paths, SandboxConfig, driver_for_uri, load_config
from .errors import HostError, UserError
from .evidence import NOT_SERVICE_DATA, SKELETON_REASONS
from .host import HostFacts, detect
from .limits import confined_caps
from .pathevidence import PathEvidence, under
from .plan import ETC_WORK, EVIDENCE_FILE, OVERLAY_OPTIONS, Mount, Plan, plan
from .plantypes import is_generator

log = logging.getLogger(__name__)

TREES = ("/etc", "/var", "/srv")
STARTUP_LIMIT = 60.0  # seconds to wait for the units' first open
OBSERVED = "observed"
# fanotify(7): notification class, O_CLOEXEC|O_NONBLOCK fds; open events, also of directories.
FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_OPEN, FAN_OPEN_EXEC, FAN_ONDIR = 0x20, 0x1000, 0x40000000
FAN_MODIFY, FAN_CLOSE_WRITE = 0x2, 0x8  # written: what the service makes itself
EVENT = struct.Struct("<IBBHQii")  # struct fanotify_event_metadata
# Opened by any service's systemd plumbing, never evidence of the service's own needs.
NOISE = ("/etc/ld.so.cache", "/etc/ld.so.preload", "/etc/localtime", "/etc/nsswitch.conf",
         "/etc/passwd", "/etc/group", "/etc/machine-id", "/etc/hostname", "/etc/hosts",
         "/etc/systemd", "/var/lib/systemd", "/var/log/journal")


@dataclass(frozen=True)
class Learned:
    observed: tuple[str, ...]  # every path the units' processes opened, sorted
    add: tuple[str, ...]  # of those, what the sandbox lacks


@dataclass(frozen=True)
class Seen:
    opened: frozenset[str]
    written: frozenset[str]  # opened and then written: a log, a pid file, a new database


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    return libc


class Watch:
    """A fanotify group watching whole file systems for opens (needs CAP_SYS_ADMIN)."""

    def __init__(self) -> None:
        self._libc = _libc()
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE
        self.fd = self._libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK, flags)
        if self.fd < 0:
            raise HostError(f"fanotify is not available: {os.strerror(ctypes.get_errno())}",
                            "learn needs a kernel with fanotify (CONFIG_FANOTIFY) and root")
        self.devs: dict[int, str] = {}  # st_dev of a watched file system -> its place

    def add(self, path: str, shown: str) -> None:
        mask = FAN_OPEN | FAN_OPEN_EXEC | FAN_ONDIR | FAN_MODIFY | FAN_CLOSE_WRITE
        if self._libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, -100,
                                    os.fsencode(path)) < 0:
            raise HostError(f"fanotify cannot watch {path}: "
                            f"{os.strerror(ctypes.get_errno())}")
        self.devs[os.stat(path).st_dev] = shown

    def read(self, timeout: float) -> list[tuple[int, str, bool]]:
        """(pid, path as the sandbox sees it, whether it was a write) of the events queued
        within `timeout`."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 256 * 1024)
        except BlockingIOError:
            return []
        out = []
        for off in _offsets(data):
            _len, _v, _r, _m, mask, fd, pid = EVENT.unpack_from(data, off)
            if fd < 0:
                continue  # FAN_NOFD: the queue overflowed
            try:
                top = self.devs.get(os.fstat(fd).st_dev)
                rel = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                top = None
            finally:
                os.close(fd)
            if top is None:
                continue
            # The link is the path in the sandbox's mount namespace (/etc/...); where the
            # kernel gives it relative to the overlay's root instead, the tree is prefixed.
            if not under(rel, top):
                rel = top + "/" + rel.lstrip("/")
            out.append((pid, os.path.normpath(rel),
                        bool(mask & (FAN_MODIFY | FAN_CLOSE_WRITE))))
        return out

    def close(self) -> None:
        os.close(self.fd)


def _offsets(data: bytes) -> Iterator[int]:
    off = 0
    while off + EVENT.size <= len(data):
        yield off
        off += max(EVENT.unpack_from(data, off)[0], EVENT.size)


# The sandbox's own plumbing: its systemd's services and the failure reporter.
PLUMBING = ("systemd-", "dbus.", "virt-sandbox-service")


def in_units(pid: int, units: Sequence[str]) -> bool | None:
    """Whether the process runs in one of the units' cgroups, or in another service the
    sandbox's systemd started for them (postfix.service starts postfix@-.service, tor.service
    tor@default.service: only the confined units are enabled there), not in its own
    plumbing. Read while the process runs: None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    return any(u in units or (u.endswith(".service") and not u.startswith(PLUMBING))
               for u in services_in(text))


class Attribution:
    """Which processes are the units', each decided once, at its first event, and kept: a
    short-lived helper (an ExecStartPost= running update-alternatives) has often exited by
    the time its later events (the write to the log it opened, its close) are read, and
    those still count as the units'."""

    def __init__(self, units: Sequence[str],
                 lookup: Callable[[int, Sequence[str]], bool | None] = in_units) -> None:
        self.units, self.lookup = units, lookup
        self.known: dict[int, bool] = {}

    def __call__(self, pid: int) -> bool:
        if pid not in self.known:
            verdict = self.lookup(pid, self.units)
            if verdict is None:
                return False  # gone before its first event was read: nothing to go by
            self.known[pid] = verdict
        return self.known[pid]


def services_in(cgroups: str) -> list[str]:
    """The service units named in a /proc/PID/cgroup text (below a system.slice)."""
    out = []
    for line in cgroups.splitlines():
        _, found, rest = line.partition("/system.slice/")
        # A template's instances sit in a slice of their own (system-postfix.slice/).
        unit = next((u for u in rest.split("/") if not u.endswith(".slice")), "")
        if found and unit:
            out.append(unit)
    return out


def interesting(path: str) -> bool:
    return (any(under(path, t) for t in TREES) and path not in TREES
            and not any(under(path, n) for n in (*NOISE, *NOT_SERVICE_DATA)))


def _reasons(entry: dict[str, object]) -> list[str]:
    reasons = entry.get("reasons")
    return [str(r) for r in reasons] if isinstance(reasons, list) else []


def instance_has(state: str, path: str) -> bool:
    """Whether the instance's private tree holds `path` itself (a fresh instance's own ssh
    host keys, say), not a whiteout (a character device 0/0) hiding the host's."""
    try:
        st = os.lstat(os.path.join(state, path.lstrip("/")))
    except OSError:
        return False
    return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)


def would_add(observed: Sequence[str], evidence: Sequence[dict[str, object]],
              hidden: Sequence[dict[str, object]],
              has: Callable[[str], bool] = lambda _p: False,
              written: Collection[str] = ()) -> list[str]:
    """What the sandbox lacks of `observed`: under /var or /srv, what no private path
    covers; under /etc, what a host secret the sandbox hides covers; never what the
    instance has of its own (`has`), nor what the service wrote (a log it appends to is
    made anew in the sandbox). Tops only."""
    # /var/lib, /var/log, ... exist for systemd's sake: they hold nothing of the host's.
    private = [str(e["path"]) for e in evidence if e.get("access") in ("private", "tmpfs")
               and not set(_reasons(e)) <= SKELETON_REASONS]
    secrets = [str(h["path"]) for h in hidden]

    def covered(path: str, tops: Sequence[str]) -> bool:
        return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)

    out: list[str] = []
    for path in sorted(observed):
        lacks = covered(path, secrets) if path.startswith("/etc/") else not covered(
            path, private)
        if lacks and path not in written and not has(path) and not covered(path, out):
            out.append(path)
    return out


def check(cfg: SandboxConfig, add: bool, conn: libvirt.virConnect) -> None:
    if cfg.kind is not Kind.SERVICE:
        raise UserError(f"sandbox '{cfg.name}' runs a command, not units: there is no "
                        "service to learn", "learn is for sandboxes made with -u UNIT")
    if driver_for_uri(cfg.uri) is not Driver.LXC:
        raise UserError(f"learn is for LXC sandboxes; '{cfg.name}' is a KVM sandbox",
                        "learn on an LXC sandbox of the same unit, then create this one "
                        "with --private for what it found")
    if add:
        from .apply.libvirt import lookup

        dom = lookup(conn, cfg.name)
        if dom is not None and dom.isActive():
            raise UserError(f"sandbox '{cfg.name}' is running: --add changes its private "
                            "files", f"stop it first: virt-sandbox-service stop {cfg.name}")


def observe(cfg: SandboxConfig, facts: HostFacts, conn: libvirt.virConnect, paths: Paths,
            seconds: float) -> Seen:
    """Start the units once over copy-up overlays of the host's trees; what they opened."""
    units = tuple(unitfile.load_unit(u) for u in cfg.units)
    # The run sees the host's trees whole, closed directories in them included (an admin's
    # /srv/site, 0750): what the service opens there is what learn is for.
    facts = dataclasses.replace(facts, private_trees=tuple(
        t for t in facts.private_trees if not any(under(t, tree) for tree in TREES)))
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{cfg.name}-learn-", dir=paths.run_dir)
    run = replace_for_learning(cfg, tmp)
    # Of its evidence, only its service's own systemd generators (kept_generators): what
    # starts postfix@-.service for postfix.service runs in the learning run too.
    generators = own_generators(cfg)
    merged: list[str] = []
    watch = Watch()
    try:
        fragments = tuple((u.name, _fragment(u)) for u in units)
        run = with_their_caps(run, units)
        needs = tuple((u, c) for u, c, _ in capneeds.lacking(list(units), confined_caps(run)))
        with Transaction() as txn:
            files.create_state_dir(plan(run, facts, generators, (), "", f"{tmp}/run",
                                        fragments, needs), txn)
        for u in units:
            if u.generated is not None:
                Path(run.state_dir, "etc", _fragment(u)[len("/etc/"):]).write_text(u.generated)
        os.makedirs(f"{tmp}/run", exist_ok=True)
        mounts = []
        for tree in TREES:
            if os.path.isdir(tree):
                merged.append(_overlay(tree, run.state_dir, tmp))
                watch.add(merged[-1], tree)
                mounts.append(Mount(tree, merged[-1], reason="learn: the host's, copy-up"))
        p = plan(dataclasses.replace(run, etc_overlay=False), facts, generators, (), "",
                 f"{tmp}/run", fragments, needs)
        # Where the plan binds the private /etc: everything on top of it comes after.
        at = next(i for i, m in enumerate(p.mounts) if m.target in TREES)
        others = tuple(m for m in p.mounts if m.target not in TREES)
        p = dataclasses.replace(p, mounts=(*others[:at], *mounts, *others[at:]))
        return _run(conn, p, facts, watch, cfg.units, seconds)
    finally:
        watch.close()
        for m in merged:
            subprocess.run(["umount", "-l", m], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        from .runtime.lxc import remove_cgroups

        remove_cgroups(run.name)
        domainlogs.sweep_transient(conn, cfg.uri)  # libvirt's logs of earlier learn domains


def with_their_caps(run: SandboxConfig, units: Sequence[unitfile.UnitFile]) -> SandboxConfig:
    """The learning run gives the units the capabilities their own settings ask for, which
    the sandbox may lack (create names them): it is there to watch them at work, and one
    that fails at its start for a capability opens nothing (mariadb's CAP_IPC_LOCK)."""
    wanted = {c for _, c, _ in capneeds.lacking(list(units), confined_caps(run))}
    return dataclasses.replace(run, caps_add=tuple(sorted({*run.caps_add, *wanted})),
                               caps_drop=tuple(c for c in run.caps_drop if c not in wanted))


def own_generators(cfg: SandboxConfig) -> tuple[PathEvidence, ...]:
    from .clone import load_evidence

    return tuple(e for e in load_evidence(cfg)[0] if is_generator(e.path))


def replace_for_learning(cfg: SandboxConfig, tmp: str) -> SandboxConfig:
    return dataclasses.replace(cfg, name=f"vss-learn-{os.urandom(4).hex()}",
                               machine_id=os.urandom(16).hex(),  # a domain UUID of its own
                               state_dir=f"{tmp}/state", etc_overlay=True, networks=(),
                               mounts=(), image_size=None, private=(), shared=())


def _fragment(unit: unitfile.UnitFile) -> str:
    return str(unit.path) if unit.generated is None else f"/etc/systemd/system/{unit.name}"


def _overlay(tree: str, state: str, tmp: str) -> str:
    """The host's `tree` below, the run's own upper layer above, mounted under tmp."""
    name = tree.strip("/")
    upper, work, target = f"{state}/{name}", f"{tmp}/{name}-work", f"{tmp}/{name}-merged"
    if name == "etc":
        work = f"{state}/{ETC_WORK}"
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    opts = f"lowerdir={tree},upperdir={upper},workdir={work},{OVERLAY_OPTIONS}"
    proc = subprocess.run(["mount", "-t", "overlay", "-o", opts, "overlay", target],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostError(f"cannot mount the copy-up overlay of {tree}: {proc.stderr.strip()}",
                        "learn needs overlayfs ('virt-sandbox-service doctor')")
    return target


def _run(conn: libvirt.virConnect, p: Plan, facts: HostFacts, watch: Watch,
         units: Sequence[str], seconds: float) -> Seen:
    from .domain import METADATA_NS, lxc

    xml = lxc.build(p, facts, METADATA_NS)
    seen: set[str] = set()
    written: set[str] = set()
    kernelfs.load()
    with tempfile.TemporaryFile() as out, apparmor.loaded(xml):
        try:
            dom = conn.createXMLWithFiles(xml, [out.fileno()], libvirt.VIR_DOMAIN_START_AUTODESTROY
                                          | libvirt.VIR_DOMAIN_START_VALIDATE)
        except libvirt.libvirtError as e:
            raise HostError(f"libvirt could not start the learning run: "
                            f"{e.get_error_message()}",
                            "'virt-sandbox-service doctor' checks the host") from e
        try:
            # `seconds` from the units' first open: a slow or busy host's boot is not
            # counted (up to STARTUP_LIMIT for it).
            deadline = time.monotonic() + STARTUP_LIMIT
            started, theirs = False, Attribution(units)
            # A domain that ended (its init failed) has nothing more to show.
            while time.monotonic() < deadline and is_active(dom):
                for pid, path, wrote in watch.read(0.2):
                    if not theirs(pid):
                        continue
                    if not started:
                        started, deadline = True, time.monotonic() + seconds
                    if interesting(path):
                        (written if wrote else seen).add(path)
            if not started:
                log.warning("%s", nothing_seen(units, _states(dom, units)))
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    return Seen(frozenset(seen | written), frozenset(written))


def _states(dom: libvirt.virDomain, units: Sequence[str]) -> list[str] | None:
    """The units' states in the learning run, as its systemd tells them; None where the
    domain has ended or its systemd cannot be asked."""
    from .runtime import readiness

    if not is_active(dom):
        return None
    try:
        return [f"{s.name} {s.describe()}" for s in readiness.unit_states(dom, tuple(units))]
    except (HostError, OSError) as e:
        log.debug("learn: cannot ask the units' states: %s", e)
        return None


def nothing_seen(units: Sequence[str], states: Sequence[str] | None) -> str:
    """The warning for a learning run in which the units opened nothing under TREES: what
    learn then reports is not what the service needs, and their states say why (a unit
    still starting, one that failed, a domain that ended)."""
    names = ", ".join(units)
    if states is None:
        why = "the learning run ended or its systemd could not be asked"
    else:
        why = "their states there: " + "; ".join(states)
    return (f"{names} opened nothing under {', '.join(TREES)} within {STARTUP_LIMIT:g} s of "
            f"the learning run ({why}): what learn reports is incomplete")


def record(cfg: SandboxConfig, learned: Learned, added: Sequence[str]) -> None:
    """evidence.json: "observed" joins the reasons of each observed path the evidence has;
    what --add copied becomes private evidence; what the sandbox still lacks is listed
    under "learned" (not evidence yet: clone and upgrade re-plan from the evidence)."""
    path = Path(cfg.state_dir) / EVIDENCE_FILE
    data = json.loads(path.read_text())
    by_path = {e["path"]: e for e in data["evidence"]}
    for seen in learned.observed:
        entry = by_path.get(seen)
        if entry is None and seen in added:
            entry = {"path": seen, "access": "private", "dir": os.path.isdir(seen),
                     "reasons": ["added by learn --add"]}
            data["evidence"].append(entry)
        if entry is not None and OBSERVED not in entry["reasons"]:
            entry["reasons"].insert(0, OBSERVED)
    data["evidence"].sort(key=lambda e: e["path"].split("/"))
    data["learned"] = [{"path": p, "reasons": [f"{OBSERVED}: the sandbox lacks it"]}
                       for p in learned.add if p not in added]
    path.write_text(json.dumps(data, indent=2) + "\n")


def apply_add(cfg: SandboxConfig, paths: Paths, learned: Learned) -> list[str]:
    """Copy what to add under /var from the host into the instance's private /var, and
    under /etc (a host secret the sandbox hides: its whiteout goes) into its private /etc,
    and remember it as --private (and, through record(), as its evidence, which keeps a
    later start from hiding it again); what to add outside /etc and /var (/srv) is
    remembered so too, and `upgrade` copies it into the state and gives the domain its mount
    (the sandbox is stopped). With -i, /etc needs a new create. All or nothing: a failure
    undoes the copies and the config. A link the sandbox made on the way is never followed
    (the sandbox is stopped: nothing changes under our feet)."""
    done = []
    outside = [p for p in learned.add if not p.startswith(("/var/", "/etc/"))
               and os.path.lexists(p) and not os.path.islink(p)]
    cfg_path = paths.config_file(cfg.name)
    with Transaction() as txn:
        for path in learned.add:
            top = "/var" if path.startswith("/var/") else "/etc" if path.startswith("/etc/") \
                else None
            # -i: the private trees are in the image, which only a new create remakes.
            if top is None or not os.path.lexists(path) or (
                    top == "/etc" and cfg.image_size is not None):
                continue
            dst = Path(cfg.state_dir) / path.lstrip("/")
            _make_parents(path, Path(cfg.state_dir), txn, top)
            if _is_whiteout(dst):  # /etc: the host secret the sandbox hid, now its own copy
                dst.unlink()
                txn.did(f"removed the whiteout of {path}",
                        functools.partial(_rehide, dst, path))
            if not os.path.lexists(dst):
                files.copy_tree(path, str(dst), frozenset())
                txn.did(f"copied {path}", functools.partial(files.remove_copy, dst))
            done.append(path)
        done += outside
        if done:
            old = cfg_path.read_text()
            new = dataclasses.replace(cfg, private=tuple(dict.fromkeys((*cfg.private, *done))))
            files.write_file(cfg_path, new.to_json(), 0o644)
            txn.did(f"wrote {cfg_path}", lambda: files.write_file(cfg_path, old, 0o644))
        if outside:
            _mount_outside(paths, cfg.name, outside)
    return done


def _mount_outside(paths: Paths, name: str, outside: list[str]) -> None:
    """upgrade makes the new private paths of the config (all or nothing, its own undo)."""
    from . import upgrade

    report = upgrade.upgrade(paths, name)
    made = {p.path for p in report.new_private if p.made}
    missing = [p for p in outside if p not in made]
    if missing:  # raised inside learn's transaction: the config is put back too
        notes = {p.path: p.note for p in report.new_private}
        raise HostError(f"cannot add {missing[0]}: {notes.get(missing[0], 'not made')}",
                        f"create the sandbox again with --private {missing[0]}")


def _make_dir_like(host_path: str, dst: Path, txn: Transaction) -> None:
    host = os.stat(host_path)
    dst.mkdir(mode=0o700)
    txn.did(f"made {dst}", dst.rmdir)
    os.chown(dst, host.st_uid, host.st_gid)
    dst.chmod(host.st_mode & 0o7777)


def _rehide(dst: Path, path: str) -> None:
    files.make_whiteout(str(dst), path)


def _is_whiteout(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _make_parents(path: str, state: Path, txn: Transaction, top: str = "/var") -> None:
    """The parents of a path in the private tree `top` (/var or /etc), with the host's
    owners and modes; refuses a link on the way (the sandbox's root may have made it,
    pointing at the host)."""
    parent = os.path.dirname(path)
    chain = []
    while parent not in ("/", top):
        chain.append(parent)
        parent = os.path.dirname(parent)
    for p in [top, *reversed(chain)]:
        dst = state / p.lstrip("/")
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            _make_dir_like(p, dst, txn)
            continue
        if top == "/etc" and _is_whiteout(dst):
            # A hidden directory of the host's: it becomes an opaque one of the instance's,
            # which shows only what is added into it, never the host's other files there.
            dst.unlink()
            txn.did(f"removed the whiteout of {p}", functools.partial(_rehide, dst, p))
            _make_dir_like(p, dst, txn)
            os.setxattr(dst, files.OPAQUE_XATTR, b"y")
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise HostError(f"cannot add {path}: {dst} in the sandbox's state is not a "
                            "directory (a link the sandbox made?)",
                            f"look at it, or create the sandbox again with --private {path}")


def command(paths: Paths, name: str, *, add: bool, seconds: float) -> int:
    from .apply.libvirt import connect

    cfg = load_config(paths, name)
    conn = connect(cfg.uri)
    check(cfg, add, conn)
    facts = detect()
    seen = observe(cfg, facts, conn, paths, seconds)
    observed = sorted(seen.opened)
    data = json.loads((Path(cfg.state_dir) / EVIDENCE_FILE).read_text())
    lacking = would_add(observed, data["evidence"], data.get("hidden", []),
                        lambda p: instance_has(cfg.state_dir, p), seen.written)
    learned = Learned(tuple(observed), tuple(lacking))
    done = apply_add(cfg, paths, learned) if add else []
    record(cfg, learned, done)
    print(f"{name}: {', '.join(cfg.units)} opened {len(observed)} paths under "
          f"{', '.join(TREES)} (recorded in {EVIDENCE_FILE} as '{OBSERVED}')")
    for path in observed:
        lacks = any(under(path, t) for t in learned.add)
        print(f"  {'add ' if lacks else 'have'}  {path}")
    if not learned.add:
        print("nothing to add: the sandbox has every path its service opened")
        return 0
    for path in done:
        where = ("private /var" if path.startswith("/var/") else "private /etc"
                 if path.startswith("/etc/") else "state, with a mount of its own")
        print(f"added {path}: the host's, copied into the instance's {where}")
    rest = [p for p in learned.add if p not in done]
    if rest:
        how = f"'learn --add {name}' copies them, or " if not add else ""
        print(f"to add: {how}create the sandbox again with "
              + " ".join(f"--private {p}" for p in rest))
    return 0
