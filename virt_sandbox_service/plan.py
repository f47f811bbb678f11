"""config + host facts + evidence -> Plan. Pure: reads nothing, writes nothing.

The plan lists every file operation, every mount and the generated texts (domain XML, host
units), each with the reason it exists. `apply` carries it out; `--dry-run` prints it.

The private /etc, two layouts:
- overlay (LXC, the default): the sandbox's init mounts an overlay on /etc, the host's /etc
  below and <state>/etc as the upper layer. The upper layer holds what is the instance's own:
  the directories and files its service's packages and unit name (copied whole, and opaque,
  so the host's later changes there do not reach it), its identity files, its systemd
  configuration, and a whiteout for each host secret. The rest of /etc is the host's, as it
  is now (a host's fix to nsswitch.conf or openssl.cnf reaches every sandbox); what the
  sandbox changes is copied up into <state>/etc. A create writes ~250 inodes instead of a
  ~1000-inode copy. The mount lives in the sandbox's own mount namespace: nothing to mount,
  leak or clean up on the host. Secrets the host adds later get their whiteouts at the next
  start (runtime/lxc.py).
- copy (KVM, -i, user namespaces, --etc copy): a trimmed private copy of the host's /etc,
  bound on /etc. Self-contained: an overlay's upper layer cannot live on a 9p or virtiofs
  share, an image is written once, and under a user namespace the host's files would be
  owned by nobody. `upgrade` shows the copy's drift from the host instead of hiding it.
In both, the service's own configuration is private and compared by `upgrade`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import PurePosixPath

from . import image, users
from .config import Driver, Kind, SandboxConfig
from .errors import UserError
from .host import HostFacts
from .initscript import PAYLOAD_CGROUP as PAYLOAD_CGROUP
from .initscript import command as command
from .initscript import confine_argv as confine_argv
from .initscript import confine_mount, init_command
from .innerunits import CONFINEMENT_DROPIN as CONFINEMENT_DROPIN
from .innerunits import confinement_dropin as confinement_dropin
from .innerunits import systemd_ops
from .mounts import MountType, mount_dir, user_mounts
from .pathevidence import SKELETON_REASONS, Access, PathEvidence, under

# The plan's vocabulary lives in plantypes.py; importers keep finding it here.
from .plantypes import ETC_STAGE as ETC_STAGE
from .plantypes import ETC_STAGE_MOUNTS as ETC_STAGE_MOUNTS
from .plantypes import ETC_WORK as ETC_WORK
from .plantypes import EVIDENCE_FILE as EVIDENCE_FILE
from .plantypes import EXIT_STATUS_FILE as EXIT_STATUS_FILE
from .plantypes import GO_FIFO as GO_FIFO
from .plantypes import HOST_CHANNEL as HOST_CHANNEL
from .plantypes import MARKER as MARKER
from .plantypes import NOTIFY_SOCKET as NOTIFY_SOCKET
from .plantypes import OVERLAY_OPTIONS as OVERLAY_OPTIONS
from .plantypes import TMPFS as TMPFS
from .plantypes import AddUser as AddUser
from .plantypes import CopyTree as CopyTree
from .plantypes import FileOp as FileOp
from .plantypes import MakeDir as MakeDir
from .plantypes import MakeImage as MakeImage
from .plantypes import Mount as Mount
from .plantypes import Opaque as Opaque
from .plantypes import Plan as Plan
from .plantypes import Symlink as Symlink
from .plantypes import Whiteout as Whiteout
from .plantypes import WriteFile as WriteFile
from .plantypes import kept_generators as kept_generators
from .plantypes import managed as managed
from .plantypes import seen_at as seen_at

# The host's own virtualization config: every sandbox's domain definition (written by
# libvirtd, even while we copy). No confined service needs it, and none may read its
# neighbours' definitions.
HOST_ONLY_ETC = ("/etc/libvirt",)




def state_path(plan_state: str, sandbox_path: str, under: str) -> str:
    """Where a sandbox path under `under` (/etc or /var) lives in the state dir."""
    rel = os.path.relpath(sandbox_path, under)
    base = os.path.join(plan_state, under.strip("/"))
    return base if rel == "." else os.path.join(base, rel)


def other_path(state: str, sandbox_path: str) -> str:
    """Private paths outside /etc and /var: kept under state/paths/, one bind mount each."""
    return os.path.join(state, "paths", sandbox_path.strip("/").replace("/", "%"))


def plan(config: SandboxConfig, facts: HostFacts, evidence: tuple[PathEvidence, ...],
         hidden: tuple[PathEvidence, ...], config_path: str, run_dir: str,
         unit_fragments: tuple[tuple[str, str], ...] = (),
         unit_needs: tuple[tuple[str, str], ...] = ()) -> Plan:
    """Build the plan. `unit_fragments` maps each confined unit to its fragment file;
    `unit_needs` are (unit, capability) pairs its own settings or program ask for that the
    sandbox does not give (capneeds.py): its drop-in asserts them."""
    state = config.state_dir
    files: list[FileOp] = [
        MakeDir(state, 0o700, reason="the sandbox's state directory"),
        WriteFile(os.path.join(state, MARKER), f"{config.name}\n", 0o644,
                  reason="marks the directory as made by virt-sandbox-service (delete checks it)"),
    ]
    files += _etc_ops(config, facts, evidence, hidden, unit_fragments, unit_needs)
    files += _var_ops(config, facts, evidence)
    files += _other_private_ops(state, evidence)
    files += _mount_ops(config)
    files += _loader_ops(config, facts)
    mounts = _mounts(config, facts, evidence, run_dir)
    user_files, user_mounts = _user_ops(config, files)
    files += user_files
    mounts += user_mounts
    if config.image_size is not None:
        mounts = image_mounts(mounts, image.image_path(state))
        files.append(MakeImage(image.image_path(state), config.image_size,
                               reason="-i: the private /etc and /var, in an image"))
    if config.etc_overlay:
        mounts = overlay_mounts(mounts, state)
    init, env = init_command(config, facts, mounts, kept_generators(evidence))
    return Plan(config=config, config_path=config_path, state_dir=state, run_dir=run_dir,
                evidence=evidence, hidden=hidden, mounts=mounts, files=tuple(files),
                init=init, init_env=env)


def _etc_ops(config: SandboxConfig, facts: HostFacts, evidence: tuple[PathEvidence, ...],
             hidden: tuple[PathEvidence, ...], unit_fragments: tuple[tuple[str, str], ...],
             unit_needs: tuple[tuple[str, str], ...]) -> list[FileOp]:
    etc = os.path.join(config.state_dir, "etc")
    sysd = os.path.join(etc, "systemd", "system")
    wants = tuple(os.path.join("/etc/systemd/system", d) for d in facts.etc_wants_dirs)
    if config.etc_overlay:
        ops = _upper_ops(config, evidence, hidden, wants)
    else:
        exclude = (tuple(h.path for h in hidden) + wants + facts.shared_etc + HOST_ONLY_ETC
                   + (facts.etc_rc_dirs if config.kind is Kind.SERVICE else ()))
        ops = [CopyTree("/etc", etc, exclude, reason="the host's configuration, without its "
                        "secrets and its boot's .wants")]
        ops += managed(MakeDir(state_path(config.state_dir, d, "/etc"),
                               reason="mount point: the host's tree, shared read-only")
                       for d in facts.shared_etc)
    ops += _identity_ops(config, etc)
    if config.kind is Kind.SERVICE:
        ops += systemd_ops(config, sysd, facts.system_unit_dir, unit_fragments, unit_needs)
        ops += _rc_ops(config, facts)
    return ops


def _rc_ops(config: SandboxConfig, facts: HostFacts) -> list[FileOp]:
    """A unit sandbox's SysV boot links are empty: systemd's sysv generator would otherwise
    start every host init script enabled there (as it enables the host's .wants)."""
    ops: list[FileOp] = []
    for d in facts.etc_rc_dirs:
        path = state_path(config.state_dir, d, "/etc")
        ops.append(MakeDir(path, reason="no host init script starts in the sandbox"))
        if config.etc_overlay:
            ops.append(Opaque(path, reason="the host's SysV boot links are not the sandbox's"))
    return managed(ops)


def _identity_ops(config: SandboxConfig, etc: str) -> list[FileOp]:
    return [
        WriteFile(os.path.join(etc, "hostname"), f"{config.name}\n", reason="hostname = NAME"),
        WriteFile(os.path.join(etc, "machine-id"), f"{config.machine_id}\n", 0o444,
                  reason="a machine-id of the instance's own"),
        WriteFile(os.path.join(etc, "fstab"),
                  "# The sandbox's mounts come from its libvirt domain.\n",
                  reason="the host's fstab is not the sandbox's"),
        WriteFile(os.path.join(etc, "hosts"), _hosts(config.name), reason="the instance's name"),
    ]


def _upper_ops(config: SandboxConfig, evidence: tuple[PathEvidence, ...],
               hidden: tuple[PathEvidence, ...], wants: tuple[str, ...]) -> list[FileOp]:
    """Overlay /etc: the upper layer (see the module's docstring)."""
    ops: list[FileOp] = managed([
        MakeDir(os.path.join(config.state_dir, "etc"),
                reason="the upper layer of the sandbox's /etc: the instance's own files"),
        MakeDir(os.path.join(config.state_dir, ETC_WORK), 0o700,
                reason="the overlay's work directory (same file system as the upper layer)"),
    ])
    extra = []
    if config.kind is Kind.SERVICE:
        extra.append(PathEvidence("/etc/systemd/system", Access.PRIVATE, True,
                                  ("the sandbox's systemd: the host's units and drop-ins, "
                                   "without its boot's .wants",), (0, 0), 0o755))
    owned = _owned_tops((*evidence, *extra))
    secrets = tuple(h.path for h in hidden)
    return [*ops, *_owned_ops(config, evidence, owned, secrets + wants),
            *_whiteout_ops(config, owned, secrets)]


def _owned_ops(config: SandboxConfig, evidence: tuple[PathEvidence, ...],
               owned: list[PathEvidence], left_out: tuple[str, ...]) -> list[FileOp]:
    """The instance's own parts of /etc, copied whole; its directories opaque."""
    etc = os.path.join(config.state_dir, "etc")
    ops: list[FileOp] = []
    made: set[str] = {"/etc"}
    for ev in owned:
        dst = state_path(config.state_dir, ev.path, "/etc")
        ops += _parents(ev.path, "/etc", etc, made, evidence)
        made.add(ev.path)
        why = "; ".join(ev.reasons)
        if ev.mode is None:  # named by the unit or a package, but not on the host
            ops.append(MakeDir(dst if ev.is_dir else os.path.dirname(dst),
                               reason=f"{why} (not on the host)"))
            continue
        inside = tuple(x for x in left_out if under(x, ev.path) and x != ev.path)
        ops.append(CopyTree(ev.path, dst, inside, reason=f"{why} (the instance's own)"))
        if ev.is_dir:
            ops.append(Opaque(dst, reason="the host's later changes here do not reach it"))
    return ops


def _whiteout_ops(config: SandboxConfig, owned: list[PathEvidence],
                  secrets: tuple[str, ...]) -> list[FileOp]:
    """A whiteout for each host secret and host-only tree that no copied directory covers."""
    ops: list[FileOp] = []
    covered = [e.path for e in owned if e.is_dir]
    for path in (*HOST_ONLY_ETC, *secrets):
        if any(under(path, c) for c in covered):
            continue  # left out of a copy, or under a whiteout already
        covered.append(path)
        ops.append(Whiteout(state_path(config.state_dir, path, "/etc"), path,
                            reason="a host secret: not world-readable on the host"
                            if path in secrets else "the host's own configuration"))
    return ops


def _owned_tops(evidence: tuple[PathEvidence, ...]) -> list[PathEvidence]:
    """The service's private paths under /etc that lie under no other one of them."""
    own = [e for e in evidence if e.access is Access.PRIVATE and under(e.path, "/etc")
           and e.path != "/etc"]
    paths = {e.path for e in own}
    tops: dict[str, PathEvidence] = {}
    for e in own:
        if not any(str(p) in paths for p in PurePosixPath(e.path).parents):
            tops.setdefault(e.path, e)
    return list(tops.values())


def _hosts(name: str) -> str:
    return (f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")








def _var_ops(config: SandboxConfig, facts: HostFacts,
             evidence: tuple[PathEvidence, ...]) -> list[FileOp]:
    var = os.path.join(config.state_dir, "var")
    ops: list[FileOp] = [MakeDir(var, 0o755, reason="the instance's private /var")]
    for name, target in facts.var_symlinks:
        ops.append(Symlink(os.path.join(var, name), target, reason="as on the host"))
    made: set[str] = {"/var"}
    for ev in evidence:
        if ev.access is not Access.PRIVATE or not under(ev.path, "/var"):
            continue
        ops += _parents(ev.path, "/var", var, made, evidence)
        copy = config.copy and _copyable(ev, evidence)
        ops += _private_item(ev, state_path(config.state_dir, ev.path, "/var"), copy)
        made.add(ev.path)
    return ops


def _copyable(ev: PathEvidence, evidence: tuple[PathEvidence, ...]) -> bool:
    """-C copies the service's own directories: leaves of the evidence that some directive or
    package names. A parent such as /var/lib, or a skeleton dir such as /var/log/journal,
    would copy other services' data or the host's logs."""
    if not set(ev.reasons) - SKELETON_REASONS:
        return False
    return not any(o.path.startswith(ev.path + "/") for o in evidence)


def _other_private_ops(state: str, evidence: tuple[PathEvidence, ...]) -> list[FileOp]:
    ops: list[FileOp] = []
    outside = [e for e in evidence if e.access is Access.PRIVATE
               and not under(e.path, "/var") and not under(e.path, "/etc")]
    if outside:
        ops.append(MakeDir(os.path.join(state, "paths"), 0o755,
                           reason="private paths outside /etc and /var"))
    for ev in outside:
        ops += _private_item(ev, other_path(state, ev.path), copy=True)
    return ops


def _parents(path: str, top: str, base: str, made: set[str],
             evidence: tuple[PathEvidence, ...]) -> list[FileOp]:
    """Directories between `top` and `path` that no evidence names: made like the host's."""
    known = {e.path: e for e in evidence}
    ops: list[FileOp] = []
    for parent in reversed(PurePosixPath(path).parents):
        p = str(parent)
        if not under(p, top) or p in made or p == path:
            continue
        made.add(p)
        ev = known.get(p)
        ops.append(MakeDir(os.path.join(base, os.path.relpath(p, top)),
                           ev.mode if ev and ev.mode is not None else 0o755,
                           *(ev.owner if ev and ev.owner else (0, 0)),
                           reason=f"parent of {path}"))
    return ops


def _private_item(ev: PathEvidence, dst: str, copy: bool) -> list[FileOp]:
    reason = "; ".join(ev.reasons)
    uid, gid = ev.owner if ev.owner else (0, 0)
    exists = ev.mode is not None
    if not ev.is_dir and exists:
        return [CopyTree(ev.path, dst, reason=reason)]
    if ev.is_dir and copy and exists:
        return [CopyTree(ev.path, dst, reason=f"{reason} (copied: -C)")]
    mode = ev.mode if ev.mode is not None else 0o755
    return [MakeDir(dst, mode, uid, gid, reason=reason)]


# The host's private trees (host.private_trees: the homes, and what others cannot search
# below the root) are covered by an empty tmpfs of the sandbox's own: its root, which is the
# host's root where no LSM or user namespace holds it back, would otherwise read them, and
# connect to a unix socket there, on the shared host root. Room for a shell's history.
HIDDEN_KIB = 1024
HIDDEN_REASON = "the host's private tree, hidden (an empty tmpfs of the sandbox's own)"


def hidden_trees(facts: HostFacts, evidence: tuple[PathEvidence, ...]) -> list[str]:
    """The host's private trees the sandbox does not see: all but one the evidence or the
    administrator (--shared) shares whole, or with what holds it, and one in a tree that is
    the sandbox's own (--private /data: its copy is there, not the host's)."""
    seen = [e.path for e in evidence if e.access in (Access.SHARED, Access.PRIVATE)]
    return [t for t in facts.private_trees if not any(under(t, s) for s in seen)]


def _mounts(config: SandboxConfig, facts: HostFacts, evidence: tuple[PathEvidence, ...],
            run_dir: str) -> tuple[Mount, ...]:
    state = config.state_dir
    mounts = [
        Mount("/", "/", readonly=True, reason="the host's root filesystem, read-only"),
        Mount("/etc", os.path.join(state, "etc"), reason="private /etc"),  # see overlay_mounts
        Mount("/var", os.path.join(state, "var"), reason="private /var"),
    ]
    mounts += [Mount(d, d, readonly=True,
                     reason="managed by the host's package tools; shared read-only")
               for d in facts.shared_etc]
    mounts += loader_mounts(config, facts)
    hidden = hidden_trees(facts, evidence)
    own: list[Mount] = []
    own_below_hidden: list[Mount] = []
    for ev in evidence:
        if ev.access is Access.PRIVATE and not any(under(ev.path, t) for t in ("/var", "/etc")):
            below = any(under(ev.path, t) for t in hidden)
            (own_below_hidden if below else own).append(
                Mount(ev.path, other_path(state, ev.path), reason="; ".join(ev.reasons)))
    mounts += own
    for target, kib in TMPFS:
        mounts.append(Mount(target, "", tmpfs_kib=kib, reason="private tmpfs"))
    mounts += [Mount(t, "", tmpfs_kib=HIDDEN_KIB, reason=HIDDEN_REASON) for t in hidden]
    # The sandbox's own copy of a path below a hidden tree goes on top of it.
    mounts += own_below_hidden
    # What the evidence shares below a hidden tree (a WorkingDirectory= there) is the
    # host's again, read-only, on top of it; --shared paths are bound below.
    mounts += [Mount(ev.path, ev.path, readonly=True, reason="; ".join(ev.reasons))
               for ev in evidence if ev.access is Access.SHARED and "--shared" not in ev.reasons
               and any(under(ev.path, t) for t in hidden)]
    # After /run: the binds must sit on top of the sandbox's /run tmpfs.
    mounts.append(Mount(HOST_CHANNEL, run_dir, reason="readiness and exit status to the host"))
    if config.driver is Driver.LXC:
        mounts.append(confine_mount(facts))
    for ev in evidence:
        if ev.access is Access.SHARED and "--shared" in ev.reasons:
            mounts.append(Mount(ev.path, ev.path, readonly=True, reason="--shared"))
    mounts += user_mounts(config)
    return tuple(mounts)


# The dynamic loader's configuration in /etc. The sandbox's /etc is its own, writable by its
# root, and its init (with CAP_SYS_ADMIN, before it confines anything) and the tool's execute
# run dynamic programs in it: a library listed there would run in them unconfined. So the
# host's are bound read-only on the sandbox's (an empty list where the host has no preload
# file): they describe the host's /usr, which is the sandbox's too.
LOADER_CACHE = "/etc/ld.so.cache"
LOADER_PRELOAD = "/etc/ld.so.preload"
LOADER_REASON = ("the dynamic loader's configuration, the host's, read-only: no library the "
                 "sandbox plants is loaded by its init or by execute")


def loader_mounts(config: SandboxConfig, facts: HostFacts) -> list[Mount]:
    if config.driver is not Driver.LXC:
        return []  # a VM's init and agent run under its own kernel
    preload = LOADER_PRELOAD if facts.ld_preload else empty_preload(config.state_dir)
    return [Mount(LOADER_CACHE, LOADER_CACHE, readonly=True, file=True, reason=LOADER_REASON),
            Mount(LOADER_PRELOAD, preload, readonly=True, file=True, reason=LOADER_REASON)]


def empty_preload(state: str) -> str:
    return os.path.join(state, "loader", "ld.so.preload")


def _loader_ops(config: SandboxConfig, facts: HostFacts) -> list[FileOp]:
    if config.driver is not Driver.LXC or facts.ld_preload:
        return []
    path = empty_preload(config.state_dir)
    return managed([MakeDir(os.path.dirname(path), 0o755, reason="the loader files bound on /etc"),
                    WriteFile(path, "", 0o644, reason="an empty preload list, bound read-only "
                              "on /etc/ld.so.preload")])


def _mount_ops(config: SandboxConfig) -> list[FileOp]:
    """Directories user mounts need: their own empty dirs, and targets in the private trees
    (the host root is read-only, so a target elsewhere must already exist there)."""
    ops: list[FileOp] = []
    specs = list(config.mounts)
    fresh = [s for s in specs if s.type is MountType.HOST_BIND and not s.source]
    if fresh:
        ops.append(MakeDir(os.path.join(config.state_dir, "mounts"), 0o755,
                           reason="empty directories of -m host-bind:DST="))
    ops += [MakeDir(mount_dir(config.state_dir, s.target), 0o755, reason=f"-m {s.target}")
            for s in fresh]
    for s in specs:
        for top in ("/var", "/etc"):
            if under(s.target, top) and s.target != top:
                ops.append(MakeDir(state_path(config.state_dir, s.target, top), 0o755,
                                   reason=f"mount point of -m {s.type.value}:{s.target}"))
    return managed(ops)


def _user_ops(config: SandboxConfig,
              planned: list[FileOp]) -> tuple[list[FileOp], tuple[Mount, ...]]:
    """-U: the user's passwd/group entries and home directory (see users.py for where)."""
    r = users.from_config(config.uid, config.gid, config.username, config.homedir)
    if r is None:
        return [], ()
    etc = os.path.join(config.state_dir, "etc")
    ops: list[FileOp] = [
        CopyTree(f"/etc/{f}", os.path.join(etc, f), reason="copied up to take the user of -U")
        for f in ("passwd", "group") if config.etc_overlay]
    ops.append(AddUser(etc, r.uid, r.gid, r.name, r.home,
                       reason=f"the user of -U {r.uid} ({r.name}), if /etc lacks it"))
    place = users.home_place(r.home, _host_bind_targets(config))
    why = f"home of {r.name}, writable by it"
    if place is users.HomePlace.STATE:
        home = os.path.join(config.state_dir, "home")
        ops.append(MakeDir(home, 0o700, r.uid, r.gid, reason=why))
        return ops, (Mount(r.home, home, reason=f"{why} (the instance's own)"),)
    if place is users.HomePlace.SHARED:
        return ops, ()
    made = {op.dst if isinstance(op, CopyTree) else op.path for op in planned}
    target = state_path(config.state_dir, r.home, "/var")
    clash = sorted(p for p in made if p == target or p.startswith(target + "/"))
    if clash:
        raise UserError(f"--homedir {r.home} is a directory the sandbox's /var already has "
                        f"({clash[0]}); it would change owner",
                        f"choose a directory of its own, e.g. {users.HOME_ROOT}/{r.name}")
    for parent in reversed(PurePosixPath(r.home).parents):
        p = state_path(config.state_dir, str(parent), "/var")
        if under(str(parent), "/var") and str(parent) != "/var" and p not in made:
            ops.append(MakeDir(p, reason=f"parent of {r.home}"))
    ops.append(MakeDir(target, 0o700, r.uid, r.gid, reason=why))
    return ops, ()


def image_mounts(mounts: tuple[Mount, ...], path: str) -> tuple[Mount, ...]:
    """-i: the image replaces the /etc and /var binds; it is mounted at a hidden place on the
    /run tmpfs, with what belongs under /etc and /var mounted under it (see image.py)."""
    img = Mount(image.IMAGE_MOUNT, path, image=True,
                reason="-i: the private /etc and /var, bound there by the sandbox's init")
    return _staged(mounts, ("/etc", "/var"), image.IMAGE_MOUNT, img)


def overlay_mounts(mounts: tuple[Mount, ...], state: str) -> tuple[Mount, ...]:
    """Overlay /etc: no bind on /etc. The state directory (upper and work layers) and what
    belongs on top of /etc are mounted under ETC_STAGE on the /run tmpfs; the sandbox's init
    mounts the overlay, then moves them onto it (see _overlay_binds)."""
    layers = Mount(f"{ETC_STAGE}/state", state,
                   reason="the upper layer of /etc (etc/) and its work directory, for the "
                   "sandbox's init")
    return _staged(mounts, ("/etc",), ETC_STAGE_MOUNTS, layers)


def _staged(mounts: tuple[Mount, ...], trees: tuple[str, ...], prefix: str,
            head: Mount) -> tuple[Mount, ...]:
    """The binds on `trees` dropped, and what belongs under them mounted under `prefix`
    instead, for the sandbox's init to put in place; `head` and those right after /run (on
    its tmpfs), in their order."""
    out: list[Mount] = []
    inside: list[Mount] = []
    for m in mounts:
        if m.target in trees:
            continue
        if any(under(m.target, t) for t in trees):
            inside.append(replace(m, target=prefix + m.target))
        else:
            out.append(m)
    at = next(i for i, m in enumerate(out) if m.target == "/run") + 1
    return (*out[:at], head, *inside, *out[at:])


def _host_bind_targets(config: SandboxConfig) -> tuple[str, ...]:
    return tuple(s.target for s in config.mounts
                 if s.type is MountType.HOST_BIND)






