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
        message = e.get_error_message()
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


def _copy_in(stream: libvirt.virStream, stdin: int, ended: threading.Event) -> bool:
    """Caller's terminal -> console. True on Ctrl-] or when the terminal went away; False
    when the console ended first."""
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
        before, escape, _ = data.partition(ESCAPE)
        try:
            while before:
                sent = stream.send(before)
                before = before[max(sent, 0):]
        except libvirt.libvirtError:
            return False
        if escape:
            return True
    return False


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
