"""The AppArmor profile of an LXC sandbox, on hosts where libvirt applies AppArmor.

Why not libvirt's own dynamic label: for it, virt-aa-helper writes a profile from
/etc/apparmor.d/libvirt/TEMPLATE.lxc, and
- it refuses any domain with a filesystem source under /etc, /usr/lib, /usr/share, /lib, ...
  ("skipped restricted file"), which every sandbox has (the host's /etc/alternatives,
  /etc/ssl/certs and /etc/ld.so.cache are bound read-only into its private /etc);
- abstractions/libvirt-lxc allows no mounts but tmpfs, mqueue, fuse, proc and sysfs, so the
  sandbox's init could not build its overlay /etc or mount systemd's cgroup2 tree.
Both were seen on a Debian 12 host with AppArmor active (the standard test host,
tests/testhost.py).

So each sandbox gets a static label naming a profile of its own, loaded by the tool before every
start (apply/apparmor.py). It is libvirt's template with the init's mounts added: the
abstraction's denials (writes to /proc/sys and /sys, /proc/sysrq-trigger, /proc/kcore, mounts
of other filesystems, remounting / read-write) hold for everything in the sandbox, the init
included. The mounts it adds are those of the init's prologue; after it, the sandbox runs
without CAP_SYS_ADMIN and with mount(2) refused by seccomp (confine.py), so these rules are
never reached by the service. The profile's name has the form libvirt-UUID because that is
what libvirtd's own profile lets it change to (change_profile -> libvirt-[0-9a-f]*-...).
"""

from __future__ import annotations

PREFIX = "libvirt-"

PROFILE = """\
# virt-sandbox-service: the AppArmor profile of one sandbox (virt_sandbox_service/apparmor.py).
# Loaded by the tool before each start; nothing on disk.
#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/libvirt-lxc>

  # As libvirt's TEMPLATE.lxc: files, capabilities and networks are held by the sandbox's
  # other layers (read-only host root, capability bounding set, seccomp, its own netns).
  file,
  capability,
  network,

  # The init's prologue, before it drops CAP_SYS_ADMIN (initscript.py):
  # systemd's cgroup2 tree, in the sandbox's own cgroup namespace;
  mount fstype=cgroup2 -> /sys/fs/cgroup/,
  # the private /etc (or -i image trees), built on the /run tmpfs and moved into place;
  mount fstype=overlay -> /run/.vss-*/**,
  mount options=(rw, bind) -> /run/.vss-*/**,
  mount options=(rw, rbind) -> /run/.vss-*/**,
  mount options=(rw, move) /run/.vss-*/** -> /**,
  # its own systemd configuration, read-only. A remount keeps the atime flags of the mount
  # below (mount(8) passes them on), so each kind of atime is listed; none of them is rw.
  mount options=(rw, bind) /etc/systemd/ -> /etc/systemd/,
{remounts}}}
"""


def domain_uuid(machine_id: str) -> str:
    """The sandbox's domain UUID, derived from its machine-id (32 hex digits) by a one-way
    hash: stable for the sandbox, and, as machine-id(5) asks of identifiers shown outside,
    the machine-id cannot be read back from it (any local user may list domain UUIDs through
    libvirt's read-only socket)."""
    import hashlib
    import uuid  # (here: with hashlib, 3.5 ms of every start and stop's imports otherwise)

    digest = hashlib.sha256(b"virt-sandbox-service domain:" + bytes.fromhex(machine_id))
    return str(uuid.UUID(bytes=digest.digest()[:16], version=4))


def profile_name(machine_id: str) -> str:
    """The sandbox's profile. libvirt's LXC driver changes to libvirt-<domain UUID> whatever a
    static label says (it checks only at define that the label's profile is loaded), so the
    domain's UUID is set from the machine-id and the label is the same name."""
    return PREFIX + domain_uuid(machine_id)


ATIME = ("", "relatime, ", "noatime, ", "strictatime, ", "nodiratime, relatime, ")
REMOUNTED = ("/etc/systemd/", "/run/.vss-*/**")


def profile_text(name: str) -> str:
    if not name.startswith(PREFIX):
        raise ValueError(f"not a sandbox profile name: {name!r}")
    remounts = "".join(f"  mount options=(ro, remount, bind, {extra}{a}) -> {target},\n"
                       .replace(", )", ")")
                       for target in REMOUNTED for a in ATIME
                       for extra in ("", "nosuid, nodev, "))
    return PROFILE.format(name=name, remounts=remounts)


def profiles_of(domain_xml: str) -> tuple[str, ...]:
    """The profiles a domain with a static AppArmor label of ours needs loaded: the label's
    (checked at define) and libvirt-<its UUID> (the one libvirt_lxc changes to); one name
    when they agree, as they do in every domain this tool builds."""
    from lxml import etree  # here: `start` loads this module, and needs no XML read

    root = etree.fromstring(domain_xml.encode())
    for sec in root.iterfind("seclabel"):
        label = sec.findtext("label") or ""
        if sec.get("model") == "apparmor" and sec.get("type") == "static" and \
                label.startswith(PREFIX):
            uuid_text = root.findtext("uuid")
            names = (label, PREFIX + uuid_text) if uuid_text else (label,)
            return tuple(dict.fromkeys(names))
    return ()
