"""-C and clone copy private trees with their extended attributes: POSIX ACLs (default ACLs of
directories too), security labels, file capabilities, trusted.* and user.*; overlayfs's own
attributes other than the opaque mark stay behind."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service.apply import files

from .conftest import Env, unique_name

pytestmark = [pytest.mark.root]  # security.* and trusted.* need CAP_SYS_ADMIN

UNDEFINED = 0xFFFFFFFF


def acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


# user::rw- user:33:rw- group::r-- mask::rw- other::r--
ACCESS = acl((0x01, 6, UNDEFINED), (0x02, 6, 33), (0x04, 4, UNDEFINED), (0x10, 6, UNDEFINED),
             (0x20, 4, UNDEFINED))
# default: user::rwx group:33:r-x group::r-x mask::r-x other::---
DEFAULT = acl((0x01, 7, UNDEFINED), (0x04, 5, UNDEFINED), (0x08, 5, 33), (0x10, 5, UNDEFINED),
              (0x20, 0, UNDEFINED))
LABEL = b"system_u:object_r:httpd_sys_content_t:s0\x00"
# security.capability v2 (VFS_CAP_REVISION_2): cap_net_bind_service (10) permitted, effective.
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def make_tree(top: Path) -> None:
    (top / "conf.d").mkdir(parents=True)
    f = top / "conf.d" / "site.conf"
    f.write_text("x\n")
    os.chmod(f, 0o664)
    os.setxattr(f, "system.posix_acl_access", ACCESS)
    os.setxattr(f, "security.selinux", LABEL)
    os.setxattr(f, "user.origin", b"host")
    os.setxattr(f, "trusted.overlay.origin", b"\x00\xfb")
    os.setxattr(top / "conf.d", "system.posix_acl_default", DEFAULT)
    os.setxattr(top / "conf.d", "trusted.overlay.opaque", b"y")
    tool = top / "tool"
    tool.write_bytes(Path("/bin/true").read_bytes())
    os.chmod(tool, 0o755)
    os.setxattr(tool, "security.capability", CAPS)
    (top / "link").symlink_to("conf.d/site.conf")
    os.setxattr(top / "link", "trusted.note", b"symlink's own", follow_symlinks=False)


def xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "src"
    make_tree(src)
    yield src


def test_copy_tree_keeps_acls_labels_capabilities(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    files.copy_tree(str(tree), str(dst), frozenset())
    site = dst / "conf.d" / "site.conf"
    assert xattrs(site) == {"system.posix_acl_access": ACCESS, "security.selinux": LABEL,
                            "user.origin": b"host"}  # not trusted.overlay.origin
    assert xattrs(dst / "conf.d") == {"system.posix_acl_default": DEFAULT,
                                      "trusted.overlay.opaque": b"y"}
    assert xattrs(dst / "tool") == {"security.capability": CAPS}  # survives the chown
    assert xattrs(dst / "link") == {"trusted.note": b"symlink's own"}
    assert os.stat(site).st_mode & 0o777 == 0o664  # the ACL's mask is the group bits


def test_acl_ids_move_with_the_owners(tree: Path, tmp_path: Path) -> None:
    """--userns: owners are shifted into the sandbox's id range, and so are the ACL's."""
    dst = tmp_path / "dst"
    files.copy_tree(str(tree), str(dst), frozenset(), shift=100000)
    shifted = ACCESS.replace(struct.pack("<HHI", 0x02, 6, 33),
                             struct.pack("<HHI", 0x02, 6, 100033))
    assert os.getxattr(dst / "conf.d" / "site.conf", "system.posix_acl_access") == shifted
    assert os.stat(dst / "tool").st_uid == 100000


@pytest.mark.libvirt
def test_create_copy_keeps_them(env: Env) -> None:
    host_dir = Path(f"/var/lib/vss-xattr-{secrets.token_hex(3)}")
    make_tree(host_dir)
    try:
        name = unique_name("xa")
        env.run("create", "-C", "--private", str(host_dir), "-u", "apache2.service", name,
                check=True)
        copy = env.state(name) / "var" / host_dir.relative_to("/var")
        for rel in ("conf.d", "conf.d/site.conf", "tool", "link"):
            want = {k: v for k, v in xattrs(host_dir / rel).items()
                    if k != "trusted.overlay.origin"}
            assert xattrs(copy / rel) == want, rel
        env.run("delete", name, check=True)
    finally:
        shutil.rmtree(host_dir)
