"""The sandbox's init: the shell script its first process runs (LXC), and the words that run
what the sandbox is for confined (both backends). Pure text from the config, the host facts
and the plan's mounts; golden files in tests/golden/init-*.sh (tests/test_initscript.py).

The init does, in order, what only it may do while it still holds CAP_SYS_ADMIN: confine
itself to cgroups it cannot loosen (and hide the host's cgroup trees), put the -i image's
trees or the overlay /etc in place, make -m guest-bind mounts; then it runs systemd (unit
sandboxes) or the command (generic ones) through confine.py, so that nothing in the
sandbox keeps CAP_SYS_ADMIN or the calls of the seccomp filter.
"""

from __future__ import annotations

import os
import shlex

from . import image, labels, users
from .config import Kind, SandboxConfig
from .host import HostFacts
from .layout import PAYLOAD_CGROUP as PAYLOAD_CGROUP
from .limits import TASKS_ENV, init_caps
from .mounts import MountType
from .plantypes import (
    ETC_MERGED,
    ETC_STAGE,
    ETC_WORK,
    EXIT_STATUS_FILE,
    GENERATOR_DIRS,
    GENERATOR_PATH,
    GO_FIFO,
    NOTIFY_SOCKET,
    OVERLAY_OPTIONS,
    Mount,
    seen_at,
)


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
    context = _overlay_context(config, facts)
    mount = (f"mount -t overlay -o {q(opts)} overlay {m}" if not context else
             " ".join(map(q, (facts.python, "-I", "-S", "-c", RAW_MOUNT, "overlay", m,
                              f'{opts},context="{context}"'))))
    lines = [f"mkdir {m} && {mount} || exit 125"]
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


# mount(2) itself, for a mount with an SELinux context: mount(8)'s libmount drops context=
# options when libselinux thinks SELinux is disabled, as it does inside the container.
RAW_MOUNT = """import ctypes, os, sys
fstype, target, data = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, data.encode()) != 0:
    sys.exit(f"mount {fstype} on {target}: {os.strerror(ctypes.get_errno())}")
"""


def _overlay_context(config: SandboxConfig, facts: HostFacts) -> str:
    """SELinux: the overlay /etc as files of the sandbox's own (its type, its MCS pair), as
    container engines mount theirs. Without it the overlay shows the host's labels (etc_t,
    ld_so_cache_t): the sandbox may not replace what it must, and what it writes gets
    etc_t at s0 instead of its category. Overlayfs still reaches the host's /etc below with
    the init's own credentials, so the sandbox reads nothing more through it."""
    if not facts.selinux or not facts.sandbox_file_type:
        return ""
    return labels.file_context(config.security_label, facts.sandbox_file_type) or ""


def _image_binds(config: SandboxConfig, facts: HostFacts) -> list[str]:
    """-i: put the image's trees (and the mounts on them) on /etc and /var."""
    if config.image_size is None:
        return []
    top = image.IMAGE_MOUNT
    return [f"mount --rbind {top}/etc /etc && mount --rbind {top}/var /var && "
            f"{shlex.quote(facts.umount)} -l {top} || exit 125"]


SCRATCH = "/run/.vss-scratch"  # the scratch layers' upper and work dirs, on the /run tmpfs


def _scratch_layers(trees: tuple[str, ...]) -> list[str]:
    """create's set-up domain only (maintscripts.py): a throw-away overlay on each of these
    read-only host trees (/usr), so that what a postinst does to the host's own installed
    files (mariadb-server's chmod and chown of its PAM helper under /usr/lib) succeeds, as it
    did at the host's installation, and is forgotten with the domain: the host's files stay
    what the host's installation made them, and no sandbox sees the change. Best effort: a
    tree whose overlay is refused (an LSM's mount rule) stays read-only, as before."""
    q = shlex.quote
    lines = []
    for tree in trees:
        top = f"{SCRATCH}/{tree.strip('/').replace('/', '-')}"
        opts = f"lowerdir={tree},upperdir={top}/upper,workdir={top}/work,{OVERLAY_OPTIONS}"
        lines.append(f"mkdir -p {q(top)}/upper {q(top)}/work && mount -t overlay -o {q(opts)} "
                     f"overlay {q(tree)} || echo 'virt-sandbox-service: {tree} stays "
                     "read-only for the set-up (no scratch layer)' >&2")
    return lines


def _guest_binds(config: SandboxConfig) -> list[str]:
    q = shlex.quote
    return [f"mount --bind {q(s.source)} {q(s.target)}"
            for s in config.mounts if s.type is MountType.GUEST_BIND]


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


def init_command(config: SandboxConfig, facts: HostFacts, mounts: tuple[Mount, ...] = (),
                 keep_generators: tuple[str, ...] = (), scratch: tuple[str, ...] = ()
                 ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The sandbox's first process and its environment (`mounts`: the plan's;
    `keep_generators`: the systemd generators of the service's packages, kept_generators();
    `scratch`: host trees given a throw-away layer, for create's set-up domain only).

    The init does the mounts only it may do, then runs what the sandbox is for through
    confine.py: from there on nothing in the sandbox has CAP_SYS_ADMIN or the calls of the
    filter, its own systemd included (so the service cannot get more from it)."""
    q = shlex.quote
    jail = " ".join(map(q, confine_argv(facts, init_caps(config), config.syscalls_allow)))
    prologue = [*_cgroup_prologue(facts), *_image_binds(config, facts),
                *_overlay_binds(config, facts, mounts), *_guest_binds(config),
                *_scratch_layers(scratch), *_hidden_modes(facts, mounts)]
    if config.kind is Kind.GENERIC:
        # sh stays PID 1 so the command's exit status reaches the host (libvirt reports none).
        # The command leads a session of its own with the console (a pty of the sandbox's
        # devpts) as its controlling terminal: libvirt's init has none, so a shell there had
        # no job control and Ctrl-C on `start -t` reached nothing. util-linux's setsid, beside
        # its unshare (setsid -c: TIOCSCTTY on the console, which no session holds).
        setsid = os.path.join(os.path.dirname(facts.unshare), "setsid")
        script = "\n".join([
            *prologue,
            f"if [ -p {GO_FIFO} ]; then read -r _ < {GO_FIFO}; fi",
            f'{q(facts.unshare)} --cgroup {q(setsid)} -c {jail} "$@"; rc=$?',
            f"echo $rc > {EXIT_STATUS_FILE}; exit $rc",
        ])
        return (facts.sh, "-c", script, "sandbox-init", *command(config, facts)), ()
    # Confined, systemd cannot mount the API file systems it insists on: /run/lock here, and
    # its cgroup2 tree in its new cgroup namespace. Its unit directories are read-only to
    # everything in the sandbox.
    script = "\n".join([
        *prologue,
        *generator_path(keep_generators),
        "mkdir -p /run/lock && "
        "mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=5m tmpfs /run/lock || exit 125",
        "mount --bind /etc/systemd /etc/systemd && "
        "mount -o remount,bind,ro /etc/systemd || exit 125",
        f"exec {q(facts.unshare)} --cgroup {q(facts.sh)} -c "
        "'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"' sandbox-init "
        f"{jail} {q(facts.systemd)} systemd.unified_cgroup_hierarchy=1",
    ])
    return (facts.sh, "-c", script), (("NOTIFY_SOCKET", NOTIFY_SOCKET),
                                      ("SYSTEMD_GENERATOR_PATH", GENERATOR_PATH))


def _hidden_modes(facts: HostFacts, mounts: tuple[Mount, ...]) -> list[str]:
    """The empty tmpfs over each hidden host tree (plan.hidden_trees) is 1777 as libvirt
    mounts it: 0755 instead (a KVM guest's init mounts it so), so that no user of the
    sandbox can plant a file in its root's home."""
    hidden = [m.target for m in mounts if m.tmpfs_kib and m.target in facts.private_trees]
    if not hidden:
        return []
    return [f"chmod 0755 {' '.join(map(shlex.quote, hidden))} || exit 125"]


def generator_path(keep: tuple[str, ...]) -> list[str]:
    """The sandbox's systemd runs the generators in GENERATOR_PATH only (its
    SYSTEMD_GENERATOR_PATH): links to `keep` (kept_generators), each to the first of systemd's
    directories that has it, made at each start. No other generator on the host runs, one
    installed later included. (Before, each host generator got a /dev/null mask instead: one
    `ln` process each, about 45 ms of every start here; issue 16.) An admin's mask of a kept
    one in /etc is linked to, so it stays masked."""
    q = shlex.quote
    lines = [f"mkdir -p {GENERATOR_PATH} || exit 125"] if keep else []
    for name in keep:
        lines.append(f"for d in {' '.join(GENERATOR_DIRS)}; do "
                     f'if [ -e "$d"/{q(name)} ] || [ -L "$d"/{q(name)} ]; then '
                     f'ln -s "$d"/{q(name)} {GENERATOR_PATH}/{q(name)} || exit 125; break; fi; '
                     "done")
    return lines


def _tasks_prologue() -> list[str]:
    """--tasks: libvirt (9.0) leaves LXC containers at the root of the v1 pids hierarchy, so
    make a cgroup of our own there, mirroring libvirt's path, with the limit on it and the
    init in its child (the cgroup namespace root made next). A limit nothing can hold must
    not be a silent no-op: then the sandbox does not boot. On a pure cgroup v2 host (a
    cgroup2 /sys/fs/cgroup here) the host holds the limit on the domain's scope instead
    (runtime/lxc.py, through systemd's TasksMax=)."""
    e = TASKS_ENV
    return [
        f"if [ -n \"${{{e}:-}}\" ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then",
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
      root that can mount cgroupfs could otherwise raise its own memory limit); v1's device
      I/O throttles do not reach a child (measured: a 1M/s read throttle on the parent, 700
      MB/s in the child), so they are copied to it (and `limit` changes both);
    - in cgroup2, move to a path mirroring libvirt's v1 one, so a systemd inside manages its
      own subtree and not the host's system.slice; where libvirt did give the container a
      cgroup2 path (a pure v2 host: .../machine-lxc-N-NAME.scope/libvirt, with the limits
      on it), into a child of it, as in v1: a cgroup namespace's root is writable from inside
      (nsdelegate did not refuse writes to its memory.max on Debian 12's 6.1 kernel, though
      cgroup-v2.rst says it should), so the limits must sit above that root;
    - unmount libvirt's cgroup mounts; the caller then unshares the cgroup namespace.
    """
    q = shlex.quote
    # A function, whose own positional parameters collect the children, so that one mkdir
    # makes them all, and the cpusets are copied by the shell itself: a process per
    # hierarchy was about 15 ms of every start here (issue 16).
    return [
        "vss_cgroups() {",
        "  set --",
        "  while IFS=: read -r _ ctl path; do",
        "    [ -n \"$ctl\" ] && [ \"$path\" != / ] || continue",
        "    d=/sys/fs/cgroup/${ctl#name=}$path; [ -d \"$d\" ] || continue",
        f"    set -- \"$@\" \"$d/{PAYLOAD_CGROUP}\"",
        "  done < /proc/self/cgroup",
        "  [ $# -eq 0 ] || mkdir -p \"$@\"",
        "  for p; do",
        f"    d=${{p%/{PAYLOAD_CGROUP}}}",
        "    if [ -f \"$d/cpuset.cpus\" ]; then",  # a new cpuset child starts empty
        "      read -r v < \"$d/cpuset.cpus\"; echo \"$v\" > \"$p/cpuset.cpus\"",
        "      read -r v < \"$d/cpuset.mems\"; echo \"$v\" > \"$p/cpuset.mems\"",
        "    fi",
        "    for f in \"$d\"/blkio.throttle.*_device; do",
        "      [ -f \"$f\" ] || continue",
        "      while read -r dev rate; do echo \"$dev $rate\" > \"$p/${f##*/}\"; done < \"$f\"",
        "    done",
        "    echo $$ > \"$p/cgroup.procs\"",
        "  done",
        "}",
        "vss_cgroups",
        *_tasks_prologue(),
        "cg=$(sed -n 's/^0::\\(.*\\)$/\\1/p' /proc/self/cgroup)",
        "if [ \"$cg\" = / ]; then "
        f"cg=$({CPU_CGROUP_PATH}); "
        f"elif [ -n \"$cg\" ]; then cg=\"${{cg%/}}/{PAYLOAD_CGROUP}\"; fi",
        f"{q(facts.umount)} -R /sys/fs/cgroup",
        "if [ -n \"$cg\" ] && [ \"$cg\" != / ]; then",
        "  mount -t cgroup2 cgroup2 /sys/fs/cgroup && mkdir -p \"/sys/fs/cgroup$cg\" &&",
        "  echo $$ > \"/sys/fs/cgroup$cg/cgroup.procs\"",
        f"  {q(facts.umount)} /sys/fs/cgroup",
        "fi",
    ]
