"""Reading and writing inside a sandbox's private trees (<state>/etc, <state>/var) from the host.

Root in the sandbox owns those trees and may put a symlink anywhere in them, e.g. replace
/etc/apache2 by a link to the host's /root. Everything here walks them one component at a
time, opening each with O_NOFOLLOW relative to its parent's descriptor, so a symlink the
sandbox planted never leads a host-side read or write out of the tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from ..conffiles import MISSING, FileState, describe
from ..errors import HostError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# (mode, uid, gid) for a directory that must be made on the way (its tree-relative path).
ParentMeta = Callable[[str], tuple[int, int, int]]


class UnsafePath(HostError):
    """A component of the path inside the sandbox's tree is a symlink or not a directory."""


@contextlib.contextmanager
def _parent(base: Path, rel: str, make: ParentMeta | None = None) -> Iterator[tuple[int, str]]:
    """(descriptor of the directory holding rel's last component, that component)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"not a path inside a tree: {rel!r}")
    fd = _open_dir(str(base), None, str(base))
    try:
        walked = ""
        for part in parts[:-1]:
            walked = f"{walked}/{part}"
            try:
                nfd = _open_dir(part, fd, walked)
            except FileNotFoundError:
                if make is None:
                    raise
                nfd = _make_dir(fd, part, *make(walked.lstrip("/")))
            os.close(fd)
            fd = nfd
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _open_dir(name: str, dir_fd: int | None, shown: str) -> int:
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{shown} is a symlink or not a directory; not followed") from e
        raise


def _make_dir(dir_fd: int, name: str, mode: int, uid: int, gid: int) -> int:
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = os.open(name, _DIR, dir_fd=dir_fd)
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)  # after chown, which clears set-id bits; mkdir's mode obeys the umask
    return fd


def read(base: Path, rel: str) -> FileState:
    """The regular file at rel, or what is there instead; never follows a symlink."""
    try:
        with _parent(base, rel) as (fd, leaf):
            st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                link = os.readlink(leaf, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                return FileState(None, describe(st, link))
            ffd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            with os.fdopen(ffd, "rb") as f:
                return FileState(f.read(), meta=(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
    except FileNotFoundError:
        return MISSING
    except UnsafePath as e:
        return FileState(None, f"not read: {e.message}")


def lexists(base: Path, rel: str) -> bool:
    """Whether something is at rel (a symlink counts; a symlinked parent counts too: what
    lies under it is not ours to make)."""
    try:
        with _parent(base, rel) as (fd, leaf):
            os.stat(leaf, dir_fd=fd, follow_symlinks=False)
            return True
    except FileNotFoundError:
        return False
    except UnsafePath:
        return True


def make_dir(base: Path, rel: str, mode: int, uid: int, gid: int, parents: ParentMeta) -> None:
    """Make the directory rel (and missing parents, as `parents` says); never replaces."""
    with _parent(base, rel, parents) as (fd, leaf):
        os.close(_make_dir(fd, leaf, mode, uid, gid))


def remove_dir(base: Path, rel: str) -> None:
    """Undo of make_dir: removes rel if it is still an empty directory."""
    with contextlib.suppress(OSError), _parent(base, rel) as (fd, leaf):
        os.rmdir(leaf, dir_fd=fd)


def write(base: Path, rel: str, data: bytes, mode: int, uid: int, gid: int,
          parents: ParentMeta) -> None:
    """Replace (or make) the file rel atomically; a symlink there is replaced, not followed."""
    with _parent(base, rel, parents) as (fd, leaf):
        tmp = f".{leaf}.vss-tmp{os.getpid()}"
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=fd)
        try:
            with os.fdopen(wfd, "wb") as f:
                f.write(data)
                os.fchown(f.fileno(), uid, gid)
                os.fchmod(f.fileno(), mode)
            os.replace(tmp, leaf, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise


def remove_file(base: Path, rel: str) -> None:
    with contextlib.suppress(FileNotFoundError), _parent(base, rel) as (fd, leaf):
        os.unlink(leaf, dir_fd=fd)


def read_link(base: Path, rel: str) -> str | None:
    """The target of the symlink at rel; None where there is none (or something else)."""
    try:
        with _parent(base, rel) as (fd, leaf):
            return os.readlink(leaf, dir_fd=fd)
    except (OSError, UnsafePath):
        return None


def symlink(base: Path, rel: str, target: str, uid: int, gid: int,
            parents: ParentMeta) -> None:
    """Make (or replace) the symlink rel -> target; a link there is replaced, not followed."""
    with _parent(base, rel, parents) as (fd, leaf):
        tmp = f".{leaf}.vss-tmp{os.getpid()}"
        os.symlink(target, tmp, dir_fd=fd)
        try:
            os.chown(tmp, uid, gid, dir_fd=fd, follow_symlinks=False)
            os.replace(tmp, leaf, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise


OPAQUE_XATTR = "trusted.overlay.opaque"  # overlayfs(5): the directory hides the lower one's


def is_opaque(base: Path, rel: str) -> bool | None:
    """Whether the directory rel is an opaque overlay directory; None if it is no directory."""
    try:
        with _parent(base, rel) as (fd, leaf):
            dfd = _open_dir(leaf, fd, rel)
    except (OSError, UnsafePath):
        return None
    try:
        return os.getxattr(dfd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False
    finally:
        os.close(dfd)


def set_opaque(base: Path, rel: str, opaque: bool) -> None:
    with _parent(base, rel) as (fd, leaf):
        dfd = _open_dir(leaf, fd, rel)
        try:
            if opaque:
                os.setxattr(dfd, OPAQUE_XATTR, b"y")
            else:
                with contextlib.suppress(OSError):
                    os.removexattr(dfd, OPAQUE_XATTR)
        finally:
            os.close(dfd)


def list_dir(base: Path, rel: str) -> list[str]:
    """The names in the directory rel; [] where there is none (or a symlink in the way)."""
    try:
        with _parent(base, rel) as (fd, leaf):
            dfd = _open_dir(leaf, fd, rel)
    except (OSError, UnsafePath):
        return []
    try:
        return sorted(os.listdir(dfd))
    finally:
        os.close(dfd)
