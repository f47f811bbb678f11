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
import shlex
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from . import confine, image, users
from .config import Driver, Kind, SandboxConfig
from .errors import UserError
from .evidence import SKELETON_REASONS, Access, PathEvidence
from .host import HostFacts
from .limits import TASKS_ENV, confined_caps, init_caps
from .mounts import MountType, parse_mount
from .network import networkd_file, parse_network

# Inside the sandbox: a directory bound from the host's run dir, carrying the notify socket the
# sandbox's systemd reports readiness on and the generic command's exit status.
HOST_CHANNEL = "/run/sandbox-host"
NOTIFY_SOCKET = f"{HOST_CHANNEL}/notify"
EXIT_STATUS_FILE = f"{HOST_CHANNEL}/exit-status"
# A generic sandbox started in the foreground: a FIFO the host makes; the init runs the command
# once the host has written to it, i.e. once the host copies the console (its first lines
# would be lost otherwise: libvirt keeps nothing of a console nobody reads).
GO_FIFO = f"{HOST_CHANNEL}/go"
FAILED_UNIT = "virt-sandbox-service-failed@.service"
MARKER = ".virt-sandbox-service"
EVIDENCE_FILE = "evidence.json"  # in the state dir: why each path is private, hidden or shared

# Units of the host's boot that a confined service never needs; masked in the instance.
MASKED_UNITS = (
    ("getty.target", "no logins on the sandbox console"),
    ("console-getty.service", "no logins on the sandbox console"),
    ("systemd-logind.service", "no user sessions in a service sandbox"),
)

# The host's own virtualization config: every sandbox's domain definition (written by
# libvirtd, even while we copy). No confined service needs it, and none may read its
# neighbours' definitions.
HOST_ONLY_ETC = ("/etc/libvirt",)
ETC_WORK = ".etc-work"  # overlay /etc: the work directory beside the upper layer <state>/etc
# Overlay /etc: where the sandbox's init finds the state directory (upper and work layers) and
# the mounts that belong on top of /etc; it detaches all of it once they are in place.
ETC_STAGE = "/run/.vss-etc"
ETC_STAGE_MOUNTS = f"{ETC_STAGE}/mnt"  # + the target under /etc
ETC_MERGED = f"{ETC_STAGE}/merged"  # where the init builds the overlay before moving it
OVERLAY_OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"  # a plain upper layer

TMPFS = (("/run", 65536), ("/tmp", 262144), ("/dev/shm", 65536))


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    reason: str = ""


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str
    mode: int = 0o644
    reason: str = ""


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    reason: str = ""


@dataclass(frozen=True)
class CopyTree:
    """Copy src to dst keeping owners, modes and symlinks; `exclude` are src paths left out."""

    src: str
    dst: str
    exclude: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class AddUser:
    """Give the user of -U an entry in the private passwd and group files in `path` (an etc
    dir), after they were copied: added where the uid (gid) has none (see users.py)."""

    path: str
    uid: int
    gid: int
    name: str
    home: str
    reason: str = ""


@dataclass(frozen=True)
class MakeImage:
    """-i: move the private trees made so far into the image `path` of `size` bytes; with
    `source`, copy that image instead, write the trees made so far into the copy, and empty
    the directories `drop` (paths inside the image). See image.py."""

    path: str
    size: int
    source: str = ""
    drop: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Whiteout:
    """Overlay /etc: hide the host's `hides` (a path under /etc) from the sandbox with a
    whiteout at `path` in the upper layer. Missing parents are made like the host's."""

    path: str
    hides: str
    reason: str = ""


@dataclass(frozen=True)
class Opaque:
    """Overlay /etc: the directory `path` of the upper layer hides the host's directory of
    the same name: the sandbox sees only what the upper layer has there."""

    path: str
    reason: str = ""


FileOp = MakeDir | WriteFile | Symlink | CopyTree | AddUser | MakeImage | Whiteout | Opaque


@dataclass(frozen=True)
class Mount:
    target: str  # path in the sandbox
    source: str  # host path; "" for tmpfs
    readonly: bool = False
    tmpfs_kib: int = 0
    reason: str = ""
    image: bool = False  # source is a raw file-system image (loop-mounted)
    file: bool = False  # source is a file: the init makes the target a file of its own first


@dataclass(frozen=True)
class Plan:
    config: SandboxConfig
    config_path: str
    state_dir: str
    run_dir: str
    evidence: tuple[PathEvidence, ...]
    hidden: tuple[PathEvidence, ...]
    mounts: tuple[Mount, ...]
    files: tuple[FileOp, ...]
    init: tuple[str, ...]
    init_env: tuple[tuple[str, str], ...]
    domain_xml: str = ""
    unit_files: tuple[tuple[str, str], ...] = field(default=())


def state_path(plan_state: str, sandbox_path: str, under: str) -> str:
    """Where a sandbox path under `under` (/etc or /var) lives in the state dir."""
    rel = os.path.relpath(sandbox_path, under)
    base = os.path.join(plan_state, under.strip("/"))
    return base if rel == "." else os.path.join(base, rel)


def other_path(state: str, sandbox_path: str) -> str:
    """Private paths outside /etc and /var: kept under state/paths/, one bind mount each."""
    return os.path.join(state, "paths", sandbox_path.strip("/").replace("/", "%"))


def _in(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


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
    init, env = init_command(config, facts, mounts)
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
        ops += [MakeDir(state_path(config.state_dir, d, "/etc"),
                        reason="mount point: the host's tree, shared read-only")
                for d in facts.shared_etc]
    ops += _identity_ops(config, etc)
    if config.kind is Kind.SERVICE:
        ops += _systemd_ops(config, sysd, facts.system_unit_dir, unit_fragments, unit_needs)
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
    return ops


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
    ops: list[FileOp] = [
        MakeDir(os.path.join(config.state_dir, "etc"),
                reason="the upper layer of the sandbox's /etc: the instance's own files"),
        MakeDir(os.path.join(config.state_dir, ETC_WORK), 0o700,
                reason="the overlay's work directory (same file system as the upper layer)"),
    ]
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
        inside = tuple(x for x in left_out if _in(x, ev.path) and x != ev.path)
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
        if any(_in(path, c) for c in covered):
            continue  # left out of a copy, or under a whiteout already
        covered.append(path)
        ops.append(Whiteout(state_path(config.state_dir, path, "/etc"), path,
                            reason="a host secret: not world-readable on the host"
                            if path in secrets else "the host's own configuration"))
    return ops


def _owned_tops(evidence: tuple[PathEvidence, ...]) -> list[PathEvidence]:
    """The service's private paths under /etc that lie under no other one of them."""
    own = [e for e in evidence if e.access is Access.PRIVATE and _in(e.path, "/etc")
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


def _systemd_ops(config: SandboxConfig, sysd: str, unit_dir: str,
                 unit_fragments: tuple[tuple[str, str], ...],
                 unit_needs: tuple[tuple[str, str], ...]) -> list[FileOp]:
    wants = os.path.join(sysd, "multi-user.target.wants")
    ops: list[FileOp] = [
        MakeDir(wants, reason="the confined unit(s), and nothing else, are enabled"),
        Symlink(os.path.join(sysd, "default.target"),
                os.path.join(unit_dir, "multi-user.target"),
                reason="boot to multi-user.target"),
    ]
    for unit, fragment in unit_fragments:
        ops.append(Symlink(os.path.join(wants, unit), fragment,
                           reason=f"enable {unit} in the sandbox"))
        dropin = os.path.join(sysd, f"{unit}.d")
        ops.append(MakeDir(dropin, reason=f"drop-in for {unit}"))
        ops.append(WriteFile(os.path.join(dropin, "50-virt-sandbox-service.conf"),
                             f"[Unit]\nOnFailure={FAILED_UNIT[:-9]}@%n.service\n",
                             reason="report the unit's failure to the host"))
        ops.append(WriteFile(os.path.join(dropin, CONFINEMENT_DROPIN),
                             confinement_dropin(config, tuple(
                                 c for u, c in unit_needs if u == unit)),
                             reason=f"{unit}'s own confinement layers"))
    ops += _networkd_ops(config, sysd, unit_dir)
    ops.append(WriteFile(os.path.join(sysd, FAILED_UNIT), _failed_unit_text(),
                         reason="tells the host which unit failed (start fails with it)"))
    for unit, why in MASKED_UNITS:
        ops.append(Symlink(os.path.join(sysd, unit), "/dev/null", reason=f"masked: {why}"))
    return ops


def _networkd_ops(config: SandboxConfig, sysd: str, unit_dir: str) -> list[FileOp]:
    """-N ...,dhcp: systemd-networkd in the sandbox runs the DHCP client on that interface."""
    dhcp = [i for i, n in enumerate(config.networks) if parse_network(n).dhcp]
    if config.driver is Driver.KVM:
        return []  # the guest init writes networkd files matched by MAC (initrd/init)
    if not dhcp:
        return []
    netdir = os.path.join(os.path.dirname(os.path.dirname(sysd)), "systemd", "network")
    ops: list[FileOp] = [MakeDir(netdir, reason="networkd configuration for -N dhcp")]
    ops += [WriteFile(os.path.join(netdir, f"50-vss-eth{i}.network"), networkd_file(i),
                      reason=f"DHCP on eth{i} (-N ...,dhcp)") for i in dhcp]
    ops.append(Symlink(os.path.join(sysd, "multi-user.target.wants", "systemd-networkd.service"),
                       os.path.join(unit_dir, "systemd-networkd.service"),
                       reason="DHCP client for -N ...,dhcp"))
    return ops


def _failed_unit_text() -> str:
    return (
        "[Unit]\n"
        "Description=Report the failure of %I to the sandbox's host\n"
        "DefaultDependencies=no\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"Environment=NOTIFY_SOCKET={NOTIFY_SOCKET}\n"
        # "-": after a detached start nobody listens, and the sandbox must not turn degraded.
        "ExecStart=-/bin/systemd-notify VSS_FAILED=%i\n"
    )


def _var_ops(config: SandboxConfig, facts: HostFacts,
             evidence: tuple[PathEvidence, ...]) -> list[FileOp]:
    var = os.path.join(config.state_dir, "var")
    ops: list[FileOp] = [MakeDir(var, 0o755, reason="the instance's private /var")]
    for name, target in facts.var_symlinks:
        ops.append(Symlink(os.path.join(var, name), target, reason="as on the host"))
    made: set[str] = {"/var"}
    for ev in evidence:
        if ev.access is not Access.PRIVATE or not _in(ev.path, "/var"):
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
               and not _in(e.path, "/var") and not _in(e.path, "/etc")]
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
        if not _in(p, top) or p in made or p == path:
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
    for ev in evidence:
        if ev.access is Access.PRIVATE and not _in(ev.path, "/var") and not _in(ev.path, "/etc"):
            mounts.append(Mount(ev.path, other_path(state, ev.path), reason="; ".join(ev.reasons)))
    for target, kib in TMPFS:
        mounts.append(Mount(target, "", tmpfs_kib=kib, reason="private tmpfs"))
    # After /run: the binds must sit on top of the sandbox's /run tmpfs.
    mounts.append(Mount(HOST_CHANNEL, run_dir, reason="readiness and exit status to the host"))
    if config.driver is Driver.LXC:
        mounts.append(confine_mount(facts))
    for ev in evidence:
        if ev.access is Access.SHARED and "--shared" in ev.reasons:
            mounts.append(Mount(ev.path, ev.path, readonly=True, reason="--shared"))
    mounts += _user_mounts(config)
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
    return [MakeDir(os.path.dirname(path), 0o755, reason="the loader files bound on /etc"),
            WriteFile(path, "", 0o644, reason="an empty preload list, bound read-only on "
                      "/etc/ld.so.preload")]


def _user_mounts(config: SandboxConfig) -> list[Mount]:
    out = []
    for spec in map(parse_mount, config.mounts):
        why = f"-m {spec.type.value}"
        if spec.type is MountType.RAM:
            out.append(Mount(spec.target, "", tmpfs_kib=max(spec.size // 1024, 1), reason=why))
        elif spec.type is MountType.HOST_IMAGE:
            out.append(Mount(spec.target, spec.source, image=True, reason=why))
        elif spec.type is MountType.HOST_BIND:
            source = spec.source or mount_dir(config.state_dir, spec.target)
            out.append(Mount(spec.target, source, reason=why))
    return out


def mount_dir(state: str, target: str) -> str:
    """The instance's own directory behind an empty-source host-bind mount."""
    return os.path.join(state, "mounts", target.strip("/").replace("/", "%"))


def _mount_ops(config: SandboxConfig) -> list[FileOp]:
    """Directories user mounts need: their own empty dirs, and targets in the private trees
    (the host root is read-only, so a target elsewhere must already exist there)."""
    ops: list[FileOp] = []
    specs = [parse_mount(m) for m in config.mounts]
    fresh = [s for s in specs if s.type is MountType.HOST_BIND and not s.source]
    if fresh:
        ops.append(MakeDir(os.path.join(config.state_dir, "mounts"), 0o755,
                           reason="empty directories of -m host-bind:DST="))
    ops += [MakeDir(mount_dir(config.state_dir, s.target), 0o755, reason=f"-m {s.target}")
            for s in fresh]
    for s in specs:
        for top in ("/var", "/etc"):
            if _in(s.target, top) and s.target != top:
                ops.append(MakeDir(state_path(config.state_dir, s.target, top), 0o755,
                                   reason=f"mount point of -m {s.type.value}:{s.target}"))
    return ops


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
        if _in(str(parent), "/var") and str(parent) != "/var" and p not in made:
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
        if any(_in(m.target, t) for t in trees):
            inside.append(replace(m, target=prefix + m.target))
        else:
            out.append(m)
    at = next(i for i, m in enumerate(out) if m.target == "/run") + 1
    return (*out[:at], head, *inside, *out[at:])


def seen_at(target: str) -> str:
    """Where the sandbox sees a mount: one staged for an overlay /etc ends up on /etc."""
    if target.startswith(f"{ETC_STAGE_MOUNTS}/"):
        return target[len(ETC_STAGE_MOUNTS):]
    return target


def _overlay_binds(config: SandboxConfig, facts: HostFacts,
                   mounts: tuple[Mount, ...]) -> list[str]:
    """Overlay /etc: the host's /etc below, <state>/etc above; the staged mounts on it, in
    order; then all of it moved onto /etc at once, and the stage detached (the sandbox never
    sees the state directory itself). Built aside and moved, so that every program the init
    runs before the move starts with the host's /etc, and every one after it with the
    loader's files bound (LOADER_CACHE): never with the sandbox's own."""
    if not config.etc_overlay:
        return []
    q = shlex.quote
    top, m = f"{ETC_STAGE}/state", ETC_MERGED
    opts = f"lowerdir=/etc,upperdir={top}/etc,workdir={top}/{ETC_WORK},{OVERLAY_OPTIONS}"
    lines = [f"mkdir {m} && mount -t overlay -o {opts} overlay {m} || exit 125"]
    staged = [mt for mt in mounts if seen_at(mt.target) != mt.target]
    for mt in staged:
        at = q(m + seen_at(mt.target)[len("/etc"):])
        if mt.file:  # whatever the sandbox left there (a link, a directory) goes
            lines.append(f"rm -rf {at} && : > {at} || exit 125")
        lines.append(f"mount --rbind {q(mt.target)} {at} || exit 125")
    lines.append(f"mount --move {m} /etc || exit 125")
    lines.append(" ".join([q(facts.umount), "-l", top, *(q(mt.target) for mt in staged)]))
    lines.append(f"rm -r --one-file-system {ETC_STAGE}")
    return lines


def _image_binds(config: SandboxConfig, facts: HostFacts) -> list[str]:
    """-i: put the image's trees (and the mounts on them) on /etc and /var."""
    if config.image_size is None:
        return []
    top = image.IMAGE_MOUNT
    return [f"mount --rbind {top}/etc /etc && mount --rbind {top}/var /var && "
            f"{shlex.quote(facts.umount)} -l {top} || exit 125"]


def _host_bind_targets(config: SandboxConfig) -> tuple[str, ...]:
    return tuple(s.target for s in map(parse_mount, config.mounts)
                 if s.type is MountType.HOST_BIND)


def _guest_binds(config: SandboxConfig) -> list[str]:
    q = shlex.quote
    return [f"mount --bind {q(s.source)} {q(s.target)}"
            for s in map(parse_mount, config.mounts) if s.type is MountType.GUEST_BIND]


PAYLOAD_CGROUP = "sandbox"
TASKS_MOUNT = "/run/.vss-pids"  # where the init briefly mounts the pids hierarchy
# Shell: the init's path in libvirt's v1 cpu-family hierarchy (the path libvirt gave the
# container, plus /sandbox once the init moved into its child).
CPU_CGROUP_PATH = "sed -n 's/^[0-9]*:[^:]*cpu[^:]*:\\(.*\\)$/\\1/p;T;q' /proc/self/cgroup"


def command(config: SandboxConfig, facts: HostFacts) -> tuple[str, ...]:
    """A generic sandbox's command, as the user of -U if one is set (both backends)."""
    run_as = users.from_config(config.uid, config.gid, config.username, config.homedir)
    return (*users.payload(facts.setpriv, facts.env, run_as), *config.command)


# confine.py as the sandbox sees it: the tool's own file, bound read-only on the sandbox's
# /run (the tool may live anywhere on the host, even under a tree the sandbox has its own of).
CONFINE_IN_SANDBOX = "/run/.vss-confine.py"


def confine_mount(facts: HostFacts) -> Mount:
    return Mount(CONFINE_IN_SANDBOX, facts.confine, readonly=True, file=True,
                 reason="confine.py, which the sandbox's init runs (read-only)")


def confine_argv(facts: HostFacts, caps: tuple[str, ...],
                 allow: tuple[str, ...]) -> tuple[str, ...]:
    """The words that run what follows them confined (see confine.py)."""
    argv = [facts.python, "-I", "-S", CONFINE_IN_SANDBOX, "--caps", ",".join(caps)]
    if allow:
        argv += ["--allow", ",".join(allow)]
    return (*argv, "--")


def init_command(config: SandboxConfig, facts: HostFacts, mounts: tuple[Mount, ...] = ()
                 ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The sandbox's first process and its environment (`mounts`: the plan's).

    The init does the mounts only it may do, then runs what the sandbox is for through
    confine.py: from there on nothing in the sandbox has CAP_SYS_ADMIN or the calls of the
    filter, its own systemd included (so the service cannot get more from it)."""
    q = shlex.quote
    jail = " ".join(map(q, confine_argv(facts, init_caps(config), config.syscalls_allow)))
    prologue = [*_cgroup_prologue(facts), *_image_binds(config, facts),
                *_overlay_binds(config, facts, mounts), *_guest_binds(config)]
    if config.kind is Kind.GENERIC:
        # sh stays PID 1 so the command's exit status reaches the host (libvirt reports none).
        script = "\n".join([
            *prologue,
            f"if [ -p {GO_FIFO} ]; then read -r _ < {GO_FIFO}; fi",
            f'{q(facts.unshare)} --cgroup {jail} "$@"; rc=$?',
            f"echo $rc > {EXIT_STATUS_FILE}; exit $rc",
        ])
        return (facts.sh, "-c", script, "sandbox-init", *command(config, facts)), ()
    # Confined, systemd cannot mount the API file systems it insists on: /run/lock here, and
    # its cgroup2 tree in its new cgroup namespace. Its unit directories are read-only to
    # everything in the sandbox.
    script = "\n".join([
        *prologue,
        "mkdir -p /run/lock && "
        "mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=5m tmpfs /run/lock || exit 125",
        "mount --bind /etc/systemd /etc/systemd && "
        "mount -o remount,bind,ro /etc/systemd || exit 125",
        f"exec {q(facts.unshare)} --cgroup {q(facts.sh)} -c "
        "'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"' sandbox-init "
        f"{jail} {q(facts.systemd)} systemd.unified_cgroup_hierarchy=1",
    ])
    return (facts.sh, "-c", script), (("NOTIFY_SOCKET", NOTIFY_SOCKET),)


CONFINEMENT_DROPIN = "zz-virt-sandbox-service-confinement.conf"


def confinement_dropin(config: SandboxConfig, lacking: tuple[str, ...] = ()) -> str:
    """The confined units' own layers. The sandbox's init already confines every process in
    it; this restates that for the unit (so `systemd-analyze security` rates it), and takes
    away what the sandbox's systemd keeps only for itself (CAP_NET_ADMIN for DHCP). Named to
    sort after every other drop-in, so no host drop-in widens it again. `lacking`: the
    capabilities the unit needs and will not have: it then fails at start with a line naming
    them (a ConditionCapability= of its own would skip it silently, so that is reset)."""
    caps = confined_caps(config)
    allow = config.syscalls_allow
    gone = [f"CAP_{c.upper()}" for c in confine.CAP_NUMBERS if c not in caps]
    calls = confine.denied_calls(caps, allow)
    lines = ["# virt-sandbox-service: the confined service's layers (see `inspect`)."]
    if lacking:
        lines += ["[Unit]", "ConditionCapability=", ""]
    lines += [
        "[Service]",
        f"CapabilityBoundingSet=~{' '.join(gone)}",
        "NoNewPrivileges=yes",
        f"SystemCallFilter=~{' '.join(calls)}",
        "SystemCallErrorNumber=EPERM",
        "SystemCallArchitectures=native",
        "LockPersonality=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
    ]
    if "clock" not in confine.allowed_groups(caps, allow):
        lines.append("ProtectClock=yes")
    if confine.restricts_namespaces(caps, allow):
        lines.append("RestrictNamespaces=yes")
    if confine.restricts_sockets(caps, allow):
        lines.append(f"RestrictAddressFamilies=~{' '.join(confine.FAMILIES)}")
    if lacking:
        need = " ".join(f"CAP_{c.upper()}" for c in lacking)
        give = " ".join(f"--cap-add {c}" for c in lacking)
        lines.append(f"ExecStartPre=/bin/sh -c 'echo \"virt-sandbox-service: this sandbox does "
                     f"not give {need}, which this service needs ({give})\" >&2; exit 1'")
    # A "+" command line skips these, but not the sandbox's own confinement.
    return "\n".join(lines) + "\n"


def _tasks_prologue() -> list[str]:
    """--tasks: libvirt (9.0) leaves LXC containers at the root of the v1 pids hierarchy, so
    make a cgroup of our own there, mirroring libvirt's path, with the limit on it and the
    init in its child (the cgroup namespace root made next). A limit nothing can hold must
    not be a silent no-op: then the sandbox does not boot."""
    e = TASKS_ENV
    return [
        f"if [ -n \"${{{e}:-}}\" ]; then",
        f"  base=$({CPU_CGROUP_PATH})",
        f"  base=${{base%/{PAYLOAD_CGROUP}}}; pd={TASKS_MOUNT}",
        "  mkdir -p $pd && mount -t cgroup -o pids pids $pd &&",
        f"  mkdir -p \"$pd$base/{PAYLOAD_CGROUP}\" && echo \"${e}\" > \"$pd$base/pids.max\" &&",
        f"  echo $$ > \"$pd$base/{PAYLOAD_CGROUP}/cgroup.procs\" && tasks_set=1",
        "  umount $pd 2>/dev/null; rmdir $pd",
        "  if [ -z \"${tasks_set:-}\" ]; then",
        "    echo 'virt-sandbox-service: no pids cgroup to hold --tasks' >&2; exit 1",
        "  fi",
        "fi",
        f"unset {e}",
    ]


def _cgroup_prologue(facts: HostFacts) -> list[str]:
    """Confine the sandbox to cgroups it cannot loosen, then hide the host's cgroup trees.

    libvirt (9.0) mounts the host's whole v1 hierarchies read-write inside the container, sets
    the limits on the container's own cgroup, leaves the container at the root of the cgroup2
    tree and gives it no cgroup namespace. So, before anything else runs:
    - in each v1 hierarchy, move into a child of the container's cgroup: the limits stay on
      the parent, above the cgroup namespace root made next, out of the sandbox's reach (a
      root that can mount cgroupfs could otherwise raise its own memory limit);
    - in cgroup2, move to a path mirroring libvirt's v1 one, so a systemd inside manages its
      own subtree and not the host's system.slice;
    - unmount libvirt's cgroup mounts; the caller then unshares the cgroup namespace.
    """
    q = shlex.quote
    return [
        "while IFS=: read -r _ ctl path; do",
        "  [ -n \"$ctl\" ] && [ \"$path\" != / ] || continue",
        "  d=/sys/fs/cgroup/${ctl#name=}$path; [ -d \"$d\" ] || continue",
        f"  p=\"$d/{PAYLOAD_CGROUP}\"; mkdir -p \"$p\"",
        "  if [ -f \"$d/cpuset.cpus\" ]; then",  # a new cpuset child starts empty
        "    cat \"$d/cpuset.cpus\" > \"$p/cpuset.cpus\"",
        "    cat \"$d/cpuset.mems\" > \"$p/cpuset.mems\"",
        "  fi",
        "  echo $$ > \"$p/cgroup.procs\"",
        "done < /proc/self/cgroup",
        *_tasks_prologue(),
        "cg=$(sed -n 's/^0::\\(.*\\)$/\\1/p' /proc/self/cgroup)",
        "if [ \"$cg\" = / ]; then "
        f"cg=$({CPU_CGROUP_PATH}); fi",
        f"{q(facts.umount)} -R /sys/fs/cgroup",
        "if [ -n \"$cg\" ] && [ \"$cg\" != / ]; then",
        "  mount -t cgroup2 cgroup2 /sys/fs/cgroup && mkdir -p \"/sys/fs/cgroup$cg\" &&",
        "  echo $$ > \"/sys/fs/cgroup$cg/cgroup.procs\"",
        f"  {q(facts.umount)} /sys/fs/cgroup",
        "fi",
    ]
