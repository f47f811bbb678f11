"""SELinux file labels on a sandbox's private trees: the one side effect of labels.py.

The process label libvirt gives the sandbox carries its MCS pair; its files must carry the
same pair, or an enforcing host denies the sandbox its own /etc and /var (and, the point of
the pair, lets no other sandbox in). Like `setfiles`, this writes the `security.selinux`
extended attribute directly: on an SELinux host the kernel checks each context, and a host
without SELinux lets root write security.* attributes, so a tree can be labelled before it
moves to an SELinux host.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from .. import host, labels
from ..config import Driver, SandboxConfig
from ..errors import HostError

XATTR = "security.selinux"


def set_context(path: str, context: str) -> None:
    """Label one file; a symlink itself, not what it points to."""
    try:
        # libselinux (setfiles, chcon) stores the context with its terminating NUL.
        os.setxattr(path, XATTR, context.encode() + b"\0", follow_symlinks=False)
    except OSError as e:
        hint = ("the policy has no such type: load policy/ (see policy/README.md) and point "
                "lxc_contexts at its types" if e.errno == errno.EINVAL else
                "keep sandbox state on a file system with extended attributes (ext4, XFS)")
        raise HostError(f"cannot label {path} {context}: {e.strerror}", hint) from e


def label_tree(top: str, context: str) -> int:
    """Label `top` and everything below it, on its own file system; returns the count."""
    if not os.path.lexists(top):
        return 0
    set_context(top, context)
    count, dev = 1, os.lstat(top).st_dev
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            set_context(os.path.join(dirpath, name), context)
            count += 1
        # Not into another file system mounted below (os.walk follows no symlinks).
        dirnames[:] = [d for d in dirnames
                       if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
    return count


def label_trees(contexts: Iterable[tuple[str, str]]) -> int:
    """Apply (path, context) pairs in order, each to its whole tree; a later one wins."""
    return sum(label_tree(path, context) for path, context in contexts)


def label_private_trees(config: SandboxConfig, selinux: bool | None = None) -> int:
    """Where SELinux is enabled (or `selinux` says so), give the sandbox's private trees its
    file context: the platform's sandbox file type at the sandbox's level."""
    if not (host.selinux_enabled() if selinux is None else selinux):
        return 0
    text = host.sandbox_file_context_text(config.driver is Driver.KVM)
    return label_trees(labels.tree_contexts(config, text))


def label_channel(config: SandboxConfig, path: str, selinux: bool | None = None) -> None:
    """The host channel (runtime.common.run_dir), bound into the sandbox at /run/sandbox-host:
    the sandbox's file context, set as the tool makes it. What the sandbox writes there
    (its exit status, READY) and the FIFO it reads must be of its type, or an enforcing host
    refuses them; the host side, unconfined, reads and writes any."""
    if not (host.selinux_enabled() if selinux is None else selinux):
        return
    text = host.sandbox_file_context_text(config.driver is Driver.KVM)
    context = labels.file_context(config.security_label,
                                  labels.sandbox_file_type(config.driver, text))
    if context is not None:
        set_context(path, context)
