"""`execute`'s stdio through sockets at the low end of the caller's MLS range.

Under MCS a sandbox at s0:cA,cB may write only to what its level dominates. The caller's
stdio (a pipe, a file or a terminal of an administrator at s0-s0:c0.c1023) is not: the
command inside would be refused its own output. So, where the caller's context has a range,
the command gets sockets made at s0 (notify.sockets_at_low_level) and this side copies
between them and the caller's stdio. Elsewhere the command gets the caller's stdio itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from .notify import current_context, low_level_context, sockets_at_low_level

CHUNK = 65536
DRAIN = 2.0  # seconds to finish copying output after the command exits (see finish)


def needed() -> bool:
    return low_level_context(current_context()) is not None


class Relay:
    """Three socket pairs: the command's ends become its fds 0, 1 and 2 (child_side); this
    process copies stdin in and stdout, stderr out (parent_side ... finish)."""

    def __init__(self) -> None:
        with sockets_at_low_level():
            self.pairs = [socket.socketpair() for _ in range(3)]
        self.threads: list[threading.Thread] = []

    def child_side(self) -> None:
        """In the forked child, before it enters the sandbox."""
        for fd, (ours, theirs) in enumerate(self.pairs):
            os.dup2(theirs.fileno(), fd)
            ours.close()
            theirs.close()

    def parent_side(self) -> None:
        for _ours, theirs in self.pairs:
            theirs.close()
        stdin, stdout, stderr = (ours for ours, _ in self.pairs)
        # stdin may never end (a terminal): a daemon thread, not waited for.
        threading.Thread(target=_copy_in, args=(0, stdin), daemon=True).start()
        self.threads = [threading.Thread(target=_copy_out, args=(s, fd), daemon=True)
                        for s, fd in ((stdout, 1), (stderr, 2))]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        """After the command exited: what it wrote is copied out. A process it left running
        in the background may hold its end open; that one is not waited for past DRAIN."""
        for t in self.threads:
            t.join(DRAIN)
        for ours, _ in self.pairs:
            with contextlib.suppress(OSError):
                ours.close()


def _copy_in(fd: int, sock: socket.socket) -> None:
    try:
        while data := os.read(fd, CHUNK):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the command closed its stdin, or exited


def _copy_out(sock: socket.socket, fd: int) -> None:
    try:
        while data := sock.recv(CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except OSError:
        pass  # our reader went away (a closed pipe): as the command would have seen it
