"""The standard test host: a Debian 12 VM with systemd as PID 1, booted under QEMU for the tests.

This machine is not the kind of host users run (PID 1 is not systemd, cgroups are a v1/v2
hybrid, no LSM is active). TestHost boots one that is, from the image that
scripts/testhost-image.sh builds and caches (Debian's own kernel and packages, the project
installed by its own set-up):

- QEMU under TCG (this machine's /dev/kvm cannot run Debian's kernel, HOST-NOTES.md), q35,
  virtio disk and network, the serial console logged to a file;
- the disk is the cached image with `snapshot=on`: every write of the guest goes to a temporary
  file QEMU unlinks at once, so the image stays clean and a guest reboot keeps its changes;
- `lsm` picks the security module on the kernel command line: "selinux" (enforcing, Debian's
  MCS reference policy, labelled offline when the image was built) or "apparmor" (Debian's
  default);
- the only way in is ssh as root with the image's own key, forwarded from a loopback port
  (user-mode networking with restrict=on: the guest reaches nothing but that forward).

Nothing is left on the host: `close()` powers the guest off, ends QEMU by its PID if it does not
go, and removes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
IMAGE_SCRIPT = PROJECT / "scripts" / "testhost-image.sh"
# Where the work tree is copied in (the image's venv points here): under /opt, as an
# administrator installs a tool, so SELinux labels it usr_t like any installed program. The
# sandbox's init reads confine.py from it and its systemd runs the generator, which a tree in
# /root (user_home_t, private to the user) would keep from any confined sandbox.
GUEST_TREE = "/opt/vss"
QEMU = "qemu-system-x86_64"

# Kernel command lines. Debian's kernel lists apparmor before selinux in CONFIG_LSM, so the major
# LSM is chosen with security=; cgroup v2 only is systemd 252's default.
LSM_ARGS = {
    "selinux": "security=selinux selinux=1 enforcing=1",
    "apparmor": "security=apparmor apparmor=1",
}
BASE_ARGS = "root=/dev/vda rw console=ttyS0 quiet mitigations=off tsc=reliable no_timer_check"


class TestHostError(RuntimeError):
    """The test host could not be built, booted or reached."""


def build_image() -> Path:
    """Build the image if its inputs changed; return the cache directory."""
    out = subprocess.run(["bash", str(IMAGE_SCRIPT)], stdout=subprocess.PIPE, text=True,
                         check=False)
    if out.returncode != 0:
        raise TestHostError(f"{IMAGE_SCRIPT.name} failed with status {out.returncode}")
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class TestHost:
    """One booted guest. Use as a context manager, or call boot() and close()."""

    __test__ = False  # not a pytest class

    def __init__(self, cache: Path, lsm: str, memory_mib: int = 4096, cpus: int = 2) -> None:
        if lsm not in LSM_ARGS:
            raise ValueError(f"unknown LSM {lsm!r} ({', '.join(LSM_ARGS)})")
        self.cache, self.lsm = cache, lsm
        self.memory_mib, self.cpus = memory_mib, cpus
        self.rundir = Path(tempfile.mkdtemp(prefix=f"vss-testhost-{lsm}-", dir="/var/tmp"))
        self.console = self.rundir / "console.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0

    # -- life cycle ------------------------------------------------------------------------

    def qemu_argv(self) -> list[str]:
        drive = f"file={self.cache / 'image.raw'},format=raw,if=virtio,snapshot=on,cache=unsafe"
        net = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22"
        return [
            QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", str(self.cpus),
            "-m", str(self.memory_mib), "-nodefaults", "-nographic", "-no-user-config",
            "-serial", f"file:{self.console}", "-monitor", "none",
            "-kernel", str(self.cache / "vmlinuz"), "-initrd", str(self.cache / "initrd.img"),
            "-append", f"{BASE_ARGS} {LSM_ARGS[self.lsm]}",
            "-drive", drive, "-netdev", net, "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
        ]

    def boot(self, timeout: float = 600) -> None:
        start = time.monotonic()
        self.proc = subprocess.Popen(self.qemu_argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_ssh(start + timeout)
        self.boot_seconds = time.monotonic() - start

    def wait_ssh(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise TestHostError(f"QEMU exited ({self.proc.returncode}): {err.strip()}"
                                    f"\n{self.console_tail()}")
            if self.ssh("true", timeout=20, check=False).returncode == 0:
                return
            time.sleep(2)
        raise TestHostError(f"the {self.lsm} test host did not answer ssh in time\n"
                            f"{self.console_tail()}")

    def reboot(self, timeout: float = 600) -> float:
        """Reboot the guest (same QEMU, same disk); return the seconds until ssh answers."""
        old = self.ssh("cat /proc/sys/kernel/random/boot_id").stdout
        start = time.monotonic()
        self.ssh("systemctl reboot", check=False)
        deadline = start + timeout
        while time.monotonic() < deadline:
            time.sleep(3)
            r = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=20, check=False)
            if r.returncode == 0 and r.stdout != old:
                return time.monotonic() - start
        raise TestHostError(f"the test host did not come back from reboot\n{self.console_tail()}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.ssh("systemctl poweroff", timeout=20, check=False)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.rundir)], check=False)

    def __enter__(self) -> TestHost:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- talking to it ---------------------------------------------------------------------

    def ssh_argv(self) -> list[str]:
        return [
            "ssh", "-i", str(self.cache / "id_ed25519"), "-p", str(self.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "root@127.0.0.1",
        ]

    def ssh(self, command: str, timeout: float = 1800, check: bool = True,
            input: bytes | None = None) -> Result:
        """Run a shell command line in the guest as root."""
        try:
            p = subprocess.run([*self.ssh_argv(), command], input=input, capture_output=True,
                               timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            if check:
                raise TestHostError(f"timed out in the test host: {command}") from e
            return Result(124, "", "timeout")
        r = Result(p.returncode, p.stdout.decode(errors="replace"),
                   p.stderr.decode(errors="replace"))
        if check and r.returncode != 0:
            raise TestHostError(f"in the test host, `{command}` exited {r.returncode}:\n"
                                f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def copy_in(self, tree: Path, dest: str = GUEST_TREE) -> None:
        """Copy a work tree in (without its venv, git and caches), replacing the image's copy."""
        tar = subprocess.run(
            ["tar", "-C", str(tree), "--exclude=./.venv", "--exclude=./.git",
             "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=.mypy_cache",
             "--exclude=.ruff_cache", "--exclude=.pytest_cache", "-cf", "-", "."],
            capture_output=True, check=True)
        q = shlex.quote(dest)
        self.ssh(f"find {q} -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {{}} + ;"
                 f" mkdir -p {q} && tar -C {q} -xf -", input=tar.stdout)

    def read(self, path: str) -> str:
        return self.ssh(f"cat {shlex.quote(path)}").stdout

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def booted(lsm: str) -> Iterator[TestHost]:
    with TestHost(build_image(), lsm) as host:
        yield host
