"""What the tool writes into a unit sandbox's own systemd configuration (<state>/etc/systemd):
the confined units enabled and nothing else, the host's boot units masked, each confined
unit's drop-ins (its failure reported to the host; its confinement layers restated in
systemd's terms), the unit that reports a failure, and networkd's files for -N ...,dhcp.

These are the tool's own files: `upgrade` re-derives them and rewrites any that differ
(reconcile.py); a drop-in of another name is the admin's and is never touched.
"""

from __future__ import annotations

import os

from . import confine
from .config import Driver, SandboxConfig
from .limits import confined_caps
from .network import networkd_file
from .plantypes import NOTIFY_SOCKET, FileOp, MakeDir, Symlink, WriteFile, managed

FAILED_UNIT = "virt-sandbox-service-failed@.service"

# Units of the host's boot that a confined service never needs; masked in the instance.
MASKED_UNITS = (
    ("getty.target", "no logins on the sandbox console"),
    ("console-getty.service", "no logins on the sandbox console"),
    ("systemd-logind.service", "no user sessions in a service sandbox"),
    # Also on every boot's way to the confined unit (about 25 ms of a sandbox's boot here,
    # issue 16): records and marks nothing in a sandbox needs.
    ("systemd-user-sessions.service", "no user sessions in a service sandbox"),
    ("systemd-update-utmp.service", "no logins: no utmp/wtmp records to keep"),
    ("systemd-update-utmp-runlevel.service", "no logins: no utmp/wtmp records to keep"),
    ("selinux-autorelabel-mark.service",
     "the host's root is read-only in the sandbox: a relabel is the host's to mark"),
)


def systemd_ops(config: SandboxConfig, sysd: str, unit_dir: str,
                unit_fragments: tuple[tuple[str, str], ...],
                unit_needs: tuple[tuple[str, str], ...]) -> list[FileOp]:
    """All of it is the tool's own (managed)."""
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
    if config.driver is Driver.LXC:
        ops += _mounts_stay_ops(sysd)
    ops.append(WriteFile(os.path.join(sysd, FAILED_UNIT), _failed_unit_text(),
                         reason="tells the host which unit failed (start fails with it)"))
    for unit, why in MASKED_UNITS:
        ops.append(Symlink(os.path.join(sysd, unit), "/dev/null", reason=f"masked: {why}"))
    return managed(ops)


def _networkd_ops(config: SandboxConfig, sysd: str, unit_dir: str) -> list[FileOp]:
    """-N ...,dhcp: systemd-networkd in the sandbox runs the DHCP client on that interface."""
    dhcp = [i for i, n in enumerate(config.networks) if n.dhcp]
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


MOUNTS_DROPIN = "zz-virt-sandbox-service-mounts.conf"


def _mounts_stay_ops(sysd: str) -> list[FileOp]:
    """An LXC sandbox's mounts are libvirt's and its init's, and its systemd runs without
    CAP_SYS_ADMIN (confine.py): at every stop it tried to unmount each of them, failed, and
    tried again (seen on the standard test host: 30 s of a 38 s stop under TCG). Without
    their default dependencies they are no longer stopped by umount.target; they go with the
    sandbox. A top-level type drop-in (mount.d/, systemd >= 246) covers every mount."""
    mount_d = os.path.join(sysd, "mount.d")
    return [MakeDir(mount_d, reason="drop-in for every mount unit in the sandbox"),
            WriteFile(os.path.join(mount_d, MOUNTS_DROPIN),
                      "[Unit]\nDefaultDependencies=no\n",
                      reason="its systemd cannot unmount them: not tried at stop")]


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
        if config.driver is Driver.LXC:
            # The sandbox's own systemd is under the filter too: it cannot make the user
            # namespace a unit's PrivateUsers= asks for, and where it skips the other
            # namespace settings in a container, it fails that one (217/USER; seen with
            # redis-server.service). Off, then: the sandbox's layers hold its root instead.
            lines.append("PrivateUsers=no")
    if confine.restricts_sockets(caps, allow):
        lines.append(f"RestrictAddressFamilies=~{' '.join(confine.FAMILIES)}")
    if lacking:
        need = " ".join(f"CAP_{c.upper()}" for c in lacking)
        give = " ".join(f"--cap-add {c}" for c in lacking)
        lines.append(f"ExecStartPre=/bin/sh -c 'echo \"virt-sandbox-service: this sandbox does "
                     f"not give {need}, which this service needs ({give})\" >&2; exit 1'")
    # A "+" command line skips these, but not the sandbox's own confinement.
    return "\n".join(lines) + "\n"
