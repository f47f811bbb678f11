"""doctor: is this host ready for sandboxes? Each check says what it found and what to do."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass

from . import host
from .evidence import detect_package_db


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def checks(fix: bool = False) -> list[Check]:
    out = [_root(), *_libvirt(), _cgroups(fix), _inotify(fix), _blkio(), _overlay(), _userns(),
           *_kvm(), _selinux(fix), _confinement(), _pkgdb(), _systemd()]
    return out


def _root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "running as root" if ok else "not root",
                 "" if ok else "sandboxes need root (libvirt LXC, mounts, namespaces)")


def _libvirt() -> list[Check]:
    import libvirt

    from .apply.libvirt import connect
    from .errors import SandboxError

    out = []
    for uri, what in (("lxc:///", "LXC driver"), ("qemu:///system", "QEMU driver")):
        try:
            conn = connect(uri)
            out.append(Check(what, True, f"{uri} reachable (libvirt {_ver(conn.getLibVersion())})"))
            conn.close()
        except (SandboxError, libvirt.libvirtError) as e:
            out.append(Check(what, False, str(e), "install libvirt-daemon-driver-"
                             f"{'lxc' if 'lxc' in uri else 'qemu'} and start libvirtd "
                             "(scripts/setup.sh does both)"))
    return out


def _inotify(fix: bool) -> Check:
    """Root's inotify instances, which every sandbox's systemd draws on (hostlimits.py)."""
    from . import hostlimits

    use = hostlimits.inotify_use()
    done: list[str] = []
    if fix and use.limit < hostlimits.FIX_TO:
        done = hostlimits.raise_limit()
        use = hostlimits.inotify_use()
    detail = use.describe() + (f"; fixed: {'; '.join(done)}" if done else "")
    if use.room < 1:
        return Check("inotify", False, detail,
                     "run 'virt-sandbox-service doctor --fix' (raises it to "
                     f"{hostlimits.FIX_TO}, kept in {hostlimits.SYSCTL_FILE})")
    return Check("inotify", True, detail,
                 "" if use.limit >= hostlimits.FIX_TO else
                 f"'doctor --fix' raises it to {hostlimits.FIX_TO} (about "
                 f"{hostlimits.FIX_TO // hostlimits.PER_UNIT_SANDBOX} sandboxes)")


def _blkio() -> Check:
    if host.blkio_weight_supported():
        return Check("blkio weight", True, "the kernel holds cgroup I/O weights: "
                     "--blkio-weight works")
    return Check("blkio weight", True, "the kernel has no proportional-weight I/O scheduler "
                 "for cgroups (BFQ, or io.cost): --blkio-weight is refused, the other limits "
                 "work")


def _overlay() -> Check:
    from .config import Paths

    state = Paths.from_env().state_parent
    if not host.has_overlayfs():
        return Check("overlay /etc", True, "the kernel has no overlayfs: LXC sandboxes get a "
                     "trimmed copy of /etc (--etc copy)", "load the overlay module for faster "
                     "creates and an /etc that follows the host's")
    refusal = host.upper_layer_refusal(state)
    if refusal:
        return Check("overlay /etc", True, f"{state}: {refusal}: LXC sandboxes there get a "
                     "copy of /etc", "keep sandbox state on ext4, XFS or btrfs (-p PATH)")
    return Check("overlay /etc", True, f"overlayfs, and {state} is on {host.fs_type(state)}: "
                 "LXC sandboxes' /etc is an overlay on the host's")


def _ver(v: int) -> str:
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def _cgroups(fix: bool) -> Check:
    layout = host.cgroup_layout()
    problem = layout.lxc_problem
    if problem and fix:
        done = host.fix_cgroup_controllers(layout)
        layout = host.cgroup_layout()
        if not layout.lxc_problem:
            return Check("cgroups", True, f"{layout.kind} layout; fixed: {'; '.join(done)}")
    if problem:
        return Check("cgroups", False, problem,
                     "run 'virt-sandbox-service doctor --fix' (additive: mounts the "
                     "controller as its own v1 hierarchy, touches no existing cgroup)")
    return Check("cgroups", True, f"{layout.kind} layout, usable by libvirt LXC")


def _userns() -> Check:
    problem = host.cgroup_layout().userns_problem
    if problem:
        return Check("user namespaces", True, f"not available: {problem}; "
                     "sandboxes run without --userns (root inside is root on the host, "
                     "confined by namespaces, cgroups, dropped capabilities)")
    return Check("user namespaces", True, "available: create --userns maps root inside to an "
                 "unprivileged host id range")


def _kvm() -> list[Check]:
    from . import initrd
    from .errors import SandboxError

    facts = host.detect()
    accel = ("hardware KVM" if facts.kvm else
             "TCG (software emulation, slow): no usable hardware virtualization")
    out = [Check("kvm", True, f"KVM sandboxes run under {accel}")]
    try:
        kernel = initrd.detect_kernel()
        busybox = initrd.find_busybox()
        out.append(Check("kvm guest boot", True,
                         f"kernel {kernel.version}, static busybox {busybox}; the initrd is "
                         f"built from the host's modules and cached in {initrd.cache_dir()}"))
    except (SandboxError, OSError) as e:
        out.append(Check("kvm guest boot", False, str(e),
                         "install linux-image-amd64 and busybox-static (scripts/setup.sh)"))
    out.append(_kvm_root_share(facts.virtiofsd))
    return out


def _kvm_root_share(wrapper: str) -> Check:
    if wrapper:
        return Check("kvm root share", True, f"virtiofs, read-only through {wrapper} "
                     f"(virtiofsd: {host.VIRTIOFSD}); VSS_KVM_ROOT_SHARE=9p chooses 9p")
    from .kvmhost import root_share

    return Check("kvm root share", True, f"virtio-9p ({root_share()[1]})")


def _selinux(fix: bool = False) -> Check:
    if host.selinux_enabled():
        from .apply import selinux_policy
        from .errors import SandboxError

        problems = selinux_policy.problems()
        if problems and fix:
            try:
                done = selinux_policy.fix()
            except SandboxError as e:
                return Check("selinux", False, f"enabled; fixing failed: {e}", e.hint or "")
            problems = selinux_policy.problems()
            if not problems:
                return Check("selinux", True, "enabled; fixed: " + "; ".join(done))
        if problems:
            return Check("selinux", False, "enabled, but " + "; ".join(problems),
                         "run 'virt-sandbox-service doctor --fix' (see policy/README.md)")
        return Check("selinux", True, "enabled: sandboxes get an MCS label enforced by libvirt, "
                     "with the types of the policy module virt_sandbox_service")
    return Check("selinux", True, "not enabled: MCS labels are allocated and shown, not enforced")


def _confinement() -> Check:
    """Which layers hold a sandbox's root on this host (see layers.HostLayers)."""
    import libvirt

    from . import layers
    from .apply.libvirt import connect
    from .errors import SandboxError

    conn = None
    with contextlib.suppress(SandboxError, libvirt.libvirtError):
        conn = connect("lxc:///")  # which LSM libvirt's LXC driver applies
    try:
        h = layers.host_layers(None if conn is None else host.libvirt_secmodels(conn))
    finally:
        if conn is not None:
            conn.close()
    if not h.seccomp:
        return Check("confinement", False, layers.summary(h),
                     "install libseccomp2: every LXC sandbox's init confines it with seccomp")
    return Check("confinement", True, layers.summary(h),
                 "a sandbox's root is the host's root here, held back only by these; an "
                 "active LSM (SELinux: see policy/README.md) or user namespaces add a layer"
                 if h.unprotected() else "")


def _pkgdb() -> Check:
    db = detect_package_db()
    if db is None:
        return Check("package manager", False, "neither dpkg nor rpm found",
                     "unit sandboxes then rely on unit directives and --private only")
    return Check("package manager", True, f"{db.kind} (file lists are evidence for /var)")


def _systemd() -> Check:
    if os.path.isdir("/run/systemd/system"):
        return Check("systemd", True, "PID 1 is systemd: units are reloaded on create/delete")
    ok = shutil.which("systemd-analyze") is not None
    return Check("systemd", True, "PID 1 is not systemd: unit files are written, but nothing "
                 "runs them here; use 'virt-sandbox-service start --detach'"
                 + ("" if ok else " (systemd-analyze missing)"))


def format_checks(result: list[Check]) -> str:
    lines = []
    for c in result:
        lines.append(f"{'ok ' if c.ok else 'BAD'} {c.name:16} {c.detail}")
        if c.hint:
            lines.append(f"    {'':16} hint: {c.hint}")
    return "\n".join(lines)


def checks_json(result: list[Check]) -> dict[str, object]:
    """doctor --json (schema: the man page's JSON OUTPUT)."""
    return {"ready": all(c.ok for c in result),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "hint": c.hint or None}
                       for c in result]}
