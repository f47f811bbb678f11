"""connect for KVM sandboxes: the guest's login console, through libvirt.

A KVM sandbox has two consoles: the serial one (ttyS0: kernel messages, a generic command's
output) that a foreground `start` copies to the host's journal, and a virtio console (hvc0,
libvirt alias `console1`, see domain/kvm.py) on which the guest init keeps a root login
(agetty --autologin root --wait-cr: root's shell once Enter is pressed, a new login after
each logout). `connect` opens the second with
`virDomain.openConsole` on a libvirt stream, so the two never compete. Only who may open the
domain's console reaches it: root on the host (libvirtd's qemu:///system socket).

The caller's terminal goes raw; a thread copies the console to it while we send what is
typed; Ctrl-] detaches and leaves the login (and the sandbox) running, as `virsh console`
does. A console carries no window size: we set hvc0's size through the guest agent
(`stty -F /dev/hvc0 rows R cols C`, which signals SIGWINCH to the foreground job) when we
attach and when the caller's terminal changes size, if the agent answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import libvirt

from ..apply import libvirt as lv
from ..config import SandboxConfig
from ..domain.kvm import LOGIN_CONSOLE
from ..errors import HostError, UserError
from . import common

log = logging.getLogger(__name__)
ESCAPE = b"\x1d"  # Ctrl-], as for LXC sandboxes and in virsh console
GUEST_TTY = "/dev/hvc0"
READER_WAIT = 2.0


def connect(cfg: SandboxConfig, stdin: int = 0, stdout: int = 1) -> int:
    """Attach the caller's terminal to the sandbox's login console until Ctrl-] (0) or the
    sandbox stops (0 too: nobody asked for anything that failed)."""
    from .connect import _raw, _winsize

    conn = lv.connect(cfg.uri)
    dom = common.domain(conn, cfg)
    if not dom.isActive():
        raise UserError(f"sandbox '{cfg.name}' is not running",
                        f"start it: virt-sandbox-service start --detach {cfg.name}")
    stream = open_console(conn, dom, cfg.name)
    print(f"Connected to the console of sandbox {cfg.name} (a root login; press Enter for a "
          "prompt). Escape character is ^] (the sandbox keeps running).",
          file=sys.stderr, flush=True)
    ended = threading.Event()
    reader = threading.Thread(target=_copy_out, args=(stream, stdout, ended), daemon=True)
    reader.start()
    try:
        with _raw(stdin), _window_size(dom, stdin, _winsize):
            detached = _copy_in(stream, stdin, ended)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()  # ends our side only: the login on hvc0 stays
        reader.join(READER_WAIT)
    if detached:
        print(f"\nDetached from sandbox {cfg.name}; it keeps running.", file=sys.stderr)
    else:
        print(f"\nThe console of sandbox {cfg.name} closed: the sandbox stopped.",
              file=sys.stderr)
    return 0


def open_console(conn: libvirt.virConnect, dom: libvirt.virDomain,
                 name: str) -> libvirt.virStream:
    """The login console's stream. Not forced: a second `connect` is refused, not allowed to
    cut off the first."""
    stream = conn.newStream(0)
    try:
        dom.openConsole(LOGIN_CONSOLE, stream, 0)
    except libvirt.libvirtError as e:
        message = e.get_error_message() or ""
        if "Active console session" in message:
            raise UserError(f"another connect is attached to the console of sandbox '{name}'",
                            "detach it (Ctrl-]) first; there is one console") from e
        if "cannot find character device" in message:
            raise UserError(f"sandbox '{name}' has no login console (it was created before "
                            "connect supported KVM)",
                            f"recreate it, or use 'virt-sandbox-service execute {name} -- CMD'"
                            ) from e
        raise HostError(f"cannot open the console of sandbox '{name}': {message}") from e
    return stream


def _copy_out(stream: libvirt.virStream, stdout: int, ended: threading.Event) -> None:
    """Console -> caller's terminal, until the stream ends (detach or the domain stopping)."""
    try:
        while True:
            data = stream.recv(65536)
            if not isinstance(data, bytes) or not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view):]
    except (libvirt.libvirtError, OSError) as e:
        log.debug("console stream: %s", e)
    finally:
        ended.set()


def _copy_in(stream: libvirt.virStream, stdin: int, ended: threading.Event,
             escape_char: bytes | None = ESCAPE) -> bool:
    """Caller's terminal -> console. True on Ctrl-] (`escape_char`; None: none) or when the
    terminal went away; False when the console ended first."""
    while not ended.is_set():
        r, _, _ = select.select([stdin], [], [], 0.2)
        if not r:
            continue
        try:
            data = os.read(stdin, 4096)
        except OSError:  # EIO: the caller's terminal hung up
            return True
        if not data:
            return True
        before, escape, _ = (data.partition(escape_char) if escape_char
                             else (data, b"", b""))
        try:
            while before:
                sent = stream.send(before)
                before = before[max(sent, 0):]
        except libvirt.libvirtError:
            return False
        if escape:
            return True
    return False


# --- start -t: a generic LXC sandbox's console as our terminal ---------------------------------


def check_start_tty(cfg: SandboxConfig, detach: bool) -> None:
    """start -t: before anything starts."""
    from ..config import Driver, Kind

    if detach:
        raise UserError("start -t stays in the foreground: it cannot go with --detach",
                        f"drop one of them; 'connect {cfg.name}' gives a running sandbox a shell")
    if cfg.kind is not Kind.GENERIC or cfg.driver is not Driver.LXC:
        raise UserError(f"start -t is for generic LXC sandboxes: '{cfg.name}' is not one",
                        f"use 'virt-sandbox-service connect {cfg.name}' for a shell in it")
    if not os.isatty(0):
        raise UserError("start -t needs a terminal: standard input is not one",
                        "drop -t (the command's output then goes to our standard output)")


def attach_lxc_console(conn: libvirt.virConnect, dom: libvirt.virDomain, init: int,
                       attached: threading.Event
                       ) -> tuple[threading.Thread, contextlib.AbstractContextManager[None]]:
    """A thread relaying the sandbox's console (its command's controlling terminal, a pty of
    the sandbox's own devpts that libvirt's controller holds) and our terminal both ways, and
    the context that keeps ours raw with its window size on the console. Every byte is the
    command's (Ctrl-C, Ctrl-Z, Ctrl-]); the relay ends with the sandbox."""
    from .connect import _raw, _winsize

    def relay() -> None:
        try:
            stream = open_lxc_console(conn, dom)
        finally:
            attached.set()
        ended = threading.Event()
        threading.Thread(target=_copy_in, args=(stream, 0, ended, None), daemon=True).start()
        _copy_out(stream, 1, ended)

    @contextlib.contextmanager
    def terminal() -> Iterator[None]:
        def push(signum: int = 0, frame: FrameType | None = None) -> None:
            _set_console_size(init, _winsize(0))

        old = signal.signal(signal.SIGWINCH, push)
        try:
            with _raw(0):
                push()
                yield
        finally:
            signal.signal(signal.SIGWINCH, old)

    return threading.Thread(target=relay, daemon=True), terminal()


def open_lxc_console(conn: libvirt.virConnect, dom: libvirt.virDomain) -> libvirt.virStream:
    stream = conn.newStream(0)
    try:
        lv.open_first_console(dom, stream, 0)
    except libvirt.libvirtError as e:
        raise HostError(f"cannot open the console of sandbox '{dom.name()}': "
                        f"{e.get_error_message()}") from e
    return stream


def _set_console_size(init: int, winsize: bytes) -> None:
    """The console's window size, set on its slave side inside the sandbox (the kernel sends
    SIGWINCH to its foreground job). /dev/console there may be a link into its devpts, which
    must resolve inside the sandbox's root, not ours."""
    import fcntl
    import termios

    root = f"/proc/{init}/root"
    path = "/dev/console"
    with contextlib.suppress(OSError):
        target = os.readlink(root + path)
        path = target if target.startswith("/") else os.path.join("/dev", target)
    try:
        fd = os.open(root + path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        log.debug("console size of %d: %s", init, e)
        return
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, winsize)
    finally:
        os.close(fd)


def stty_command(rows: int, cols: int) -> list[str]:
    """What sets the guest console's size (run in the guest through the agent)."""
    return ["stty", "-F", GUEST_TTY, "rows", str(rows), "cols", str(cols)]


@contextlib.contextmanager
def _window_size(dom: libvirt.virDomain, stdin: int,
                 winsize: Callable[[int], bytes]) -> Iterator[None]:
    """Pass the caller's window size to hvc0 now and on every SIGWINCH (in a thread: the
    agent may be slow or absent, and typing must not wait for it)."""
    def push() -> None:
        rows, cols = struct.unpack("HHHH", winsize(stdin))[:2]
        threading.Thread(target=_set_size, args=(dom, rows, cols), daemon=True).start()

    def on_winch(signum: int, frame: FrameType | None) -> None:
        push()

    old = signal.signal(signal.SIGWINCH, on_winch)
    try:
        push()
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def _set_size(dom: libvirt.virDomain, rows: int, cols: int) -> None:
    from .kvm import agent

    argv = stty_command(rows, cols)
    try:
        agent(dom, "guest-exec", {"path": argv[0], "arg": argv[1:]}, wait=0)
    except HostError as e:
        log.debug("window size of %s: %s", dom.name(), e)
