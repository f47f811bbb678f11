"""The KVM guest's initrd builder: module resolution, kernel choice and extraction, the cpio
archive, the cache (pure, on fixtures written here; one test reads the host's real modules)."""

from __future__ import annotations

import lzma
import os
import struct
import subprocess
from pathlib import Path

import pytest

from virt_sandbox_service import initrd
from virt_sandbox_service.errors import HostError

V, R = "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"
NETFS, FSCACHE = "kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko"
MODULES_DEP = f"""\
{R}:
{V}: {R}
kernel/drivers/virtio/virtio_mmio.ko: {V} {R}
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko {V} {R}
{NETFS}:
{FSCACHE}: {NETFS}
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko {FSCACHE} {NETFS}
kernel/drivers/char/virtio_console.ko.xz: {V} {R}
kernel/fs/nfs/nfs.ko: {FSCACHE} {NETFS}
kernel/fs/overlayfs/overlay.ko:
"""


def test_modules_resolved_with_dependencies_first_each_once() -> None:
    order = initrd.resolve_modules(initrd.GUEST_MODULES, MODULES_DEP, "", "6.1.0-test")
    names = [p.rsplit("/", 1)[-1] for p in order]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "9pnet.ko",
                     "9pnet_virtio.ko", "netfs.ko", "fscache.ko", "9p.ko",
                     "virtio_console.ko.xz", "overlay.ko"]
    for i, path in enumerate(order):  # every dependency is loaded before its user
        deps = initrd.parse_modules_dep(MODULES_DEP)[initrd._mod_name(path)][1]
        assert all(order.index(d) < i for d in deps)
    assert not any("nfs" in p for p in order)  # only what is needed


def test_builtin_modules_need_nothing() -> None:
    dep = "\n".join(line for line in MODULES_DEP.splitlines() if "virtio_mmio" not in line)
    order = initrd.resolve_modules(["virtio_mmio", "9p"], dep,
                                   "kernel/drivers/virtio/virtio_mmio.ko\n", "x")
    assert [p.rsplit("/", 1)[-1] for p in order] == ["9pnet.ko", "netfs.ko", "fscache.ko",
                                                     "9p.ko"]


def test_missing_module_is_a_clear_error() -> None:
    dep = "\n".join(line for line in MODULES_DEP.splitlines() if "9pnet_virtio" not in line)
    with pytest.raises(HostError) as e:
        initrd.resolve_modules(initrd.GUEST_MODULES, dep, "", "6.1.0-test")
    assert e.value.message == "kernel module 9pnet_virtio not found for kernel 6.1.0-test"
    assert e.value.hint and "VSS_KVM_KERNEL" in e.value.hint


def test_missing_dependency_names_who_needs_it() -> None:
    dep = MODULES_DEP.replace("kernel/fs/netfs/netfs.ko:\n", "")
    with pytest.raises(HostError, match=r"module netfs not found .*\(needed by fscache\)"):
        initrd.resolve_modules(["9p"], dep, "", "6.1.0-test")


def test_host_modules_resolve() -> None:
    kernel = initrd.detect_kernel()
    dep = (kernel.modules_dir / "modules.dep").read_text()
    builtin = (kernel.modules_dir / "modules.builtin").read_text()
    order = initrd.resolve_modules(initrd.GUEST_MODULES, dep, builtin, kernel.version)
    assert all((kernel.modules_dir / p).is_file() for p in order)


def fake_elf(pvh: bool) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment holding a Xen note (type 18 = PVH entry)."""
    note_type = 18 if pvh else 6
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + b"\0\0\0\0"
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def test_uncompressed_kernel_is_extracted_from_a_bzimage() -> None:
    elf = fake_elf(pvh=True)
    bzimage = b"MZ" + b"\0" * 500 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0" * 64
    out = initrd.extract_vmlinux(bzimage)
    assert out == elf
    assert initrd.has_pvh_entry(out)
    assert not initrd.has_pvh_entry(fake_elf(pvh=False))
    assert initrd.extract_vmlinux(b"MZ" + b"\0" * 100) is None


def test_kernel_choice(tmp_path: Path) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    for v in ("6.1.0-10-amd64", "6.1.0-9-amd64", "6.5.0-1-amd64"):
        (boot).mkdir(exist_ok=True)
        (boot / f"vmlinuz-{v}").write_bytes(b"x")
    for v in ("6.1.0-10-amd64", "6.1.0-9-amd64"):  # 6.5 has no modules installed
        (mods / v).mkdir(parents=True)
        (mods / v / "modules.dep").write_text("")
    k = initrd.detect_kernel(boot, mods, override="", running="6.18-other")
    assert k.version == "6.1.0-10-amd64"  # the newest with modules; 10 > 9 numerically
    k = initrd.detect_kernel(boot, mods, override="", running="6.1.0-9-amd64")
    assert k.version == "6.1.0-9-amd64"  # the running kernel first
    k = initrd.detect_kernel(boot, mods, override=str(boot / "vmlinuz-6.1.0-9-amd64"))
    assert k.image == boot / "vmlinuz-6.1.0-9-amd64"
    with pytest.raises(HostError, match=r"no modules for kernel 6\.5\.0-1-amd64"):
        initrd.detect_kernel(boot, mods, override=str(boot / "vmlinuz-6.5.0-1-amd64"))
    with pytest.raises(HostError, match="no kernel in"):
        initrd.detect_kernel(tmp_path / "none", mods, override="", running="x")


def test_cpio_archive_lists_init_busybox_and_modules(tmp_path: Path) -> None:
    entries = initrd.initrd_entries(b"BB", b"#!/bin/sh\n", [("kernel/a/x.ko.xz", b"M"),
                                                             ("kernel/fs/overlay.ko", b"O")])
    archive = tmp_path / "i.cpio"
    archive.write_bytes(initrd.cpio_newc(entries))
    proc = subprocess.run(["cpio", "-it", "--quiet"], input=archive.read_bytes(),
                          capture_output=True, check=True)
    names = proc.stdout.decode().split()
    assert {"init", "bin/busybox", "bin/sh", "lib/modules/x.ko",
            "lib/modules/load-order"} <= set(names)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=archive.read_bytes(), cwd=out, check=True)
    # overlay is in the initrd but loaded only when the init needs it
    assert (out / "lib/modules/load-order").read_text() == "x.ko\n"
    assert (out / "lib/modules/overlay.ko").read_bytes() == b"O"
    assert os.readlink(out / "bin/mount") == "busybox"
    assert os.access(out / "init", os.X_OK)


def test_network_modules_are_loaded_only_by_a_guest_with_interfaces(tmp_path: Path) -> None:
    entries = initrd.initrd_entries(b"BB", b"#!/bin/sh\n", [("kernel/a/x.ko", b"M")],
                                    net_modules=[("kernel/net/core/failover.ko", b"F"),
                                                 ("kernel/drivers/net/virtio_net.ko.xz", b"V")],
                                    virtiofs_modules=[("kernel/fs/fuse/virtiofs.ko", b"VF")])
    files = {e.path: e.data for e in entries}
    assert files["lib/modules/load-order"] == b"x.ko\n"
    assert files["lib/modules/load-order-net"] == b"failover.ko\nvirtio_net.ko\n"
    assert files["lib/modules/virtio_net.ko"] == b"V"
    assert files["lib/modules/load-order-virtiofs"] == b"virtiofs.ko\n"
    assert files["lib/modules/disk-order"] == b""  # no disk group given


def test_host_has_virtio_net_and_its_dependencies() -> None:
    kernel = initrd.detect_kernel()
    dep = (kernel.modules_dir / "modules.dep").read_text()
    builtin = (kernel.modules_dir / "modules.builtin").read_text()
    order = initrd.resolve_modules(initrd.NET_MODULES, dep, builtin, kernel.version)
    names = [p.rsplit("/", 1)[-1].split(".")[0] for p in order]
    assert names[-1] == "virtio_net"  # after its dependencies (net_failover, failover)
    assert all((kernel.modules_dir / p).is_file() for p in order)


def test_cache_is_reused_and_rebuilt_when_the_init_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = initrd.detect_kernel()
    init = tmp_path / "init"
    init.write_text((initrd.INIT_SOURCE).read_text())
    monkeypatch.setattr(initrd, "INIT_SOURCE", init)
    first = initrd.ensure(tmp_path / "cache", kernel)
    assert first.kernel.is_file() and first.initrd.is_file()
    mtime = first.initrd.stat().st_mtime_ns
    again = initrd.ensure(tmp_path / "cache", kernel)
    assert again.initrd.stat().st_mtime_ns == mtime  # cached
    init.write_text(init.read_text() + "# changed\n")
    os.utime(init, ns=(mtime + 10**9, mtime + 10**9))
    rebuilt = initrd.ensure(tmp_path / "cache", kernel)
    assert rebuilt.initrd.read_bytes().find(b"# changed") != -1
    assert first.pvh  # Debian's kernel carries a PVH entry: booted uncompressed


def test_disk_modules_are_in_the_initrd_and_loaded_only_for_disks(tmp_path: Path) -> None:
    entries = initrd.initrd_entries(b"BB", b"#!/bin/sh\n", [("kernel/a/x.ko", b"M")],
                                    [("kernel/b/virtio_blk.ko", b"V"),
                                     ("kernel/fs/ext4/ext4.ko.xz", b"E")])
    files = {e.path: e.data for e in entries}
    assert files["lib/modules/load-order"] == b"x.ko\n"
    assert files["lib/modules/disk-order"] == b"virtio_blk.ko\next4.ko\n"
    assert files["lib/modules/ext4.ko"] == b"E"
    # The real host's modules resolve (ext4 and its dependencies, dependencies first).
    kernel = initrd.detect_kernel()
    dep = (kernel.modules_dir / "modules.dep").read_text()
    builtin = kernel.modules_dir / "modules.builtin"
    order = initrd.resolve_modules(initrd.DISK_MODULES, dep,
                                   builtin.read_text() if builtin.is_file() else "",
                                   kernel.version)
    names = [initrd._mod_name(m) for m in order]
    assert names.index("jbd2") < names.index("ext4")  # a module in Debian's kernel
