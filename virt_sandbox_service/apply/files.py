"""Carry out a plan's file operations inside a state directory this run created."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
from pathlib import Path

from .. import image, progress
from ..errors import HostError, UserError
from ..plantypes import (
    MARKER,
    AddUser,
    CopyTree,
    FileOp,
    MakeDir,
    MakeImage,
    Opaque,
    Plan,
    Symlink,
    Whiteout,
    WriteFile,
)
from ..users import RunAs, group_with, passwd_with
from .txn import Transaction
from .whiteout import keep_meta as _keep_meta
from .whiteout import make_whiteout as make_whiteout


def create_state_dir(plan: Plan, txn: Transaction) -> None:
    """Make the state directory (it must not exist) and everything in it."""
    state = Path(plan.state_dir)
    if os.path.lexists(state):
        raise UserError(f"state directory {state} already exists",
                        "choose another name or -p PATH, or delete the old sandbox")
    state.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(state, 0o700)
    # The marker first: a create killed from here on leaves a directory `delete` may remove.
    marker = next(op for op in plan.files
                  if isinstance(op, WriteFile) and op.path == str(state / MARKER))
    apply_op(marker)
    # Removing the whole tree is right only because this run made it, just now.
    txn.did(f"made {state}", lambda: shutil.rmtree(state))
    shift = plan.config.id_base or 0
    inside = tuple(os.path.join(plan.state_dir, d) + "/"
                   for d in ("etc", "var", "paths", "home"))
    for op in plan.files:
        if op is marker or getattr(op, "path", None) == plan.state_dir:
            continue
        target = op.dst if isinstance(op, CopyTree) else op.path
        # What the sandbox sees is owned by its user namespace's ids (none: shift 0).
        apply_op(op, shift if (target + "/").startswith(inside) else 0)


def apply_op(op: FileOp, shift: int = 0) -> None:
    """Carry out one operation; `shift` is added to every owner (user namespace base)."""
    try:
        if isinstance(op, MakeDir):
            os.makedirs(op.path, exist_ok=True)
            os.chmod(op.path, op.mode)
            os.chown(op.path, op.uid + shift, op.gid + shift)
        elif isinstance(op, WriteFile):
            write_file(Path(op.path), op.content, op.mode)
            if shift:
                os.chown(op.path, shift, shift)
        elif isinstance(op, Symlink):
            if os.path.lexists(op.path):
                os.unlink(op.path)
            os.symlink(op.target, op.path)
            os.lchown(op.path, shift, shift)
        elif isinstance(op, CopyTree):
            with progress.step(f"copying {op.src}"):
                copy_tree(op.src, op.dst, frozenset(op.exclude), shift)
        elif isinstance(op, AddUser):
            add_user(op, shift)
        elif isinstance(op, MakeImage):
            make_image(op)
        elif isinstance(op, Whiteout):
            make_whiteout(op.path, op.hides)
        elif isinstance(op, Opaque):
            os.setxattr(op.path, OPAQUE_XATTR, b"y")
    except OSError as e:
        target = op.dst if isinstance(op, CopyTree) else op.path
        raise HostError(f"cannot make {target}: {e.strerror}") from e


OPAQUE_XATTR = "trusted.overlay.opaque"  # overlayfs(5): the directory hides the lower one's


def add_user(op: AddUser, shift: int = 0) -> None:
    """The user's entries in the copied passwd and group files (see users.py)."""
    r = RunAs(op.uid, op.gid, op.name, op.home)
    for name, edit in (("passwd", passwd_with), ("group", group_with)):
        path = Path(op.path) / name
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        new = edit(text, r)
        if new != text:
            write_file(path, new, 0o644)
            os.chown(path, shift, shift)


def make_image(op: MakeImage) -> None:
    """-i: the private trees into the image (see image.py)."""
    with progress.step(f"writing the image {op.path}"):
        _make_image(op)


def _make_image(op: MakeImage) -> None:
    state = os.path.dirname(op.path)
    if not op.source:
        image.build(state, op.size)
        return
    image.copy(op.source, op.path)
    with image.mounted(op.path, writable=True) as root:
        for tree in image.TREES:
            staged = os.path.join(state, tree)
            if os.path.isdir(staged):
                copy_over(staged, str(root / tree))
                shutil.rmtree(staged)
        for rel in op.drop:  # emptied, not removed
            where = root / rel.lstrip("/")
            for child in where.iterdir() if where.is_dir() else ():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def copy_over(src: str, dst: str) -> None:
    """Copy src's files into the existing tree dst, replacing files of the same name."""
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False) and os.path.isdir(target):
            copy_over(entry.path, target)
            continue
        if os.path.lexists(target):
            os.unlink(target)
        copy_tree(entry.path, target, frozenset())


def write_file(path: Path, content: str, mode: int = 0o644) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_copy(path: Path) -> None:
    """Undo of a copy_tree: the copied tree or file (never what a link points at)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def copy_tree(src: str, dst: str, exclude: frozenset[str], shift: int = 0) -> None:
    """Copy keeping owners (plus `shift`), modes, times, symlinks, extended attributes and
    ACLs (security labels and file capabilities included; see _keep_xattrs); sockets, fifos and
    devices are skipped (a sandbox must not get the host's device nodes through a copy),
    except overlay whiteouts (0/0 character devices), which are copied with the opaque mark
    of directories: the upper layer of an overlay /etc copies whole (clone)."""
    _TreeCopy(exclude, shift).copy(src, dst)


FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, XFS); no data copied


class _TreeCopy:
    """One tree copy. Creating inodes is what a create spends its time on (about a thousand
    for a trimmed /etc, on a disk whose small-file speed varies 3x over the day), so each file
    costs one open of each side and metadata is set through the open descriptor."""

    def __init__(self, exclude: frozenset[str], shift: int) -> None:
        self.exclude = exclude
        self.shift = shift
        self.reflink = True  # until the filesystem says it cannot

    def copy(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
            os.lchown(dst, st.st_uid + self.shift, st.st_gid + self.shift)
            _keep_xattrs(src, dst, self.shift)
        elif stat.S_ISREG(st.st_mode):
            self._file(src, dst, st)
        elif stat.S_ISDIR(st.st_mode):
            self._dir(src, dst, st)
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            os.mknod(dst, stat.S_IFCHR | 0o000, 0)
            _keep_meta(dst, st, self.shift)
            _keep_xattrs(src, dst, self.shift)

    def _dir(self, src: str, dst: str, st: os.stat_result) -> None:
        os.makedirs(dst, exist_ok=True)
        with os.scandir(src) as it:
            entries = list(it)
        for entry in entries:
            if entry.path in self.exclude:
                continue
            try:
                self.copy(entry.path, os.path.join(dst, entry.name))
            except FileNotFoundError:
                # Gone between listing and copying: /etc is live (libvirtd rewrites
                # /etc/libvirt/*/NAME.xml through temporary files while other creates define
                # domains). A file that no longer exists is not part of the copy.
                if os.path.lexists(entry.path):
                    raise
        os.chown(dst, st.st_uid + self.shift, st.st_gid + self.shift)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        _keep_xattrs(src, dst, self.shift)  # after chown and chmod, which change ACLs, caps
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _file(self, src: str, dst: str, st: os.stat_result) -> None:
        fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # Owner-only until the owner and mode are right: never briefly readable by others.
            fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600)
            try:
                self._data(fin, fout, st.st_size)
                os.fchown(fout, st.st_uid + self.shift, st.st_gid + self.shift)
                os.fchmod(fout, stat.S_IMODE(st.st_mode))
                # After fchown, which drops security.capability, and fchmod (the ACL mask).
                _keep_xattrs(fin, fout, self.shift)
                os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    def _data(self, fin: int, fout: int, size: int) -> None:
        """A reflink where the filesystem can make one, else an in-kernel copy."""
        if self.reflink and size:
            try:
                fcntl.ioctl(fout, FICLONE, fin)
                return
            except OSError:
                self.reflink = False
        try:
            # st_size may be stale (a live file): copy until EOF.
            while os.copy_file_range(fin, fout, max(size, 1 << 20)):
                pass
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            os.lseek(fin, 0, os.SEEK_SET)
            os.lseek(fout, 0, os.SEEK_SET)
            os.ftruncate(fout, 0)
            while chunk := os.read(fin, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fout, view):]


def can_reflink(directory: Path) -> bool:
    """Whether files in `directory` can be reflinked within its filesystem (probed once)."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=directory) as a, \
            tempfile.NamedTemporaryFile(dir=directory) as b:
        a.write(b"x")
        a.flush()
        try:
            fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
            return True
        except OSError:
            return False


ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_HEADER, _ACL_ENTRY = struct.Struct("<I"), struct.Struct("<HHI")
_ACL_USER, _ACL_GROUP = 0x02, 0x08  # acl_ea.h: the tags whose entries carry an id


def _keep_xattrs(src: str | int, dst: str | int, shift: int = 0) -> None:
    """Give dst every extended attribute src has: security labels (security.selinux, also
    where this host has no SELinux: a relabel-free copy for one that has), file capabilities
    (security.capability), POSIX ACLs (their user and group ids moved by `shift`, as the
    owners are), trusted.* and user.*; of overlayfs's own, only the opaque mark (the others
    describe the overlay the source belonged to). A symlink is not followed. An
    attribute the destination cannot hold fails the copy, naming it: -C and clone promise
    the same access and labels as the host's."""
    follow = not isinstance(src, str) or not os.path.islink(src)
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return  # the source's file system has none
        raise
    for name in names:
        if name.startswith("trusted.overlay.") and name != OPAQUE_XATTR:
            continue
        value = os.getxattr(src, name, follow_symlinks=follow)
        if shift and name in ACL_XATTRS:
            value = _shift_acl(value, shift)
        try:
            os.setxattr(dst, name, value, follow_symlinks=follow)
        except OSError as e:
            where = dst if isinstance(dst, str) else os.readlink(f"/proc/self/fd/{dst}")
            raise HostError(f"cannot keep the extended attribute {name} on {where}: "
                            f"{e.strerror}", "put the state directory (-p) on a file system "
                            "with extended attributes and ACLs, such as ext4 or XFS") from e


def _shift_acl(value: bytes, shift: int) -> bytes:
    """A POSIX ACL xattr (acl_ea.h: a version word, then tag/perm/id entries) with its named
    users' and groups' ids moved by `shift`."""
    out = bytearray(value[:_ACL_HEADER.size])
    for offset in range(_ACL_HEADER.size, len(value), _ACL_ENTRY.size):
        tag, perm, ident = _ACL_ENTRY.unpack_from(value, offset)
        if tag in (_ACL_USER, _ACL_GROUP):
            ident += shift
        out += _ACL_ENTRY.pack(tag, perm, ident)
    return bytes(out)


def check_removable(state: Path, name: str) -> None:
    """Only a state directory carrying our marker for this sandbox (or an empty one, left by
    a create killed between mkdir and marker) may be removed."""
    if os.path.lexists(state) and not state.is_dir():
        raise UserError(f"{state} is not a directory; not removing it",
                        "it is not a state directory this tool made; look at it by hand")
    if not state.exists() or not any(state.iterdir()):
        return
    try:
        owner = (state / MARKER).read_text().strip()
    except OSError:
        owner = None
    if owner != name:
        raise UserError(f"{state} was not made by virt-sandbox-service for '{name}' "
                        f"(no {MARKER} marker naming it); not removing it",
                        "remove it by hand if it really is unused")


def remove_state_dir(state: Path, name: str) -> None:
    check_removable(state, name)
    if not state.exists():
        return
    try:
        shutil.rmtree(state)
    except OSError as e:
        raise HostError(f"cannot remove {state}: {e.strerror}") from e
