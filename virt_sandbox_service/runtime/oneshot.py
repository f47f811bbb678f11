"""One-shot `run`: a command in a transient sandbox; its stdout, stderr and exit status are ours.

Both backends boot a transient domain with the host's root read-only, private tmpfs /run,
/tmp, /dev/shm and no network but loopback, and return as soon as the command's status is
known; the domain then goes away by itself (its init ends, or the guest powers off). An error
or an interruption (Ctrl-C, SIGTERM) before that destroys it.

LXC: our own stdin, stdout and stderr, and the write end of a status pipe, are handed to the
container's init through libvirt (createXMLWithFiles: they arrive as fds 3-6, as in socket
activation). The init (sh, PID 1 of the container) runs the command on fds 3, 4, 5 and writes
its exit status to fd 6. No copy, no relay, no host directory: the command writes straight to
our stdout and stderr, so the streams stay apart and byte-exact by construction, a terminal
stays a terminal, and stdin is passed through as it is. Seen to cost nothing over a plain
`virsh create` of the same domain.

With -t (`--tty`) the command gets a terminal instead: a pty of the container's own devpts,
made inside by a few lines of python before the command (PTY_HELPER: setsid, the slave as
its controlling terminal and fds 0-2), whose master comes back to us over a socket passed as
fd 3 (SCM_RIGHTS). From there it is `connect`'s terminal (runtime/connect.py): ours raw,
bytes relayed both ways, window size and SIGWINCH passed on; Ctrl-C, Ctrl-Z and Ctrl-]
are bytes for the command, not signals for us. The status pipe is unchanged.

KVM: a VM cannot share file descriptors with the host, so four virtio-serial ports carry
stdin, stdout, stderr and the status; their host ends are unix sockets in a private run
directory, connected while the domain is still paused (nothing the guest writes is lost). The
ports are independent queues: the guest reports "EXIT OUTBYTES ERRBYTES" and we read each
stream until we have that many bytes. Closing our end of the stdin socket is the guest's EOF.

Why LXC runs are AUTODESTROY and KVM runs are not: libvirtd handles an autodestroy when our
connection closes, in its event loop, and waits there until qemu is gone; qemu lingers 1-1.6 s
after the guest powers off on this machine, and the whole daemon stalled for that long (seen:
the next `run` waited 1.2 s to connect). So a KVM run leaves the powering-off VM to libvirt's
own clean-up instead; if `run` is killed with SIGKILL, the VM still ends with its command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import selectors
import shutil
import signal
import socket
import sys
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from .. import host, hostsources, planner
from ..apply import apparmor, domainlogs, kernelfs
from ..apply import libvirt as lv
from ..config import (
    Driver,
    Kind,
    Paths,
    SandboxConfig,
    all_configs,
    check_arg_text,
    driver_for_uri,
    new_machine_id,
)
from ..errors import EXIT_RUN_FAILED, HostError, UserError
from ..graphics import Graphics, find_xorg
from ..graphics import check_driver as check_graphics
from ..initscript import _guest_binds, confine_argv
from ..limits import (
    LimitArgs,
    init_caps,
)
from ..mounts import MountSpec, MountType, mount_dir
from ..network import NetSpec
from ..plantypes import TMPFS
from . import session, stdiorelay
from .common import print_display
from .notify import sockets_at_low_level

RUN_PREFIX = "vss-run-"
EXIT_SETUP_FAILED = EXIT_RUN_FAILED  # like env(1) and podman: the sandbox, not the command, failed
KVM_BOOT_TIMEOUT = 300.0  # seconds without any sign of the guest before we give up
# The container's init: fds 3-6 are our stdin, stdout, stderr and the status pipe.
# exec in a subshell: the shell's own notes ("Killed") go to the console, not to our stderr.
# libvirt (9.0) mounts the roots of the host's v1 hierarchies in the container, read-write:
# every other cgroup's limits (other sandboxes', the host's own) and the run's own would be
# one write away. The command never needs them: they go before it runs, and, confined, it
# cannot mount them again. Its limits stay on libvirt's cgroup for it.
HIDE_CGROUPS = (f"umount -R /sys/fs/cgroup 2>&5 || {{ echo {EXIT_SETUP_FAILED} >&6; exit 1; }}; ")
# -t: the helper (fd 3: the socket) sends the master back; its setup errors go to fd 5.
LXC_TTY_INIT = ("unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES; "
                '(exec "$@" 2>&5 4>&- 5>&- 6>&-); rc=$?; echo $rc >&6; exit $rc')
PTY_HELPER = """\
import fcntl, os, signal, socket, sys, termios
master, slave = os.openpty()
with socket.socket(fileno=3) as sock:
    socket.send_fds(sock, [b"pty"], [master])
os.close(master)
os.setsid()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
for fd in (0, 1, 2):
    os.dup2(slave, fd)
os.close(slave)
for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python (confine.default_signals)
    signal.signal(sig, signal.SIG_DFL)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as e:
    print(f"{sys.argv[1]}: {e.strerror}", file=sys.stderr)
    sys.exit(126 if e.errno == 13 else 127)
"""
TTY_HANGUP_WAIT = 2.0  # seconds for a command whose terminal went away to end
LXC_INIT = ("unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES; "
            '(exec "$@" <&3 >&4 2>&5 3<&- 4>&- 5>&- 6>&-); rc=$?; echo $rc >&6; exit $rc')
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KVM_MIN_MEMORY = 128 * 2**20
# Where a run makes mount points itself (tmpfs); elsewhere its root is the host's, read-only.
RUN_TREES = tuple(t for t, _ in TMPFS)


@dataclass(frozen=True)
class RunOptions:
    """create's sandbox options, as typed; checked by the same parsers as create's."""

    limits: LimitArgs = field(default_factory=LimitArgs)
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    syscall_allow: tuple[str, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    networks: tuple[NetSpec, ...] = ()


def run(uri: str, argv: Sequence[str], paths: Paths, options: RunOptions | None = None,
        *, tty: bool = False, graphics: Graphics | None = None) -> int:
    """Run argv in a transient sandbox; return its exit status (125: the sandbox failed).
    tty: on a terminal of its own, relayed to ours (ours must be one).
    graphics: a VM with a display, the command run on the host's X server there."""
    opts = options or RunOptions()
    if not argv:
        raise UserError("run needs a command after --", "e.g. run -- /bin/echo hello")
    check_arg_text(argv)
    driver = driver_for_uri(uri)
    # A normal user's own daemon (root's qemu:///session is the system daemon's).
    users_session = session.is_session(uri) and os.geteuid() != 0
    if graphics is not None:  # (LXC's refusal says more than "needs root")
        check_graphics(uri, driver)
    check_privilege(uri, driver, os.geteuid())
    if tty:
        check_tty(driver)
    if driver is Driver.KVM and not users_session:
        host.check_kvm_lsm()
    xorg = find_xorg() if graphics is not None else ""
    name = RUN_PREFIX + os.urandom(4).hex()
    if tty and driver is Driver.KVM:
        argv = kvm_tty_argv(argv, host.find_tool(("/usr/bin/script",), "script", "util-linux"))
    sess = None
    if users_session:
        sess = session.prepare(paths, os.geteuid(), networks=opts.networks, limits=opts.limits)
        paths = sess.paths
    cfg = run_config(name, uri, argv, paths, opts)
    if sess is not None and sess.run_as is not None:
        r = sess.run_as
        cfg = dataclasses.replace(cfg, uid=r.uid, gid=r.gid, username=r.name, homedir=r.home)
    if cfg.memory is not None and driver is Driver.KVM and cfg.memory < KVM_MIN_MEMORY:
        raise UserError(f"--memory {opts.limits.memory} is too little for a KVM sandbox (at "
                        f"least {KVM_MIN_MEMORY // 2**20}M: it boots a kernel of its own)",
                        f"give --memory {KVM_MIN_MEMORY // 2**20}M or more")
    if cfg.mounts:  # what it is given, against what the sandboxes there are given
        hostsources.check_among(cfg, all_configs(paths), paths)
    conn = session.connect(uri) if sess is not None else lv.connect(uri)
    if cfg.networks:
        from ..provision import check_networks, ensure_our_filter

        check_networks(conn, cfg.networks)
        ensure_our_filter(conn, cfg.networks)
    # libvirt's logs of earlier runs go (apply/domainlogs.py), before this run's domain: once
    # it has ended, libvirtd's event loop is held by its teardown (a 200 ms round on libvirt
    # 9.0), and any call we made then would wait that out.
    domainlogs.sweep_transient(conn, uri)
    sys.stdout.flush()
    sys.stderr.flush()
    with _fresh_dirs(cfg):
        if driver is Driver.LXC:
            rc = _run_lxc(conn, cfg, paths, tty)
        elif tty:
            from .connect import _raw

            with _raw(0):
                rc = _run_kvm(conn, cfg, paths, sess, graphics, xorg)
        else:
            rc = _run_kvm(conn, cfg, paths, sess, graphics, xorg)
    lv.close_without_waiting(conn)
    return rc


def check_privilege(uri: str, driver: Driver, euid: int) -> None:
    """What each URI needs of who runs it, said before anything is tried. qemu:///session is
    a normal user's own daemon (runtime/session.py checks what it needs); libvirt serves
    root's from the system daemon, so root's run is a qemu:///system run."""
    if session.is_session(uri):
        return
    if euid != 0:
        what = ("libvirt's LXC driver starts containers only for root" if driver is Driver.LXC
                else "qemu:///system is the root-only system daemon")
        raise UserError(f"run -c {uri} needs root: {what}", "run it as root (sudo)")


def check_tty(driver: Driver) -> None:
    if not os.isatty(0):
        raise UserError("run -t needs a terminal: standard input is not one",
                        "drop -t (the command then gets our stdin, stdout and stderr as they "
                        "are)")


def kvm_tty_argv(argv: Sequence[str], script: str) -> list[str]:
    """run -t in a VM: no fd crosses into a guest, so the pty is made there by util-linux's
    script(1) on the host root the guest sees (the command leads a session on it: job control,
    Ctrl-C from the raw bytes we send down the stdin port), at our window size when it starts
    (the ports carry no size change: a resize does not reach it); -e: its exit status."""
    import shlex
    import struct

    from .connect import _winsize

    rows, cols = struct.unpack("HHHH", _winsize(0))[:2]
    inner = f"stty rows {rows} cols {cols} 2>/dev/null; exec {shlex.join(argv)}"
    return [script, "-qfec", inner, "/dev/null"]


def run_config(name: str, uri: str, argv: Sequence[str], paths: Paths,
               opts: RunOptions) -> SandboxConfig:
    """The transient sandbox's config. Without options nothing of create is imported (the
    plain run stays as fast as it was); with them, create's own checks run (validate_options),
    with /run, /tmp and /dev/shm as the trees a run makes mount points in (its /etc and /var
    are the host's, read-only)."""
    limits: dict[str, Any] = {}
    caps_drop: tuple[str, ...] = ()
    caps_add: tuple[str, ...] = ()
    syscalls: tuple[str, ...] = ()
    if opts != RunOptions():
        from ..create import CreateRequest, validate_options

        parsed = validate_options(CreateRequest(
            name=name, uri=uri, command=tuple(argv), limits=opts.limits,
            cap_drop=opts.cap_drop, cap_add=opts.cap_add, syscall_allow=opts.syscall_allow,
            mounts=opts.mounts,
            networks=opts.networks), own_trees=RUN_TREES)
        limits, syscalls = dict(parsed.limits), parsed.syscalls_allow
        # create's default drops apply once capabilities are asked for; a plain run keeps
        # what it always had (libvirt's LXC defaults; everything in a KVM guest).
        if opts.cap_drop or opts.cap_add:
            caps_drop, caps_add = parsed.caps_drop, parsed.caps_add
    if opts.limits.tasks is not None:
        # An LXC sandbox's init sets it up (plan._tasks_prologue) and its stop removes the
        # cgroup it made; a run's init does neither yet.
        raise UserError("--tasks is not available for run yet",
                        "bound the run with --memory, or create a sandbox with --tasks")
    # A state directory only for host-bind mounts with an empty source (removed after).
    fresh = any(s.type is MountType.HOST_BIND and not s.source
                for s in opts.mounts)
    return SandboxConfig(name=name, kind=Kind.GENERIC, uri=uri,
                         state_dir=str(paths.state_parent / name) if fresh else "",
                         command=tuple(argv), caps_drop=caps_drop, caps_add=caps_add,
                         syscalls_allow=syscalls,
                         mounts=opts.mounts, networks=opts.networks,
                         **limits)


@contextlib.contextmanager
def _fresh_dirs(cfg: SandboxConfig) -> Iterator[None]:
    """The directories behind `-m host-bind:DST=` (empty source), made for this run and
    removed after it, whatever happens."""
    if not cfg.state_dir:
        yield
        return
    try:
        for spec in cfg.mounts:
            if spec.type is MountType.HOST_BIND and not spec.source:
                os.makedirs(mount_dir(cfg.state_dir, spec.target), mode=0o755)
        yield
    finally:
        shutil.rmtree(cfg.state_dir, ignore_errors=True)


def _sandbox_env() -> tuple[tuple[str, str], ...]:
    env = [("PATH", SANDBOX_PATH), ("HOME", "/root")]
    if "TERM" in os.environ:
        env.append(("TERM", os.environ["TERM"]))
    return tuple(env)


# --- LXC ---------------------------------------------------------------------------------------


def _run_lxc(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths,
             tty: bool = False) -> int:
    if not cfg.machine_id:  # its AppArmor profile is named after it (apparmor.py)
        cfg = dataclasses.replace(cfg, machine_id=new_machine_id())
    sh = host.find_tool(("/bin/sh", "/usr/bin/sh"), "/bin/sh", "dash")
    facts = host.HostFacts(sh=sh, selinux=host.selinux_enabled(),
                           memory_kib=host._mem_total_kib(),
                           python=host.find_tool(("/usr/bin/python3", "python3"), "python3",
                                                 "python3"),
                           confine=host.confine_script(),
                           secmodels=host.libvirt_secmodels(conn))
    with contextlib.ExitStack() as reserving:  # the config lock, while a run's label is new
        if facts.selinux and not cfg.security_label:
            from ..registry import config_lock

            reserving.enter_context(config_lock(paths))
            cfg = dataclasses.replace(cfg, security_label=_run_label(paths))
        return _start_lxc(conn, cfg, facts, tty, reserving)


def _start_lxc(conn: libvirt.virConnect, cfg: SandboxConfig, facts: host.HostFacts, tty: bool,
               reserving: contextlib.ExitStack) -> int:
    """Start the run's container and relay until its status arrives; `reserving` is let go
    as soon as the domain runs."""
    sh = facts.sh
    # -m guest-bind: bound by the init before the command runs, as in a generic sandbox.
    binds = "".join(f"{b} 2>&5 || {{ echo {EXIT_SETUP_FAILED} >&6; exit 1; }}; "
                    for b in _guest_binds(cfg))
    # The command runs confined (see confine.py), like a generic sandbox's.
    jail = confine_argv(facts, init_caps(cfg), cfg.syscalls_allow)
    pty = (facts.python, "-I", "-S", "-c", PTY_HELPER) if tty else ()
    xml = planner.build(cfg, facts, planner.Inputs(
        init=(sh, "-c", binds + HIDE_CGROUPS + (LXC_TTY_INIT if tty else LXC_INIT), "vss-run",
              *pty, *jail, *cfg.command), init_env=_sandbox_env())).domain_xml
    # Under MCS the caller's own stdio (at s0-s0:c0.c1023) is not the sandbox's to use: the
    # command gets sockets at s0 instead, copied from and to ours (stdiorelay.py).
    relay = stdiorelay.Relay((2,) if tty else (0, 1, 2)) if stdiorelay.needed() else None
    with sockets_at_low_level():
        status, status_end = socket.socketpair()
        ours, theirs = socket.socketpair() if tty else (None, None)
    status_r, status_w = status.detach(), status_end.detach()
    opened = [theirs.detach(), os.open(os.devnull, os.O_RDWR)] if theirs else []
    if relay is not None:
        stdio = [*opened, *relay.their_fds()]
    else:
        stdio = [*opened, _usable_fd(2)] if opened else [_usable_fd(fd) for fd in (0, 1, 2)]
        opened += stdio[len(opened):]  # _usable_fd may have opened /dev/null
    try:
        kernelfs.load()
        with apparmor.loaded(xml):
            try:
                conn.createXMLWithFiles(xml, [*stdio, status_w],
                                        libvirt.VIR_DOMAIN_START_AUTODESTROY | lv.START_VALIDATE)
            except libvirt.libvirtError as e:
                raise HostError(f"libvirt could not start the sandbox: {e.get_error_message()}",
                                "'virt-sandbox-service doctor' checks the host") from e
            reserving.close()  # the domain runs: its label is among the running ones now
            os.close(status_w)
            status_w = -1
            if relay is not None:
                relay.parent_side()  # closes the command's ends: the container has them
            if ours is not None:
                os.close(opened.pop(0))  # the helper's end is the container's alone now
                text = _tty_session(ours, status_r)
            else:
                text = _read_line(status_r)
    finally:
        if relay is not None:
            relay.finish()
        if ours is not None:
            ours.close()
        for fd in (status_r, status_w, *opened):
            if fd > 2:
                os.close(fd)
    try:
        return int(text.strip())
    except ValueError:
        raise HostError("the sandbox ended without reporting the command's exit status",
                        "'virt-sandbox-service doctor' checks the host") from None


def _run_label(paths: Paths) -> str:
    """Under SELinux a run is MCS-confined as a sandbox is (svirt_lxc_net_t at a category
    pair of its own: libvirt's default label for a domain without one cannot set up its
    /dev here). The pair is one no sandbox's config and no running domain holds
    (registry.labels_in_use). It is not reserved in a config, the run being gone with its
    command: the caller holds the config lock until the domain runs, and from then on a
    create sees the pair among the running domains'."""
    from .. import labels, registry

    return labels.process_label(Driver.LXC, labels.allocate(registry.labels_in_use(paths)))


def _tty_session(sock: socket.socket, status_r: int) -> str:
    """Relay our terminal to the command's pty (its master arrives on sock) until it ends;
    its status line. The init failing before the pty exists: its status, with no relay."""
    from .connect import _forward_winch, _raw, _relay, _winsize

    r, _, _ = select.select([sock.fileno(), status_r], [], [])
    got: list[int] = []
    if sock.fileno() in r:
        _, got, _, _ = socket.recv_fds(sock, 16, 1)
    if not got:
        return _read_line(status_r)
    master = got[0]
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(0))
        with _raw(0), _forward_winch(0, master):
            hung_up = _relay(master, 0, 1, lambda: _readable(status_r), escape_char=None)
    finally:
        os.close(master)  # a hang-up for the command if our terminal went away
    if hung_up and not _readable(status_r, TTY_HANGUP_WAIT):
        return f"{128 + signal.SIGHUP}\n"
    return _read_line(status_r)


def _readable(fd: int, timeout: float = 0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _usable_fd(fd: int) -> int:
    """fd itself if it is open; else /dev/null in its place (CI may give us no stdin)."""
    try:
        os.fstat(fd)
        return fd
    except OSError:
        return os.open(os.devnull, os.O_RDWR)


def _read_line(fd: int) -> str:
    """The status line; or what came before EOF (libvirt's controller keeps a copy of the
    pipe until the container is torn down, so do not wait for EOF after the line)."""
    out = b""
    while not out.endswith(b"\n") and (chunk := os.read(fd, 64)):
        out += chunk
    return out.decode(errors="replace")


# --- KVM ---------------------------------------------------------------------------------------


def _run_kvm(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths,
             sess: session.SessionRun | None = None, graphics: Graphics | None = None,
             xorg: str = "") -> int:
    """sess: a qemu:///session run (boot files in the user's cache, root over 9p).
    graphics: with a display; its address is printed once the domain exists."""
    from .. import initrd
    from ..domain import kvm

    boot = initrd.ensure(sess.dirs.boot_dir if sess else None)
    kf = host.kvm_facts()
    facts = host.HostFacts(selinux=host.selinux_enabled(), kvm=kf.kvm, tsc_khz=kf.tsc_khz,
                           kvm_kernel=str(boot.kernel), kvm_initrd=str(boot.initrd),
                           virtiofsd=kf.virtiofsd, xorg=xorg)
    if not facts.kvm and os.isatty(2):
        _, why = host.kvm_choice()
        print(f"virt-sandbox-service: warning: {why}: the VM runs under TCG (slow)",
              file=sys.stderr, flush=True)
    chan = paths.run_dir / cfg.name
    chan.mkdir(parents=True, mode=0o700)
    dom = None
    try:
        xml = planner.build(cfg, facts, planner.Inputs(run_dir=str(chan),
                                                       session=sess is not None,
                                                       graphics=graphics)).domain_xml
        try:
            dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED | lv.START_VALIDATE)
        except libvirt.libvirtError as e:
            raise HostError(f"libvirt could not start the sandbox: {e.get_error_message()}",
                            "'virt-sandbox-service doctor' checks the host") from e
        socks = {p: _connect(chan / f"{p}.sock") for p in kvm.RUN_PORTS}
        if graphics is not None:
            print_display(dom)
        dom.resume()
        rc = KvmSession(dom, socks, chan / "console.log").run()
        dom = None  # the guest powers itself off; libvirt removes the transient domain
        return rc
    finally:
        if dom is not None:  # failed or interrupted before the status: take it down now
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        shutil.rmtree(chan, ignore_errors=True)


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


class KvmSession:
    """Pump our stdin to the guest and its stdout/stderr to ours until the status is in."""

    def __init__(self, dom: libvirt.virDomain, socks: dict[str, socket.socket],
                 console: Path) -> None:
        self.dom = dom
        self.socks = socks
        self.console = console
        self.counts = {"stdout": 0, "stderr": 0}
        self.status = b""

    def run(self) -> int:
        threading.Thread(target=self._feed_stdin, daemon=True).start()
        sel = selectors.DefaultSelector()
        for port in ("stdout", "stderr", "status"):
            self.socks[port].setblocking(False)
            sel.register(self.socks[port], selectors.EVENT_READ, port)
        last_alive = time.monotonic()
        want: tuple[int, int, int] | None = None
        while want is None or self.counts["stdout"] < want[1] or \
                self.counts["stderr"] < want[2]:
            events = sel.select(0.5)
            for key, _ in events:
                if not self._pump(key.data, key.fileobj):  # type: ignore[arg-type]
                    sel.unregister(key.fileobj)
            if want is None and b"\n" in self.status:
                want = _parse_status(self.status)
            if events:
                last_alive = time.monotonic()
            elif want is not None:
                if len(sel.get_map()) <= 1 or not _alive(self.dom):
                    break  # the guest is gone: nothing more will come
            elif not _alive(self.dom):
                raise HostError("the KVM sandbox stopped before the command finished"
                                + _console_tail(self.console),
                                "'virt-sandbox-service doctor' checks the host")
            elif time.monotonic() - last_alive > KVM_BOOT_TIMEOUT:
                raise HostError(f"no sign of the KVM sandbox after {KVM_BOOT_TIMEOUT:g} s"
                                + _console_tail(self.console))
        assert want is not None
        return want[0]

    def _pump(self, port: str, sock: socket.socket) -> bool:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if port == "status":
            self.status += data
        else:
            self.counts[port] += len(data)
            _write_all(1 if port == "stdout" else 2, data)
        return True

    def _feed_stdin(self) -> None:
        sock = self.socks["stdin"]
        try:
            while True:
                try:
                    data = os.read(0, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass  # the guest is gone
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the guest's EOF


def _parse_status(text: bytes) -> tuple[int, int, int]:
    try:
        rc, out, err = (int(x) for x in text.split(b"\n", 1)[0].split())
    except ValueError:
        raise HostError(f"the KVM sandbox sent a bad status line: {text[:80]!r}") from None
    return rc, out, err


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except BrokenPipeError:
            return  # our reader went away; keep draining so the guest can finish
        view = view[n:]


def _alive(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


def _console_tail(console: Path, lines: int = 5) -> str:
    try:
        text = console.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return (": " + " | ".join(x.strip() for x in text[-lines:])) if text else ""
