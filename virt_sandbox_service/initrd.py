"""The KVM guest's boot files: the host's own kernel and a tiny initrd built from the host.

No guest OS is installed. The guest boots the host's kernel with an initrd holding only a
static busybox, the guest init (initrd/init) and the few kernel modules it needs, taken from
the host's /lib/modules and resolved with their dependencies from modules.dep. The init
mounts the host's root filesystem read-only over virtio-9p and hands over.

Both files are cached under one directory at fixed names (`kernel`, `initrd.img`), so a
persistent domain's XML never changes; they are rebuilt (atomically, under a lock) when the
kernel, its modules, busybox or the init change (a stamp of all of them is kept beside them).

Which kernel: VSS_KVM_KERNEL if set (a vmlinuz or a vmlinux), else the running kernel's image
when /boot has it and its modules are installed, else the newest /boot/vmlinuz-* whose modules
are installed. The uncompressed ELF `vmlinux` inside a bzImage is preferred when it carries a
PVH entry point: qemu then boots it directly, which under TCG saves the ~4 s the kernel spends
decompressing itself; otherwise the bzImage is used as it is.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import logging
import lzma
import os
import platform
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import progress
from .errors import HostError
from .resources import data_path

log = logging.getLogger(__name__)

BUILDER_VERSION = "4"
DEFAULT_CACHE = Path("/var/cache/virt-sandbox-service/kvm")
KERNEL_NAME = "kernel"
INITRD_NAME = "initrd.img"
STAMP_NAME = "stamp"
# What the guest needs and nothing more: the virtio-mmio transport of qemu's microvm machine,
# virtio-9p for the host's root and the sandbox's private trees, virtio-console for the
# one-shot run's stdin/stdout/stderr/status ports and the guest agent, overlay where the
# host's root carries a container marker a guest systemd must not see. Listed in load order;
# their own dependencies come from modules.dep.
GUEST_MODULES = ("virtio_mmio", "9pnet_virtio", "9p", "virtio_console", "overlay")
# Loaded only when the guest init needs them (see initrd/init: hide_container_marker).
LAZY_MODULES = ("overlay",)
# For -m host-image: a virtio-blk disk holding an ext2/3/4 file system. Loaded by the guest
# init, dependencies first (lib/modules/disk-order), only in a sandbox that has such a disk.
DISK_MODULES = ("virtio_blk", "crc32c_generic", "ext4")  # ext4 asks the crypto API for crc32c
# virtio-net for -N: in the initrd with its dependencies, loaded (in the order of
# lib/modules/load-order-net) only by a guest that has interfaces, so that a sandbox without
# a network boots no slower.
NET_MODULES = ("virtio_net",)
# virtiofs for the host's root where the host has virtiofsd; loaded on first use
# (lib/modules/load-order-virtiofs).
VIRTIOFS_MODULES = ("virtiofs",)
# run --graphics: the virtio GPU (a KMS device on virtio-mmio; graphics.py), loaded only by a
# guest that starts an X server (lib/modules/load-order-gpu).
GPU_MODULES = ("virtio_gpu",)
# busybox applets the init uses (symlinks in the initrd's /bin).
APPLETS = (
    "sh", "mount", "umount", "mkdir", "insmod", "cat", "echo", "printf", "base64", "mkfifo",
    "tee", "wc", "chroot", "env", "switch_root", "poweroff", "ln", "usleep", "hostname", "rm",
    "sleep", "test", "[", "basename", "sync", "kill", "fsfreeze",
)
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
INIT_SOURCE = data_path("initrd", "init")
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point note qemu looks for


@dataclass(frozen=True)
class GuestKernel:
    version: str
    image: Path  # what /boot holds (bzImage) or what VSS_KVM_KERNEL names
    modules_dir: Path


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    pvh: bool  # kernel is an uncompressed ELF with a PVH entry
    version: str


# --- which kernel -----------------------------------------------------------------------------


def _version_key(v: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", v)]


def detect_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules"),
                  override: str | None = None, running: str | None = None) -> GuestKernel:
    """The kernel the guest boots (see the module docstring for the order of choice)."""
    override = override if override is not None else os.environ.get("VSS_KVM_KERNEL")
    running = running or platform.release()
    if override:
        return _override_kernel(Path(override), modules, running)
    installed = sorted((p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")),
                       key=_version_key, reverse=True)
    candidates = [running, *installed]
    for version in candidates:
        image = boot / f"vmlinuz-{version}"
        if image.is_file() and (modules / version / "modules.dep").is_file():
            return GuestKernel(version, image, modules / version)
    raise HostError(f"no kernel in {boot} with modules in {modules}",
                    "install one (Debian: linux-image-amd64), or set VSS_KVM_KERNEL")


def _override_kernel(image: Path, modules: Path, running: str) -> GuestKernel:
    if not image.is_file():
        raise HostError(f"VSS_KVM_KERNEL={image} is not a file", "name a vmlinuz or vmlinux")
    version = image.name.split("-", 1)[1] if "-" in image.name else running
    if not (modules / version / "modules.dep").is_file():
        raise HostError(f"no modules for kernel {version} in {modules}",
                        f"name the image as vmlinuz-VERSION with {modules}/VERSION installed")
    return GuestKernel(version, image, modules / version)


# --- uncompressed kernel ------------------------------------------------------------------------


def extract_vmlinux(image: bytes) -> bytes | None:
    """The ELF inside a bzImage (xz, gzip or zstd payload), or the image itself if it is one."""
    if image[:4] == b"\x7fELF":
        return image
    for magic, unpack in ((b"\xfd7zXZ\x00", _unxz), (b"\x1f\x8b\x08", _gunzip),
                          (b"\x28\xb5\x2f\xfd", _unzstd)):
        start = image.find(magic)
        while start != -1:
            try:
                out = unpack(image[start:])
            except (lzma.LZMAError, OSError, EOFError, HostError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = image.find(magic, start + 1)
    return None


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _gunzip(data: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        out = bytearray()
        try:
            while chunk := f.read(1 << 20):
                out += chunk
        except (OSError, EOFError):
            pass  # trailing bytes after the stream
        return bytes(out)


def _unzstd(data: bytes) -> bytes:
    import shutil
    import subprocess

    if not shutil.which("zstd"):
        raise HostError("zstd not found")
    proc = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
    return proc.stdout


def has_pvh_entry(elf: bytes) -> bool:
    """Whether an ELF64 kernel has the XEN_ELFNOTE_PHYS32_ENTRY note qemu boots as PVH."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    e_phoff, = struct.unpack_from("<Q", elf, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type, = struct.unpack_from("<I", elf, off)
        if p_type != 4:  # PT_NOTE
            continue
        p_offset, = struct.unpack_from("<Q", elf, off + 8)
        p_filesz, = struct.unpack_from("<Q", elf, off + 32)
        if any(t == XEN_ELFNOTE_PHYS32_ENTRY and name == b"Xen"
               for name, t in _notes(elf[p_offset:p_offset + p_filesz])):
            return True
    return False


def _notes(data: bytes) -> Iterator[tuple[bytes, int]]:
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name = data[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        yield name, ntype
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4


# --- modules -----------------------------------------------------------------------------------


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """modules.dep -> {name: (relative path, (dependency paths...))}."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            out[_mod_name(path)] = (path.strip(), tuple(deps.split()))
    return out


def resolve_modules(wanted: Iterable[str], dep_text: str, builtin_text: str = "",
                    version: str = "") -> list[str]:
    """Relative paths of the modules to load, dependencies first, each once.

    A module built into the kernel (modules.builtin) needs nothing; one that is neither
    built in nor in modules.dep is an error naming it and the kernel.
    """
    deps = parse_modules_dep(dep_text)
    builtin = {_mod_name(p) for p in builtin_text.split()}
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin and name not in deps:
            return
        if name not in deps:
            raise HostError(
                f"kernel module {name} not found for kernel {version or '?'}"
                + (f" (needed by {chain[-1]})" if chain else ""),
                "the guest needs it; install the kernel's modules package, or set "
                "VSS_KVM_KERNEL to a kernel that has it")
        path, needs = deps[name]
        if path in order:
            return
        for dep in needs:
            visit(by_path.get(dep, _mod_name(dep)), (*chain, name))
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return _unzstd(data)
    return data


# --- cpio (newc) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    path: str
    mode: int  # including the file type bits
    data: bytes = b""


def cpio_newc(entries: Iterable[Entry]) -> bytes:
    """An uncompressed newc archive: nothing to decompress at boot (fastest under TCG)."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    ino = 1
    for e in [*entries, Entry("TRAILER!!!", 0)]:
        name = e.path.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (
            ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, 0, 0, len(name), 0))
        out.write(header.encode() + name)
        pad()
        out.write(e.data)
        pad()
        ino += 1
    return out.getvalue()


DIR, REG, LNK = 0o040000, 0o100000, 0o120000


def initrd_entries(busybox: bytes, init: bytes, modules: list[tuple[str, bytes]],
                   disk_modules: Sequence[tuple[str, bytes]] = (),
                   net_modules: Sequence[tuple[str, bytes]] = (),
                   virtiofs_modules: Sequence[tuple[str, bytes]] = (),
                   gpu_modules: Sequence[tuple[str, bytes]] = ()) -> list[Entry]:
    """The initrd's files: /init, /bin/busybox and its applet links, the modules and their
    load order (/lib/modules/load-order, one file name a line), and the groups the init loads
    only when it needs them, each with its own order: the disk modules (disk-order), the
    network's (load-order-net, for a guest with interfaces), virtiofs's (load-order-virtiofs,
    for a guest whose root is a virtiofs share), the GPU's (load-order-gpu, for run
    --graphics)."""
    entries = [Entry(d, DIR | 0o755) for d in
               ("bin", "dev", "proc", "sys", "sysroot", "run", "lib", "lib/modules")]
    entries.append(Entry("bin/busybox", REG | 0o755, busybox))
    entries += [Entry(f"bin/{a}", LNK | 0o777, b"busybox") for a in APPLETS]
    entries.append(Entry("init", REG | 0o755, init))
    names = []
    for rel, data in modules:
        name = rel.rsplit("/", 1)[-1]
        name = re.sub(r"\.(xz|gz|zst)$", "", name)
        entries.append(Entry(f"lib/modules/{name}", REG | 0o644, data))
        if _mod_name(name) not in LAZY_MODULES:
            names.append(name)
    entries.append(Entry("lib/modules/load-order", REG | 0o644,
                         "".join(f"{n}\n" for n in names).encode()))
    entries += _lazy_group("disk-order", disk_modules)
    entries += _lazy_group("load-order-net", net_modules)
    entries += _lazy_group("load-order-virtiofs", virtiofs_modules)
    entries += _lazy_group("load-order-gpu", gpu_modules)
    return entries


def _lazy_group(order_file: str, modules: Sequence[tuple[str, bytes]]) -> list[Entry]:
    """Modules the init loads only when it needs them, in the order of ORDER_FILE."""
    names = [_file_name(rel) for rel, _ in modules]
    entries = [Entry(f"lib/modules/{n}", REG | 0o644, data)
               for n, (_, data) in zip(names, modules, strict=True)]
    entries.append(Entry(f"lib/modules/{order_file}", REG | 0o644,
                         "".join(f"{n}\n" for n in names).encode()))
    return entries


def _file_name(rel: str) -> str:
    """A module's file name in the initrd: uncompressed, without its directory."""
    return re.sub(r"\.(xz|gz|zst)$", "", rel.rsplit("/", 1)[-1])


# --- build and cache ---------------------------------------------------------------------------


def find_busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.is_file() and _is_static(p):
            return p
    raise HostError("no static busybox found (the KVM guest's initrd needs one)",
                    "install busybox-static")


def _is_static(path: Path) -> bool:
    """An ELF without a PT_INTERP program header is statically linked."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        e_phoff, = struct.unpack_from("<Q", head, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
    return all(struct.unpack_from("<I", table, i * e_phentsize)[0] != 3 for i in range(e_phnum))


def cache_dir() -> Path:
    return Path(os.environ.get("VSS_CACHE_DIR", str(DEFAULT_CACHE.parent))) / "kvm"


def _fingerprint(paths: Iterable[Path]) -> str:
    # The module lists too: a list changed in the code must rebuild the initrd.
    h = hashlib.sha256(f"{BUILDER_VERSION} {GUEST_MODULES} {DISK_MODULES} {GPU_MODULES}"
                       .encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure(directory: Path | None = None, kernel: GuestKernel | None = None) -> BootFiles:
    """Build the boot files unless the cached ones are current; return them.

    The stamp records a fingerprint (paths, sizes, mtimes) of everything the files were
    built from, and the modules it resolved: checking it costs a few stat() calls, so every
    `run` and `start` can afford it.
    """
    d = directory or cache_dir()
    k = kernel or detect_kernel()
    busybox = find_busybox()
    inputs = [k.image, busybox, INIT_SOURCE, k.modules_dir / "modules.dep"]
    with _locked(d):
        cached = _current(d, k, inputs)
        if cached is not None:
            return cached
        with progress.step(f"building the KVM guest's boot files for kernel {k.version}"):
            return _build(d, k, busybox, inputs)


def _current(d: Path, k: GuestKernel, inputs: list[Path]) -> BootFiles | None:
    try:
        head, *mods = (d / STAMP_NAME).read_text().splitlines()
        stamp, kind, version = head.split()
        fresh = _fingerprint([*inputs, *(k.modules_dir / m for m in mods)]) == stamp
    except (OSError, ValueError):
        return None
    if fresh and version == k.version and (d / KERNEL_NAME).exists() \
            and (d / INITRD_NAME).exists():
        return BootFiles(d / KERNEL_NAME, d / INITRD_NAME, kind == "pvh", k.version)
    return None


def _build(d: Path, k: GuestKernel, busybox: Path, inputs: list[Path]) -> BootFiles:
    log.debug("building the KVM guest's boot files for kernel %s in %s", k.version, d)
    dep_text = (k.modules_dir / "modules.dep").read_text()
    builtin_file = k.modules_dir / "modules.builtin"
    builtin_text = builtin_file.read_text() if builtin_file.is_file() else ""
    mods = resolve_modules(GUEST_MODULES, dep_text, builtin_text, k.version)
    # Each lazy group without what the initrd loads anyway or an earlier group holds (the
    # groups share no module today; a shared one would be loaded only with the first group).
    disk_mods = [m for m in resolve_modules(DISK_MODULES, dep_text, builtin_text, k.version)
                 if m not in mods]
    net_mods = [m for m in resolve_modules(NET_MODULES, dep_text, builtin_text, k.version)
                if m not in mods and m not in disk_mods]
    fs_mods = [m for m in resolve_modules(VIRTIOFS_MODULES, dep_text, builtin_text, k.version)
               if m not in mods and m not in disk_mods and m not in net_mods]
    gpu_mods = [m for m in resolve_modules(GPU_MODULES, dep_text, builtin_text, k.version)
                if m not in mods and m not in disk_mods and m not in net_mods
                and m not in fs_mods]
    image = k.image.read_bytes()
    elf = extract_vmlinux(image)
    pvh = elf is not None and has_pvh_entry(elf)
    _write_atomic(d / KERNEL_NAME, elf if pvh and elf is not None else image)
    modules = [(m, _module_bytes(k.modules_dir / m)) for m in mods]
    lazy = [*disk_mods, *net_mods, *fs_mods, *gpu_mods]
    _write_atomic(d / INITRD_NAME, cpio_newc(initrd_entries(
        busybox.read_bytes(), INIT_SOURCE.read_bytes(), modules,
        *([(m, _module_bytes(k.modules_dir / m)) for m in group]
          for group in (disk_mods, net_mods, fs_mods, gpu_mods)))))
    stamp = _fingerprint([*inputs, *(k.modules_dir / m for m in [*mods, *lazy])])
    _write_atomic(d / STAMP_NAME, "".join(
        f"{line}\n" for line in (f"{stamp} {'pvh' if pvh else 'bzimage'} {k.version}", *mods,
                                  *lazy))
        .encode())
    return BootFiles(d / KERNEL_NAME, d / INITRD_NAME, pvh, k.version)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
