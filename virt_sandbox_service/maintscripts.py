"""A fresh instance: the packages' own `postinst configure`, run inside the new sandbox.

What a package's maintainer scripts make at installation (a database's data directory, a
web server's default page, a daemon's own key or working directory) is in no file list and
no unit directive, so the evidence cannot name it, and a daemon aborts on an empty /var.
Guessing per daemon is what made the historical virt-sandbox-service fragile. Instead, a
plain create (without -C) runs each of the unit's packages' `postinst configure` once, as on
a first installation, inside the new sandbox: on its private /etc and /var, with a
throw-away layer on the host's /usr (what a script does to the host's installed files, which
the host's own installation did already, succeeds there and is forgotten), confined like the
sandbox itself. So each instance is initialised by the
package's own code, and its keys and data are its own, not copies of the host's.

The run is a transient LXC domain built from the sandbox's own plan (same mounts, same init,
same confinement), with:
- the host's dpkg database read-only (DPKG_ADMINDIR) and a copy of its debconf answers
  (configuration and templates, never its passwords database);
- service starts refused: POLICYRCD for invoke-rc.d, no systemd running for
  deb-systemd-invoke; and the calls that would change the host's shared state or enable
  more units in the sandbox answered as done without doing anything (dpkg-trigger,
  update-alternatives, ldconfig, dpkg-statoverride, deb-systemd-helper, update-rc.d,
  systemctl: so nothing is enabled in the sandbox beyond its confined units).
What the scripts made is found by comparing the private trees before and after, and recorded
as evidence ("made by PKG's postinst"). A script that fails makes create fail with its output,
and the create's transaction removes everything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import libvirt

from .apply import apparmor, kernelfs
from .apply.libvirt import is_active
from .config import Kind, SandboxConfig
from .errors import HostError
from .evidence import Access, PathEvidence
from .host import HostFacts
from .initscript import init_command
from .pathevidence import under
from .plan import EXIT_STATUS_FILE, LOADER_CACHE, LOADER_PRELOAD, Mount, Plan, plan
from .runtime.common import read_channel
from .runtime.enter import init_process
from .runtime.poweroff import InitProcess

SETUP = "/run/vss-setup"  # inside the transient domain, on its /run tmpfs
DPKG_INFO = "/var/lib/dpkg/info"
# Host commands a postinst may call that would write the host's shared state (read-only here:
# the host's own installation did it, e.g. dpkg-statoverride on /usr) or enable units and
# init scripts in the sandbox: answered as done.
STUBBED = ("dpkg-trigger", "update-alternatives", "ldconfig", "deb-systemd-helper",
           "update-rc.d", "systemctl", "invoke-rc.d", "dpkg-statoverride")
TRUE = "/bin/true"  # coreutils, on the host root every sandbox sees
TIMEOUT = 300.0
GRACE = 5.0  # seconds for the set-up's init to exit once it has written its status
OUTPUT_LIMIT = 64 * 1024


def host_made_secrets(evidence: Sequence[PathEvidence],
                      etc: Path = Path("/etc")) -> tuple[PathEvidence, ...]:
    """A fresh instance's secrets are its own: in the service's own /etc directories, what is
    not world-readable and in no file list (the host's ssh host keys, its snakeoil key, a
    secret its postinst generated) is left out of the instance's copy, for the package's
    postinst to make anew. With -C, the host's are copied."""
    # A secret its configuration names (confrefs.py) is still the postinst's to make anew
    # where it lies in the service's own directories.
    listed = {e.path for e in evidence
              if not all(r.startswith("named in ") for r in e.reasons)}
    found: list[PathEvidence] = []
    for top in (e for e in evidence if e.is_dir and e.access is Access.PRIVATE
                and e.path.startswith("/etc/")):
        host = etc / os.path.relpath(top.path, "/etc")
        for dirpath, dirs, files in os.walk(host):
            for n in (*dirs, *files):
                path = os.path.join(dirpath, n)
                shown = "/etc/" + os.path.relpath(path, etc)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if shown in listed or stat.S_ISLNK(st.st_mode) or st.st_mode & 0o004:
                    continue
                if n in dirs:
                    dirs.remove(n)  # left out whole
                found.append(PathEvidence(shown, Access.HIDDEN, stat.S_ISDIR(st.st_mode), (
                    "the host's own (not world-readable, in no file list): a fresh instance "
                    "makes its own",), (st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)))
    return tuple(found)


def postinst_path(package: str, info: str = DPKG_INFO) -> str | None:
    """The package's postinst on the host (PKG.postinst, or PKG:ARCH.postinst)."""
    for name in sorted(os.listdir(info)) if os.path.isdir(info) else ():
        stem = name.removesuffix(".postinst")
        if name.endswith(".postinst") and stem.split(":")[0] == package:
            return os.path.join(info, name)
    return None


def script(postinsts: Sequence[tuple[str, str]]) -> str:
    """The setup command: each (package, postinst file name) configured as on a first
    installation (`configure` with no previous version)."""
    q = shlex.quote
    lines = [
        "set -u",
        f"S={SETUP}",
        "exec >&3 2>&3 3>&-",
        "mkdir -p $S/bin $S/debconf",
        # Links to the host's true: nothing the sandbox writes is run as a program (SELinux
        # lets it execute none of its own files, policy/README.md).
        *(f"ln -s {TRUE} $S/bin/{c}" for c in STUBBED),
        # For invoke-rc.d, which is stubbed: were it reached another way, it forbids.
        "printf '#!/bin/sh\\nexit 101\\n' > $S/policy-rc.d",
        "chmod +x $S/policy-rc.d",
        "cp $S/host-debconf/config.dat $S/host-debconf/templates.dat $S/debconf/ 2>/dev/null",
        "printf '%s\\n' 'Config: configdb' 'Templates: templatedb' '' 'Name: configdb' "
        "'Driver: File' \"Filename: $S/debconf/config.dat\" '' 'Name: templatedb' "
        "'Driver: File' 'Mode: 644' \"Filename: $S/debconf/templates.dat\" > $S/debconf.conf",
        "export PATH=$S/bin:$PATH DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true"
        " DEBCONF_SYSTEMRC=$S/debconf.conf DPKG_ADMINDIR=$S/dpkg POLICYRCD=$S/policy-rc.d"
        " DPKG_MAINTSCRIPT_NAME=postinst",
    ]
    for package, name in postinsts:
        lines += [
            f"echo {q(f'== {package}: postinst configure')}",
            f"DPKG_MAINTSCRIPT_PACKAGE={q(package)} $S/dpkg/info/{q(name)} configure '' ||"
            f" {{ rc=$?; echo {q(f'virt-sandbox-service: {package} postinst failed')}"
            " \"(exit $rc)\"; exit 1; }",
        ]
    return "\n".join(lines) + "\n"


SETUP_DOMAIN = "vss-setup-"  # + a token; its run dir is .NAME-setup-TOKEN (setup_names)
_TOKEN = re.compile(r"[0-9a-f]{8}")


def setup_names(run_dir: Path, sandbox: str) -> tuple[Path, str]:
    """A fresh instance's set-up: its run directory (under the tool's run dir; the caller
    makes it) and its transient domain's name, one random token in both. A `delete` after a
    create killed during the set-up finds what is left of it from the directory
    (leftovers)."""
    token = os.urandom(4).hex()
    return run_dir / f".{sandbox}-setup-{token}", SETUP_DOMAIN + token


def leftovers(run_dir: Path, sandbox: str) -> list[tuple[Path, str]]:
    """The run directories of the sandbox's set-ups that a killed create left, each with the
    name of its set-up domain (whose cgroups its init made are then left too)."""
    prefix = f".{sandbox}-setup-"
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return [(run_dir / n, SETUP_DOMAIN + n[len(prefix):]) for n in sorted(names)
            if n.startswith(prefix) and _TOKEN.fullmatch(n[len(prefix):])]


def setup_plan(cfg: SandboxConfig, facts: HostFacts, evidence: tuple[PathEvidence, ...],
               hidden: tuple[PathEvidence, ...], run_dir: str, command: str,
               name: str) -> Plan:
    """The transient domain's plan: the sandbox's own, as a generic one running `command`,
    with the host's dpkg and debconf databases read-only under SETUP. `name`: its domain's
    (setup_names)."""
    # A domain of its own: its own UUID (from machine_id, see apparmor.py) beside the sandbox's.
    setup = dataclasses.replace(cfg, name=name,
                                machine_id=os.urandom(16).hex(),
                                kind=Kind.GENERIC, units=(), networks=(),
                                command=(facts.sh, "-c", command))
    p = plan(setup, facts, evidence, hidden, "", run_dir)
    extra = (Mount(f"{SETUP}/dpkg", "/var/lib/dpkg", readonly=True, reason="dpkg database"),
             Mount(f"{SETUP}/host-debconf", "/var/cache/debconf", readonly=True,
                   reason="debconf answers (copied by the script)"))
    at = next(i for i, m in enumerate(p.mounts) if m.target == "/run") + 1  # on its tmpfs
    mounts = (*p.mounts[:at], *extra, *p.mounts[at:])
    init, env = init_command(setup, facts, mounts,
                             scratch=scratch_trees(mounts, hidden, SCRATCH_TREES))
    return dataclasses.replace(p, mounts=mounts, init=init, init_env=env)


# The host's installed trees a postinst may change the host's files in (a chmod, a chown, a
# link), which the host's own installation did already: a throw-away layer each in the
# set-up domain (initscript._scratch_layers). /bin, /sbin and /lib* are links into /usr on a
# merged-/usr host, and are then skipped.
SCRATCH_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")


def scratch_trees(mounts: Sequence[Mount], hidden: Sequence[PathEvidence],
                  trees: Sequence[str], root: str = "/") -> tuple[str, ...]:
    """Those of `trees` that are directories (not links) on the host, with no mount of the
    plan and no hidden path below them: an overlay takes its lower layer from the tree's own
    file system only, so it would show what a mount below hides."""
    out = []
    for tree in trees:
        host = os.path.join(root, tree.lstrip("/"))
        if os.path.islink(host) or not os.path.isdir(host):
            continue
        if any(under(m.target, tree) for m in mounts) or any(
                under(h.path, tree) for h in hidden):
            continue
        out.append(tree)
    return tuple(out)


def snapshot(trees: Sequence[Path]) -> set[str]:
    """Every path in the private trees, as the sandbox sees it (/etc/..., /var/...)."""
    seen: set[str] = set()
    for tree in trees:
        if not tree.is_dir():
            continue
        for dirpath, dirs, files in os.walk(tree):
            for n in (*dirs, *files):
                rel = os.path.relpath(os.path.join(dirpath, n), tree)
                seen.add(f"/{tree.name}/{rel}")
    return seen


def made(before: set[str], after: set[str]) -> list[str]:
    """The tops of what appeared: a new directory stands for what is in it. The loader's
    files, which the sandbox's init makes its own at every start, are not the scripts'."""
    new = sorted(after - before - {LOADER_CACHE, LOADER_PRELOAD})
    tops: list[str] = []
    for path in new:
        if not any(path.startswith(t + "/") for t in tops):
            tops.append(path)
    return tops


def run(conn: libvirt.virConnect, p: Plan, facts: HostFacts,
        meanwhile: Callable[[], None] = lambda: None) -> str:
    """Run the setup domain to its end; its output. HostError (with the output) on failure.
    `meanwhile` runs once the domain has started, before its end is waited for; if it
    raises, the domain is destroyed and that error goes on."""
    from .domain import METADATA_NS, lxc

    xml = lxc.build(p, facts, METADATA_NS)
    kernelfs.load()
    with tempfile.TemporaryFile() as out, apparmor.loaded(xml):
        try:
            dom = conn.createXMLWithFiles(xml, [out.fileno()],
                                          libvirt.VIR_DOMAIN_START_AUTODESTROY
                                          | libvirt.VIR_DOMAIN_START_VALIDATE)
        except libvirt.libvirtError as e:
            raise HostError("libvirt could not start the sandbox to run the package's "
                            f"postinst: {e.get_error_message()}",
                            "'virt-sandbox-service doctor' checks the host") from e
        init = init_process(dom)
        status: str | None = None
        try:
            meanwhile()
            status = _wait(dom, init, Path(p.run_dir) / os.path.basename(EXIT_STATUS_FILE))
        finally:  # after its status, the init only exits: give it GRACE, not a destroy
            _end(dom, init, GRACE if status is not None else 0.0)
        out.seek(0)
        text = out.read(OUTPUT_LIMIT).decode(errors="replace")
    if not status and not text.strip():
        # The init failed before the script ran (a mount, the LSM): only libvirt saw it.
        raise HostError("the sandbox that runs the package's own set-up ended before the "
                        f"set-up ran (libvirt's log: /var/log/libvirt/lxc/{p.config.name}.log)",
                        "'virt-sandbox-service doctor' checks the host; create it with -C "
                        "to start from the host's data instead")
    if status != "0":
        raise HostError("the package's own set-up of a fresh instance failed "
                        f"(exit {status or 'unknown'}):\n{text.rstrip()}",
                        "create it with -C to start from the host's data instead")
    return text


def _end(dom: libvirt.virDomain, init: InitProcess | None, grace: float,
         wait: float = 10.0) -> None:
    """Nothing of the set-up domain left running before the caller reads what it made and
    removes the cgroups its init made (they must be empty to go).

    Once its init has exited, nothing is: the kernel ends every process of a PID namespace
    before its init's exit is reported. Libvirt's own teardown of the transient domain (about
    0.2 s on libvirt 9.0, a kill-and-sleep round for its controller) is not waited for: the
    domain has a name of its own (vss-setup-...), and it goes away by itself. Otherwise (a
    failure or Ctrl-C on our side, or no pidfd) it is destroyed and waited for: autodestroy
    would end it only when our connection closes, after that clean-up (which then left its
    cgroup directories behind).
    """
    deadline = time.monotonic() + wait
    try:
        if init is not None and init.wait(grace):
            return
    finally:
        if init is not None:
            init.close()
    with contextlib.suppress(libvirt.libvirtError, HostError):  # never mask the cause
        if is_active(dom):
            dom.destroy()
        while is_active(dom) and time.monotonic() < deadline:
            time.sleep(0.02)


def _wait(dom: libvirt.virDomain, init: InitProcess | None, status_file: Path) -> str:
    """The exit status the domain's init wrote (read without following a link the sandbox
    made); "" if it did not: the domain ended without writing one (its init failed before
    running the script: libvirt's log has why), or it ran past TIMEOUT (then it is destroyed).

    The wait is on a pidfd of the init, which wakes the moment it exits (it writes the status
    just before): no polling, and no libvirt call while libvirtd is busy with the domain.
    """
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status = _status(status_file)
        if status is not None:
            return status
        if init is not None:
            if init.wait(deadline - time.monotonic()):
                return _status(status_file) or ""  # it ended: there, or never will be
            continue
        if not is_active(dom):
            return _status(status_file) or ""  # written just before it ended
        time.sleep(0.05)  # no pidfd: the init was not found (it ended already)
    with contextlib.suppress(libvirt.libvirtError):
        dom.destroy()
    return ""


def _status(status_file: Path) -> str | None:
    """The init's whole status line, once it has written one."""
    text = read_channel(status_file)
    return text.strip() if text is not None and text.endswith("\n") else None
