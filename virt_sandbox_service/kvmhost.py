"""The host's KVM: whether hardware virtualisation is usable (or the VM runs under TCG), the
boot files' cache, virtiofsd, and what an LSM in enforcing mode leaves of KVM sandboxes.
Split from host.py, which re-exports these names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .errors import HostError
from .resources import data_path


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- KVM --------------------------------------------------------------------------------------

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


class KvmFacts(NamedTuple):
    kvm: bool
    tsc_khz: int
    kvm_kernel: str
    kvm_initrd: str
    virtiofsd: str = ""


def kvm_facts() -> KvmFacts:
    from .initrd import INITRD_NAME, KERNEL_NAME, cache_dir

    cpuinfo = _read("/proc/cpuinfo")
    usable, _why = kvm_usable(cpuinfo, dev_kvm_works())
    return KvmFacts(usable, tsc_khz(cpuinfo), str(cache_dir() / KERNEL_NAME),
                    str(cache_dir() / INITRD_NAME), virtiofs_wrapper())


VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
VIRTIOFSD_RO = data_path("libexec", "virtiofsd-ro")


def virtiofs_wrapper(env: dict[str, str] | None = None) -> str:
    """Our read-only virtiofsd wrapper where the guest's root can go over virtiofs, else ""
    (over 9p, which qemu itself keeps read-only): see root_share."""
    return root_share(env)[0]


def root_share(env: dict[str, str] | None = None) -> tuple[str, str]:
    """(our virtiofsd wrapper, "") where the host has virtiofsd (qemu's, Debian 12: package
    qemu-system-common) and libvirtd may start it; else ("", why the root goes over 9p).
    VSS_KVM_ROOT_SHARE=9p chooses 9p anyway (to compare, or to work around a problem)."""
    env = dict(os.environ) if env is None else env
    if env.get("VSS_KVM_ROOT_SHARE") == "9p":
        return "", "VSS_KVM_ROOT_SHARE=9p"
    if libvirtd_confined():
        return "", (f"libvirtd's enforcing AppArmor profile lets it start virtiofsd only from "
                    f"{VIRTIOFSD}, not the read-only wrapper")
    if os.access(VIRTIOFSD, os.X_OK) and os.access(VIRTIOFSD_RO, os.X_OK):
        return str(VIRTIOFSD_RO), ""
    return "", f"{VIRTIOFSD} not found"


APPARMOR_PROFILES = "/sys/kernel/security/apparmor/profiles"


def libvirtd_confined(profiles: str = APPARMOR_PROFILES) -> bool:
    """libvirtd runs under an enforcing AppArmor profile (Debian's and Ubuntu's
    usr.sbin.libvirtd), which lets it start virtiofsd from qemu's own path only: our
    wrapper's exec is denied, and the start fails with "virtiofsd died unexpectedly" (seen
    on the AppArmor test host). A profile in complain mode only logs."""
    try:
        text = Path(profiles).read_text()
    except OSError:  # no AppArmor, or not root: nothing confines libvirtd that we can see
        return False
    return any(line.rsplit(" (", 1) == ["libvirtd", "enforce)"] for line in text.splitlines())


def kvm_choice() -> tuple[bool, str]:
    """This host's answer of kvm_usable: (hardware KVM usable, why)."""
    return kvm_usable(_read("/proc/cpuinfo"), dev_kvm_works())


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def dev_kvm_works(path: str = "/dev/kvm") -> bool:
    """/dev/kvm opens read-write and answers KVM_GET_API_VERSION with the stable API."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def kvm_usable(cpuinfo: str, dev_kvm_ok: bool, caps_xml: str | None = None) -> tuple[bool, str]:
    """Whether KVM sandboxes get <domain type='kvm'>, and why (or why not).

    Hardware virtualization needs the vmx (Intel) or svm (AMD) CPU flag AND a working
    /dev/kvm. A /dev/kvm alone is not enough: some hosts have one that runs only specially
    built guest kernels (kvm_pvm: no vmx/svm flag; a stock kernel hangs under it), and
    libvirt's capabilities then still offer type 'kvm'. When libvirt's capabilities are
    given, they must offer it too.
    """
    flags = cpu_flags(cpuinfo)
    hw = flags & {"vmx", "svm"}
    if not hw:
        why = "no vmx/svm CPU flag" + ("; /dev/kvm is present but is not hardware KVM"
                                       if dev_kvm_ok else "")
        return False, why
    if not dev_kvm_ok:
        return False, f"CPU has {'/'.join(sorted(hw))} but /dev/kvm does not work"
    if caps_xml is not None and "<domain type='kvm'" not in caps_xml \
            and '<domain type="kvm"' not in caps_xml:
        return False, "libvirt's QEMU driver offers no KVM domains"
    return True, f"hardware virtualization ({'/'.join(sorted(hw))}) and a working /dev/kvm"


def tsc_khz(cpuinfo: str) -> int:
    """The TSC rate in kHz from 'cpu MHz' (x86 with a constant TSC), else 0."""
    flags = cpu_flags(cpuinfo)
    if "constant_tsc" not in flags and "tsc" not in flags:
        return 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return round(float(value) * 1000)
            except ValueError:
                return 0
    return 0


def selinux_enforcing() -> bool:
    return _read("/sys/fs/selinux/enforce").strip() == "1"


def check_kvm_lsm() -> None:
    """A KVM sandbox of the system daemon where it cannot run: under SELinux enforcing,
    qemu's label (svirt_t) may neither read the host's root over 9p nor bind the sandbox's
    channels (seen on the SELinux test host: a run's channel socket and a start's memory
    backing both refused). Said before anything is made; LXC sandboxes run there."""
    if selinux_enforcing():
        raise HostError("KVM sandboxes do not run on an SELinux-enforcing host yet: qemu's "
                        "label (svirt_t) may not read the host's root over 9p nor bind the "
                        "sandbox's channels",
                        "use an LXC sandbox (-c lxc:///), which is MCS-confined there")
