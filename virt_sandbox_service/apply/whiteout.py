"""Whiteouts in an overlay /etc's upper layer: the host's secrets hidden from a sandbox.
Apart from files.py, whose plan operations `start` never needs: a start that finds a new
secret on the host hides it with this alone (issue 16: what start imports is its time).
"""

from __future__ import annotations

import os
import stat


def make_whiteout(path: str, hides: str) -> bool:
    """An overlay whiteout (a 0/0 character device) at `path` in an upper layer whose lower
    layer is the host's /etc, so the host's `hides` is not seen. Missing parents are made
    with the host's owner and mode (a merged directory shows the upper one's). Nothing that
    is there is replaced: not a file the sandbox made, nor a parent that is not a directory
    (the sandbox removed it: a whiteout hides it already). Returns whether one was made."""
    rel = os.path.relpath(hides, "/etc")
    if not path.endswith(f"/etc/{rel}"):
        raise ValueError(f"whiteout {path} does not match {hides}")
    upper = path[:len(path) - len(rel) - 1]
    here, host = upper, "/etc"
    for part in rel.split("/")[:-1]:
        here, host = os.path.join(here, part), os.path.join(host, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            hst = os.lstat(host)
            os.mkdir(here)
            keep_meta(here, hst)
            continue
        if not stat.S_ISDIR(st.st_mode):
            return False
    if os.path.lexists(path):
        return False
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    return True


def keep_meta(path: str, st: os.stat_result, shift: int = 0) -> None:
    os.chown(path, st.st_uid + shift, st.st_gid + shift)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
