"""Host facts: what this machine has, read once per command and passed to the pure planner.

Nothing here changes the host, except `fix_cgroup_controllers`, the one clearly named host
workaround (see its docstring); `doctor --fix` is the only caller.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import HostError
from .kvmhost import VIRTIOFSD as VIRTIOFSD
from .kvmhost import VIRTIOFSD_RO as VIRTIOFSD_RO
from .kvmhost import KvmFacts as KvmFacts
from .kvmhost import check_kvm_lsm as check_kvm_lsm
from .kvmhost import cpu_flags as cpu_flags
from .kvmhost import dev_kvm_works as dev_kvm_works
from .kvmhost import kvm_choice as kvm_choice
from .kvmhost import kvm_facts as kvm_facts
from .kvmhost import kvm_usable as kvm_usable
from .kvmhost import selinux_enforcing as selinux_enforcing
from .kvmhost import tsc_khz as tsc_khz
from .kvmhost import virtiofs_wrapper as virtiofs_wrapper

CGROUP_ROOT = Path("/sys/fs/cgroup")
# /etc trees the host's package tools manage (update-alternatives, update-ca-certificates,
# the SELinux policy packages): shared read-only, so the host's updates (a revoked CA, a new
# policy) reach every sandbox at once. They are also most of /etc's entries (~700 symlinks,
# ~10 MB of policy), which makes a create much cheaper.
SHARED_ETC = ("/etc/alternatives", "/etc/ssl/certs", "/etc/selinux")

# The host's private trees outside /etc: what a sandbox's root, which is the host's root
# where no LSM or user namespace holds it back, could otherwise read on the shared host root
# (root's ssh keys and shell history, a user's mail) or reach (a unix socket there: a
# read-only mount does not stop a connect). Hidden from every persistent sandbox: the homes, as
# systemd's ProtectHome=yes hides them from a daemon, and each directory of the host root,
# up to PRIVATE_DEPTH levels down, that its owner keeps from others (no o+x: /root,
# /lost+found, an admin's /srv/site/keys).
HOME_TREES = ("/home", "/root")
# The sandbox's own trees, or the kernel's: never the host's to hide.
NOT_HIDDEN = ("/etc", "/var", "/run", "/tmp", "/dev", "/proc", "/sys")


@dataclass(frozen=True)
class HostFacts:
    """Facts the planner needs. Tests build these by hand for golden files."""

    systemd: str = "/lib/systemd/systemd"
    sh: str = "/bin/sh"
    unshare: str = "/usr/bin/unshare"
    umount: str = "/bin/umount"
    setpriv: str = "/usr/bin/setpriv"  # -U: drops root for a generic sandbox's command
    env: str = "/usr/bin/env"
    # The host's own python (on the host root, which every sandbox sees read-only), and our
    # confine.py: the sandbox's init runs one with the other to confine what it starts.
    python: str = "/usr/bin/python3"
    confine: str = "/usr/lib/python3/dist-packages/virt_sandbox_service/confine.py"
    selinux: bool = False
    # SELinux: the type of an LXC sandbox's files (lxc_contexts' `file` entry, else our
    # module's); the init mounts its overlay /etc with it (initscript._overlay_binds).
    sandbox_file_type: str = ""
    # The security models libvirt's driver applies (libvirt_secmodels): "apparmor" makes LXC
    # domains carry libvirt's AppArmor label. Read from the connection, not by detect().
    secmodels: tuple[str, ...] = ()
    memory_kib: int = 4 * 1024 * 1024
    system_unit_dir: str = "/lib/systemd/system"
    # Entries of the host's /etc/systemd/system that enable its boot (*.wants, *.requires):
    # left out of an instance's /etc so only the confined unit starts.
    etc_wants_dirs: tuple[str, ...] = ()
    # The host's SysV boot links (/etc/rc?.d) that exist: systemd's sysv generator would start
    # each host init script linked there; a unit sandbox's are empty (see plan._etc_ops).
    etc_rc_dirs: tuple[str, ...] = ()
    # Top-level symlinks of the host's /var (Debian: run -> /run, lock -> /run/lock).
    var_symlinks: tuple[tuple[str, str], ...] = ()
    # The host has an /etc/ld.so.preload (see plan.loader_mounts).
    ld_preload: bool = False
    # Host-managed /etc trees that exist here (see plan.SHARED_ETC).
    shared_etc: tuple[str, ...] = ()
    # The host's private trees a persistent sandbox does not see (private_trees, HOME_TREES).
    private_trees: tuple[str, ...] = ()
    # The kernel has overlayfs (an LXC sandbox's /etc can be an overlay; see plan.py).
    overlayfs: bool = False
    # KVM sandboxes: hardware virtualization really usable (else TCG, see kvm_usable), the
    # host's TSC rate (TCG guests skip calibrating it), and the cached boot files (initrd.py).
    kvm: bool = False
    tsc_khz: int = 0
    kvm_kernel: str = "/var/cache/virt-sandbox-service/kvm/kernel"
    kvm_initrd: str = "/var/cache/virt-sandbox-service/kvm/initrd.img"
    # --graphics (run, a generic KVM sandbox): the host's X server, which the guest starts
    # (graphics.find_xorg); "": none.
    xorg: str = ""
    # The virtiofsd (our read-only wrapper) serving a KVM guest's root; "": over 9p.
    virtiofsd: str = ""


def find_tool(names: tuple[str, ...], what: str, package: str) -> str:
    for name in names:
        path = name if name.startswith("/") else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    raise HostError(f"{what} not found on this host", f"install the '{package}' package")


def detect(selinux: bool | None = None) -> HostFacts:
    """Read the facts from this machine. `selinux` comes from libvirt's capabilities if known."""
    from .config import Driver
    from .graphics import xorg_path
    from .labels import sandbox_file_type

    selinux = selinux_enabled() if selinux is None else selinux
    return HostFacts(
        systemd=find_tool(("/lib/systemd/systemd", "/usr/lib/systemd/systemd"), "systemd",
                          "systemd"),
        sh=find_tool(("/bin/sh", "/usr/bin/sh"), "/bin/sh", "dash"),
        unshare=find_tool(("unshare",), "unshare", "util-linux"),
        umount=find_tool(("umount",), "umount", "mount"),
        setpriv=find_tool(("setpriv",), "setpriv", "util-linux"),
        env=find_tool(("env",), "env", "coreutils"),
        python=find_tool(("/usr/bin/python3", "python3"), "python3", "python3"),
        confine=confine_script(),
        selinux=selinux,
        sandbox_file_type=sandbox_file_type(Driver.LXC, sandbox_file_context_text(False))
        if selinux else "",
        memory_kib=_mem_total_kib(),
        system_unit_dir=next((d for d in ("/lib/systemd/system", "/usr/lib/systemd/system")
                              if os.path.isdir(d)), "/lib/systemd/system"),
        etc_wants_dirs=_wants_dirs(Path("/etc/systemd/system")),
        etc_rc_dirs=tuple(f"/etc/rc{r}.d" for r in "0123456S" if os.path.isdir(f"/etc/rc{r}.d")),
        var_symlinks=_symlinks(Path("/var")),
        shared_etc=tuple(d for d in SHARED_ETC if os.path.isdir(d)),
        private_trees=private_trees(),
        ld_preload=os.path.lexists("/etc/ld.so.preload"),
        overlayfs=has_overlayfs(),
        xorg=xorg_path(),
        **kvm_facts()._asdict(),
    )


# How deep below the host's root private_trees looks for directories others cannot search
# (/srv/site/keys is three levels down), and how many it hides at most (each is a mount at
# every start of every sandbox).
PRIVATE_DEPTH = 3
PRIVATE_MAX = 64
# Not looked into: the operating system's own tree, whose closed directories are its
# packages' (polkit's rules directory), read by the sandbox's programs as by the host's.
NOT_SEARCHED = ("/usr",)


def private_trees(root: str = "/") -> tuple[str, ...]:
    """The host's private trees (HOME_TREES): the homes that exist, and each directory up to
    PRIVATE_DEPTH levels below the root that others cannot search (not what NOT_HIDDEN and
    NOT_SEARCHED name), the shallowest first, at most PRIVATE_MAX. Symlinks are left out:
    what one points to is judged where it is."""
    homes = {t for t in HOME_TREES if _real_dir(os.path.join(root, t.lstrip("/")))}
    found: list[str] = []
    level = [""]
    for _ in range(PRIVATE_DEPTH):
        deeper: list[str] = []
        for shown in level:
            for path, searchable in _subdirs(root, shown):
                if path in homes or path in NOT_HIDDEN or path in NOT_SEARCHED:
                    continue
                if not searchable:
                    found.append(path)  # hidden whole: not looked into
                else:
                    deeper.append(path)
        level = sorted(deeper)
    out = sorted(homes) + found
    return tuple(sorted(out[:len(homes) + PRIVATE_MAX]))


def _subdirs(root: str, shown: str) -> list[tuple[str, bool]]:
    """(path as the sandbox names it, whether others may search it) of each directory in
    `shown`, not through a symlink."""
    try:
        entries = list(os.scandir(os.path.join(root, shown.lstrip("/")) if shown else root))
    except OSError:
        return []
    out = []
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            if entry.is_symlink():
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            out.append((f"{shown}/{entry.name}", bool(st.st_mode & stat.S_IXOTH)))
    return out


def _real_dir(path: str) -> bool:
    """A directory, not a link to one (/home -> /var/home on image-based systems: the
    sandbox's /var is its own already)."""
    return os.path.isdir(path) and not os.path.islink(path)


def confine_script() -> str:
    """Our confine.py, which the sandbox's init runs (bound read-only into the sandbox, see
    plan.CONFINE_IN_SANDBOX: the tool may be installed anywhere)."""
    from . import confine

    return os.path.realpath(confine.__file__)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _wants_dirs(d: Path) -> tuple[str, ...]:
    try:
        names = sorted(e.name for e in os.scandir(d))
    except OSError:
        return ()
    return tuple(n for n in names if n.endswith((".wants", ".requires", ".upholds")))


def _symlinks(d: Path) -> tuple[tuple[str, str], ...]:
    out = []
    for e in sorted(os.scandir(d), key=lambda e: e.name):
        if e.is_symlink():
            out.append((e.name, os.readlink(e.path)))
    return tuple(out)


def selinux_enabled() -> bool:
    return Path("/sys/fs/selinux/enforce").exists()


def detect_memory_kib() -> int:
    return _mem_total_kib()


def has_overlayfs() -> bool:
    """overlayfs is built in, loaded, or a module the kernel loads on the first mount."""
    if "\toverlay\n" in _read("/proc/filesystems"):
        return True
    return os.path.isdir(f"/lib/modules/{os.uname().release}/kernel/fs/overlayfs")


# File systems an overlay's upper layer can live on (they have d_type, xattrs and whiteouts).
OVERLAY_UPPER_FS = ("ext4", "ext3", "xfs", "btrfs", "f2fs", "tmpfs")


def fs_type(path: Path) -> str:
    """The file system type of the mount holding `path` (or, if it does not exist yet, its
    nearest existing parent): that of the longest mount point above it."""
    probe = Path(os.path.realpath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    best, kind = "", ""
    for point, fstype, _opts in _mounts():
        inside = str(probe) == point or str(probe).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def upper_layer_refusal(state_parent: Path) -> str:
    """Why sandbox state under `state_parent` cannot hold an overlay's upper layer; ""
    where it can."""
    kind = fs_type(state_parent)
    if kind in OVERLAY_UPPER_FS:
        return ""
    return (f"the state directory's file system ({kind or 'unknown'}) cannot hold an "
            "overlay's upper layer")


def _mem_total_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 4 * 1024 * 1024


# --- cgroups -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupLayout:
    kind: str  # "v2", "v1", "hybrid"
    unified_mount: Path | None
    unified_controllers: tuple[str, ...]
    v1_hierarchies: tuple[str, ...]
    # The host's mount points below /sys that libvirt's container /sys hides (LXC_SYS_OWN).
    sys_mounts: tuple[str, ...] = ()

    @property
    def userns_problem(self) -> str | None:
        """Why libvirt's LXC driver cannot start a user-namespaced container here, or None.

        Seen with libvirt 9.0: for a container with <idmap>, lxcContainerSetReadOnly remounts
        every host mount under /sys read-only inside the container, including a hybrid
        layout's cgroup2 mount, which is not there under libvirt's own /sys/fs/cgroup, and the
        start fails: "Failed to make mount /sys/fs/cgroup/unified readonly".
        """
        if self.kind == "hybrid" and self.unified_mount is not None and \
                str(self.unified_mount).startswith("/sys/fs/cgroup/"):
            return (f"libvirt's LXC driver cannot start user-namespaced containers beside the "
                    f"cgroup2 mount at {self.unified_mount} of this hybrid cgroup layout")
        # The same code, on a standard systemd host (seen on Debian 12 with libvirt 9.0, the
        # test host VM): the sandbox's root is the host's, bound with its submounts, and the
        # fresh sysfs libvirt mounts on /sys hides those below it (cgroup2, and tracefs,
        # debugfs, configfs, fusectl that systemd mounts); remounting one fails with EINVAL:
        # "Failed to make mount /sys/kernel/tracing readonly: Invalid argument".
        if self.sys_mounts:
            return (f"libvirt's LXC driver cannot start user-namespaced containers whose root "
                    f"is this host's: its own /sys hides the host's mounts "
                    f"{', '.join(self.sys_mounts)}, and it fails to remount them read-only")
        return None

    @property
    def lxc_problem(self) -> str | None:
        """Why libvirt's LXC driver cannot start a domain here, or None.

        libvirt (seen with 9.0) treats a cgroup2 mount that carries controllers beside v1
        hierarchies as the place for those controllers and then fails every LXC start with
        "Unable to create directory /sys/fs/cgroup/unified". systemd's usual hybrid layout has
        an empty cgroup2 there, which libvirt handles.
        """
        if self.kind == "hybrid" and self.unified_controllers:
            return ("cgroup2 at {} carries controller(s) {} beside v1 hierarchies; libvirt's LXC "
                    "driver fails to start domains on this layout").format(
                        self.unified_mount, ",".join(self.unified_controllers))
        return None


def _mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, super options) from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) >= 5 and len(rfields) >= 3:
            out.append((_unescape(fields[4]), rfields[0], rfields[2]))
    return out


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def v1_mount(controller: str) -> Path | None:
    """Where the v1 hierarchy carrying `controller` is mounted on the host, if any."""
    for target, fstype, opts in _mounts():
        if fstype == "cgroup" and controller in opts.split(","):
            return Path(target)
    return None


BLKIO_WEIGHT_FILES = ("blkio.bfq.weight", "blkio.weight", "io.bfq.weight", "io.weight")


def blkio_weight_supported() -> bool:
    """Whether the kernel can hold a cgroup's block I/O weight (what libvirt writes for
    <blkiotune><weight>): a proportional-weight policy (BFQ, or io.cost on cgroup2) gives
    cgroups below the root one of BLKIO_WEIGHT_FILES. Without it libvirt refuses the weight,
    at a domain's start or live."""
    tops = [t for t, fstype, opts in _mounts()
            if (fstype == "cgroup" and "blkio" in opts.split(",")) or fstype == "cgroup2"]
    for top in map(Path, tops):
        try:
            dirs = [top, *(d for d in top.iterdir() if d.is_dir())]
        except OSError:
            continue
        if any((d / f).exists() for d in dirs for f in BLKIO_WEIGHT_FILES):
            return True
    return False


# What libvirt's <bandwidth> runs through tc on the host end of an interface (virnetdevbandwidth):
# inbound shapes with htb and sfq, outbound polices with an ingress qdisc, a u32 filter and
# the police action. (kernel config option, module) for each.
BANDWIDTH_NEEDS = {
    "inbound": (("CONFIG_NET_SCH_HTB", "sch_htb"), ("CONFIG_NET_SCH_SFQ", "sch_sfq")),
    "outbound": (("CONFIG_NET_SCH_INGRESS", "sch_ingress"), ("CONFIG_NET_CLS_U32", "cls_u32"),
                 ("CONFIG_NET_ACT_POLICE", "act_police")),
}


def bandwidth_missing(direction: str) -> list[str]:
    """The kernel options `direction`'s <bandwidth> needs that this kernel has neither built
    in nor as a module (from its config; nothing when the config cannot be read)."""
    config = _kernel_config()
    if config is None:
        return []
    modules = _kernel_modules()
    return [opt for opt, mod in BANDWIDTH_NEEDS[direction]
            if not re.search(rf"^{opt}=[ym]$", config, re.M) or
            (f"{opt}=m" in config and mod not in modules)]


def _kernel_config() -> str | None:
    import gzip

    release = os.uname().release
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        return Path(f"/boot/config-{release}").read_text()
    except OSError:
        return None


def _kernel_modules() -> set[str]:
    """The module names the running kernel can load (modules.dep), '-' as '_'."""
    try:
        text = Path(f"/lib/modules/{os.uname().release}/modules.dep").read_text()
    except OSError:
        return set()
    return {Path(line.split(":", 1)[0]).name.split(".ko")[0].replace("-", "_")
            for line in text.splitlines()}


def swap_limit_supported() -> bool:
    """Whether the memory cgroup accounts swap (what <memtune><swap_hard_limit> needs): v1's
    memory.memsw.* (swapaccount=1), or cgroup2's memory.swap.max below its root."""
    for top, fstype, opts in _mounts():
        if fstype == "cgroup" and "memory" in opts.split(","):
            if (Path(top) / "memory.memsw.limit_in_bytes").exists():
                return True
        elif fstype == "cgroup2":
            try:
                if any((d / "memory.swap.max").exists() for d in Path(top).iterdir()):
                    return True
            except OSError:
                continue
    return False


# What libvirt's LXC driver mounts itself below /sys, and so skips (lxcBasicMounts). Not
# /sys/fs/cgroup: with everything else unmounted, a pure cgroup v2 host's cgroup2 there fails
# the same way ("Failed to make mount /sys/fs/cgroup readonly"), seen on the test host.
LXC_SYS_OWN = ("/sys/kernel/security", "/sys/fs/selinux")


def cgroup_layout() -> CgroupLayout:
    unified: Path | None = None
    v1: list[str] = []
    sys_mounts: list[str] = []
    for target, fstype, _opts in _mounts():
        if target.startswith("/sys/") and not any(
                target == own or target.startswith(own + "/") for own in LXC_SYS_OWN):
            sys_mounts.append(target)
        if fstype == "cgroup2":
            unified = Path(target)
        elif fstype == "cgroup":
            v1.append(Path(target).name)
    controllers: tuple[str, ...] = ()
    if unified is not None:
        try:
            controllers = tuple((unified / "cgroup.controllers").read_text().split())
        except OSError:
            controllers = ()
    kind = "hybrid" if unified and v1 else ("v2" if unified else "v1")
    return CgroupLayout(kind, unified, controllers, tuple(sorted(v1)),
                        tuple(sorted(set(sys_mounts))))


def fix_cgroup_controllers(layout: CgroupLayout) -> list[str]:
    """Move the controllers off a hybrid layout's cgroup2 mount by mounting each as its own v1
    hierarchy (additive: no existing mount or cgroup is touched).

    The kernel lets a controller sit in only one hierarchy at a time; binding it to a new v1
    hierarchy is allowed only while the cgroup2 tree has no cgroups using it, which is the case
    for a controller nobody enabled in cgroup.subtree_control (hugetlb here). Returns what it did.
    """
    import ctypes

    done = []
    libc = ctypes.CDLL(None, use_errno=True)
    for ctl in layout.unified_controllers:
        target = CGROUP_ROOT / ctl
        target.mkdir(exist_ok=True)
        rc = libc.mount(b"cgroup", str(target).encode(), b"cgroup", 0, ctl.encode())
        if rc != 0:
            err = ctypes.get_errno()
            raise HostError(f"cannot mount the {ctl} cgroup controller at {target}: "
                            f"{os.strerror(err)}",
                            "see 'virt-sandbox-service doctor' for the cgroup layout")
        done.append(f"mounted the {ctl} controller as its own v1 hierarchy at {target}")
    return done


# --- security layers -------------------------------------------------------------------------
# What besides capabilities, seccomp and namespaces can hold a sandbox's root (see layers.py).


def libseccomp_available() -> bool:
    """The host's libseccomp loads: confine.py (every LXC sandbox's init) needs it."""
    import ctypes

    from .confine import LIBSECCOMP

    try:
        ctypes.CDLL(LIBSECCOMP)
    except OSError:
        return False
    return True


def apparmor_enabled() -> bool:
    """AppArmor is the kernel's active LSM: enabled, and its securityfs interface there."""
    return _read("/sys/module/apparmor/parameters/enabled").strip() == "Y" and \
        os.path.isdir("/sys/kernel/security/apparmor")


def selinux_mode() -> str:
    """"enforcing", "permissive", or "disabled" (no selinuxfs: not in the kernel's LSMs)."""
    if not selinux_enabled():
        return "disabled"
    return "enforcing" if _read("/sys/fs/selinux/enforce").strip() == "1" else "permissive"


def secmodels_from_caps(caps_xml: str) -> tuple[str, ...]:
    """The security models of libvirt's capabilities XML (<host><secmodel><model>), without
    "none" (what libvirt reports when it has no security driver)."""
    from lxml import etree

    root = etree.fromstring(caps_xml.encode())
    models = (m.text.strip() for m in root.findall("host/secmodel/model") if m.text)
    return tuple(m for m in models if m and m != "none")


class LibvirtCaps(Protocol):
    """A libvirt connection, as far as its capabilities go."""

    def getCapabilities(self) -> str: ...


def libvirt_secmodels(conn: LibvirtCaps) -> tuple[str, ...]:
    """The security models this libvirt connection's driver applies ("apparmor", "selinux",
    "dac"), from its capabilities."""
    return secmodels_from_caps(conn.getCapabilities())


SELINUX_CONFIG = Path("/etc/selinux/config")
SELINUX_ROOT = Path("/etc/selinux")


def selinux_policy_root(config_text: str | None = None) -> Path:
    """/etc/selinux/<SELINUXTYPE> of the host's policy ("default" on Debian)."""
    text = _read(str(SELINUX_CONFIG)) if config_text is None else config_text
    kind = "default"
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() == "SELINUXTYPE" and value.strip():
            kind = value.strip().strip('"')
    return SELINUX_ROOT / kind


def sandbox_file_context_text(kvm: bool) -> str:
    """The platform's file context for a sandbox's files: for LXC the `file` entry of
    contexts/lxc_contexts (what libvirt also mounts the sandbox's tmpfs with), for KVM
    contexts/virtual_image_context; "" where the policy has none."""
    name = "virtual_image_context" if kvm else "lxc_contexts"
    return _read(str(selinux_policy_root() / "contexts" / name))
