"""`execute`'s and `run`'s stdio through sockets at the low end of the caller's MLS range.

Under MCS a sandbox at s0:cA,cB may write only to what its level dominates. The caller's
stdio (a pipe, a file or a terminal of an administrator at s0-s0:c0.c1023) is not: the
command inside would be refused its own output. So, where the caller's context has a range,
the command gets sockets made at s0 (notify.sockets_at_low_level) and this side copies
between them and the caller's stdio. Elsewhere the command gets the caller's stdio itself.

`run` hands the command's ends to libvirtd (createXMLWithFiles), whose daemon and LXC
controller must then be allowed to receive them: the policy module allows virtd_t and
virtd_lxc_t to carry the caller's sockets (policy/virt_sandbox_service.te).
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
    """A socket pair for each of `streams` (0, 1, 2 by default): the command's ends become
    those fds of it (child_side, or their_fds handed on), and this process copies stdin in
    and stdout, stderr out (parent_side ... finish)."""

    def __init__(self, streams: tuple[int, ...] = (0, 1, 2)) -> None:
        self.streams = streams
        with sockets_at_low_level():
            self.pairs = [socket.socketpair() for _ in streams]
        self.threads: list[threading.Thread] = []

    def their_fds(self) -> list[int]:
        """The command's ends, in the order of `streams`, for a caller that hands them on
        (run passes them to libvirt); parent_side closes them."""
        return [theirs.fileno() for _, theirs in self.pairs]

    def child_side(self) -> None:
        """In the forked child, before it enters the sandbox."""
        for fd, (ours, theirs) in zip(self.streams, self.pairs, strict=True):
            os.dup2(theirs.fileno(), fd)
            ours.close()
            theirs.close()

    def parent_side(self) -> None:
        for _ours, theirs in self.pairs:
            theirs.close()
        for fd, (ours, _) in zip(self.streams, self.pairs, strict=True):
            if fd == 0:
                # stdin may never end (a terminal): a daemon thread, not waited for.
                threading.Thread(target=_copy_in, args=(0, ours), daemon=True).start()
                continue
            t = threading.Thread(target=_copy_out, args=(ours, fd), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        """After the command exited: what it wrote is copied out. A process it left running
        in the background may hold its end open; that one is not waited for past DRAIN.
        Every socket of the relay is closed, also where parent_side never ran (a failed
        start)."""
        for t in self.threads:
            t.join(DRAIN)
        for pair in self.pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()


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
