"""`run -c qemu:///session`: a one-shot micro-VM through the invoking user's own libvirt.

libvirt starts a daemon per user for qemu:///session (`libvirtd --timeout=120`, spawned by the
client on first connect), and its qemu runs as that user. So everything the run touches must
be the user's and everything it reads must be readable by the user:

* the guest's boot files (the host's kernel, our initrd) are built into the user's cache,
  `$XDG_CACHE_HOME/virt-sandbox-service/kvm` (else `~/.cache/...`), not the system cache;
  the host's kernel image must be readable by the user (Debian's is; Ubuntu's is 0600);
* the channel sockets and the console log live in the user's runtime directory,
  `$XDG_RUNTIME_DIR/virt-sandbox-service` (else the user cache's `run/`), as libvirt's own
  session sockets do (`$XDG_RUNTIME_DIR/libvirt`, else `~/.cache/libvirt`);
* the host's root is shared over virtio-9p read-only with accessmode 'squash' (qemu's
  security_model=none: plain reads as the user; 'passthrough' needs root's chown), never
  virtiofs (libvirt starts virtiofsd as root only);
* nothing is relabelled (`<seclabel type='none'/>`): a session daemon cannot chown to root;
* no network (libvirt's networks belong to the system daemon), and no cgroup limits (the
  session daemon manages no cgroups); --memory is the guest's RAM and stays;
* inside, the command runs as the invoking user (uid, gid and the supplementary groups of
  the host's /etc/group, the guest's view of it), through the same `setpriv` payload as a
  generic sandbox's -U (users.payload).
* --graphics works as for root: the user's qemu serves the display on loopback, the guest's
  init (root in the guest only) starts the X server, and the command runs as the user on it
  (an X server started without -auth takes local clients).

Root never comes here: libvirt's client starts a session daemon only for a uid other than 0
and connects root's qemu:///session to the system daemon (seen here: no daemon started, the
system daemon's qemu user reading the boot files), so root's run is a qemu:///system run.

Every check here reads only; `prepare` runs before the first side effect (the first one being
libvirt's autostart of the session daemon).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import host
from ..config import Paths
from ..errors import HostError, UserError
from ..limits import LimitArgs
from ..network import NetSpec
from ..users import RunAs

if TYPE_CHECKING:
    import libvirt

TOOL_DIR = "virt-sandbox-service"
QEMU_BINARIES = ("qemu-system-x86_64", "/usr/bin/qemu-system-x86_64")
SESSION_HINT_DAEMON = ("libvirt starts your session daemon (libvirtd, package "
                       "libvirt-daemon) on connect; 'virsh -c qemu:///session list' shows "
                       "its own error")


def is_session(uri: str) -> bool:
    return uri.rstrip("/").endswith("/session")


@dataclass(frozen=True)
class UserDirs:
    """The user's base directories as libvirt's session daemon reads them (XDG, else HOME),
    and where this tool keeps a session run's files under them."""

    config: Path  # libvirt: $XDG_CONFIG_HOME/libvirt
    cache: Path  # libvirt: $XDG_CACHE_HOME/libvirt; ours: .../virt-sandbox-service
    runtime: Path | None  # $XDG_RUNTIME_DIR; None: libvirt (and we) use the cache instead
    boot_override: Path | None = None  # VSS_CACHE_DIR (tests, or an admin's shared cache)

    @property
    def boot_dir(self) -> Path:
        base = self.boot_override or self.cache / TOOL_DIR
        return base / "kvm"

    @property
    def run_dir(self) -> Path:
        return self.runtime / TOOL_DIR if self.runtime else self.cache / TOOL_DIR / "run"

    @property
    def state_parent(self) -> Path:
        return self.cache / TOOL_DIR / "state"

    def bases(self) -> tuple[tuple[str, Path], ...]:
        """What must be writable (or creatable), with the variable that names it."""
        out = [("XDG_CONFIG_HOME", self.config), ("XDG_CACHE_HOME", self.cache)]
        if self.runtime:
            out.append(("XDG_RUNTIME_DIR", self.runtime))
        if self.boot_override:
            out.append(("VSS_CACHE_DIR", self.boot_override))
        return tuple(out)


def user_dirs(env: Mapping[str, str], home: str) -> UserDirs:
    """As libvirt's virGetUser*Directory: an XDG variable when set (and absolute), else under
    the home directory."""
    def xdg(var: str, default: str) -> Path:
        value = env.get(var, "")
        return Path(value) if value.startswith("/") else Path(home) / default

    runtime = env.get("XDG_RUNTIME_DIR", "")
    override = env.get("VSS_CACHE_DIR", "")
    return UserDirs(config=xdg("XDG_CONFIG_HOME", ".config"),
                    cache=xdg("XDG_CACHE_HOME", ".cache"),
                    runtime=Path(runtime) if runtime.startswith("/") else None,
                    boot_override=Path(override) if override else None)


def check_writable(var: str, path: Path, home: str, user: str = "USER") -> None:
    """The directory or its nearest existing parent is a directory this user may write."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return
    why = "does not exist" if not Path(home).exists() else "is not writable by you"
    place = home if not Path(home).exists() and path.is_relative_to(home) else str(probe)
    if place == home:
        raise UserError(f"run -c qemu:///session needs your home directory: {home} {why}",
                        "libvirt's session daemon and the micro-VM's boot files live in it; "
                        f"give the user a home (mkhomedir_helper {user}), or set "
                        "XDG_CONFIG_HOME, XDG_CACHE_HOME and XDG_RUNTIME_DIR to "
                        "directories you own")
    raise UserError(f"run -c qemu:///session cannot write {place} ({var})",
                    f"point {var} at a directory you own")


@dataclass(frozen=True)
class SessionRun:
    """What a session run needs, decided before anything is done."""

    dirs: UserDirs
    paths: Paths  # the tool's paths for this run: its run and state dirs are the user's
    run_as: RunAs | None  # None: root, as root


def prepare(paths: Paths, euid: int, env: Mapping[str, str] | None = None,
            networks: tuple[NetSpec, ...] = (), limits: LimitArgs | None = None
            ) -> SessionRun:
    """Check what the session daemon and this user need; read only."""
    env = dict(os.environ) if env is None else env
    check_options(networks, limits or LimitArgs())
    try:
        entry = pwd.getpwuid(euid)
    except KeyError:
        raise HostError(f"your uid {euid} has no entry in the user database",
                        "libvirt's session daemon, and the command inside, need a user "
                        "name (add it to /etc/passwd or your directory service)") from None
    home = env.get("HOME") or entry.pw_dir
    dirs = user_dirs(env, home)
    for var, path in dirs.bases():
        check_writable(var, path, home, entry.pw_name)
    host.find_tool(QEMU_BINARIES, "qemu-system-x86_64 (QEMU)", "qemu-system-x86")
    check_boot_readable()
    run_as = None
    if euid != 0:
        host.find_tool(("/usr/bin/setpriv",), "setpriv", "util-linux")
        # The command starts in the user's home where the guest sees one (it is the host's,
        # read-only), else in /.
        guest_home = entry.pw_dir if os.path.isdir(entry.pw_dir) else "/"
        run_as = RunAs(euid, entry.pw_gid, entry.pw_name, guest_home)
    return SessionRun(dirs, paths._replace(run_dir=dirs.run_dir, state_parent=dirs.state_parent),
                      run_as)


def check_options(networks: tuple[NetSpec, ...], limits: LimitArgs) -> None:
    if networks:
        raise UserError("run -c qemu:///session has no network: -N needs a libvirt network "
                        "of the system daemon",
                        "drop -N, or run it as root with -c qemu:///system")
    given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(limits)
             if f.name != "memory" and getattr(limits, f.name) not in (None, ())]
    if given:
        raise UserError(f"run -c qemu:///session cannot apply {given[0]}: the session "
                        "daemon manages no cgroups",
                        "keep --memory (the VM's RAM), or run it as root with "
                        "-c qemu:///system")


def check_boot_readable() -> None:
    """The host's kernel and its modules are what the user's initrd is built from."""
    from .. import initrd

    kernel = initrd.detect_kernel()
    for path in (kernel.image, kernel.modules_dir / "modules.dep"):
        if not os.access(path, os.R_OK):
            raise HostError(f"the host's kernel {path} is not readable by you (a session run "
                            "boots it in your own qemu)",
                            f"ask an administrator to make it readable (chmod 0644 {path}), "
                            "or set VSS_KVM_KERNEL to a kernel image you can read")
    initrd.find_busybox()


def connect(uri: str) -> libvirt.virConnect:
    """The user's session daemon (libvirt starts it on first use)."""
    import libvirt

    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise HostError(f"cannot connect to your libvirt session daemon at {uri}: "
                        f"{e.get_error_message()}", SESSION_HINT_DAEMON) from e
