"""A real systemd as PID 1 for tests: `systemd-nspawn --boot` of an overlay of the host root.

This machine's PID 1 is not systemd, so the generated units cannot be driven with `systemctl`
here. SystemdHost boots a throw-away "test host" instead (see HOST-NOTES.md, "A real systemd as
PID 1, for tests"):

- an overlay with lowerdir=/ and its upper directory on disk under /var/tmp, so that
  `systemctl enable` survives a reboot() of the test host;
- on first boot, the overlay's /etc/systemd/system/*.wants are emptied (the host's enabled
  daemons must not start inside) and libvirt's own units are masked: the test host drives the
  REAL host's libvirtd through `--bind=/run/libvirt`, and its socket units would rebind it;
- `--bind` of a shared directory holding the sandboxes' state, config and run dirs (the domains
  live in the host's libvirtd, which resolves their mount sources in the host's namespace, so
  these paths must be the same inside and outside), `--bind-ro` of the project and its venv so
  the CLI works inside at the same paths;
- nspawn runs in a private mount namespace (`unshare -m`) where a tmpfs covers /run/systemd and
  the overlay is mounted: when nspawn exits, the kernel drops every mount it needed;
- nspawn runs in a cgroup of its own (in the cgroup2 and name=systemd hierarchies), so its
  `payload`/`supervisor` cgroups do not land at the host's roots and can be removed afterwards;
- `--notify-ready=yes`: nspawn forwards the inner systemd's READY=1 (sent when its boot jobs
  are done) to our notify socket, together with the leader's PID. No sleeps, one deadline.

Commands run inside with `nsenter -t LEADER -a` (there is no machined registration, so no
`systemctl -M`). Only the processes started here are ever signalled, by PID.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from virt_sandbox_service.runtime.notify import NotifyListener

PROJECT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else PROJECT / ".venv"
CLI_LINK = Path("/usr/local/bin/virt-sandbox-service")
CLI = str(CLI_LINK) if CLI_LINK.exists() else str(VENV / "bin" / "virt-sandbox-service")
RUN_SYSTEMD = Path("/run/systemd")
WORK_PARENT = Path("/var/tmp")  # on disk (the upper dir survives reboot()), not on overlayfs
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Units that must not run in the test host. libvirt's: the host's libvirtd is shared through the
# bound /run/libvirt. Gettys and logind: no logins on a test host (and no tty on its console).
MASKED = (
    "libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket",
    "libvirtd-tcp.socket", "libvirtd-tls.socket", "libvirt-guests.service",
    "virtlogd.service", "virtlogd.socket", "virtlogd-admin.socket",
    "virtlockd.service", "virtlockd.socket", "virtlockd-admin.socket",
    "virtlxcd.service", "virtlxcd.socket", "virtqemud.service", "virtqemud.socket",
    "getty.target", "console-getty.service", "systemd-logind.service",
)

# Runs as `unshare -m --propagation private sh -c BOOT_SCRIPT sh BASE CGROUP_PROCS... -- NSPAWN`
BOOT_SCRIPT = r"""
set -eu
base=$1; shift
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift
# nspawn keeps state in /run/systemd/nspawn: give it a tmpfs that dies with this namespace.
if [ -d /run/systemd/nspawn ]; then
  mount -t tmpfs -o mode=0755,size=4m vss-test-nspawn /run/systemd/nspawn
else
  mount -t tmpfs -o mode=0755,size=4m vss-test-nspawn /run/systemd
  mkdir /run/systemd/nspawn
fi
mount -t overlay vss-test-root \
  -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
if [ ! -e "$base/first-boot-done" ]; then
  find "$base/root/etc/systemd/system" -mindepth 2 -path '*.wants/*' -delete
  for unit in $VSS_TEST_MASKED; do
    ln -sfn /dev/null "$base/root/etc/systemd/system/$unit"
  done
  # An identity of its own: a fresh machine-id, so its journal is not the host's.
  rm -f "$base/root/etc/machine-id"
  systemd-machine-id-setup --root="$base/root" >/dev/null
  touch "$base/first-boot-done"
fi
exec "$@"
"""


def unavailable() -> str | None:
    """Why a test host cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "the systemd test host needs root (overlay mounts, systemd-nspawn)"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (Debian: systemd-container)"
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter (util-linux) are not installed"
    if _fstype(WORK_PARENT) == "overlay":
        return f"{WORK_PARENT} is on overlayfs, which cannot hold an overlay's upper directory"
    return None


def _fstype(path: Path) -> str:
    """The type of the filesystem mounted at or above path (longest mount point wins)."""
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
                best, fstype = point, right.split()[0]
    return fstype


class BootError(RuntimeError):
    pass


class SystemdHost:
    """A booted systemd in a container whose units we drive with systemctl."""

    def __init__(self, *, machine: str | None = None, boot_timeout: float = 30.0) -> None:
        self.machine = machine or f"vsstest-{secrets.token_hex(3)}"
        self.boot_timeout = boot_timeout
        self.base = Path(tempfile.mkdtemp(prefix="vss-systemd-host-", dir=WORK_PARENT))
        try:
            for d in ("upper", "work", "root", "shared/state", "shared/config", "shared/run"):
                (self.base / d).mkdir(parents=True)
            self._cgroups = _own_cgroups(self.machine)
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.shared = self.base / "shared"
        # The CLI's paths inside the test host (and, for `execute`, outside it: same paths).
        self.env = {
            "VSS_STATE_DIR": str(self.shared / "state"),
            "VSS_CONFIG_DIR": str(self.shared / "config"),
            "VSS_RUN_DIR": str(self.shared / "run"),
        }
        self.console_log = self.base / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.sandboxes: list[str] = []  # not deleted yet
        self.all_sandboxes: list[str] = []
        self.timings: dict[str, float] = {}
        self._made_run_systemd = False
        self._setup_cgroups = setup_cgroups()

    # --- life cycle ----------------------------------------------------------------------------

    def boot(self) -> float:
        """Boot the test host; returns once its systemd reported READY=1 (seconds taken)."""
        if self.proc is not None:
            raise BootError("the test host is already running")
        if not RUN_SYSTEMD.is_dir():  # a mount point for the tmpfs; removed by close()
            RUN_SYSTEMD.mkdir(mode=0o755)
            self._made_run_systemd = True
        listener = NotifyListener(self.base / "nspawn.notify")
        start = time.monotonic()
        try:
            procs = [str(d / "cgroup.procs") for d in self._cgroups]
            nspawn = [
                "systemd-nspawn", "-D", str(self.base / "root"), "-M", self.machine,
                "--keep-unit", "--register=no", "--notify-ready=yes", "--console=read-only",
                f"--bind={self.shared}", "--bind=/run/libvirt",
                f"--bind-ro={PROJECT}", f"--bind-ro={VENV}",
                "--boot", "systemd.unit=multi-user.target",
            ]
            env = {"PATH": INNER_PATH, "NOTIFY_SOCKET": str(listener.path),
                   "VSS_TEST_MASKED": " ".join(MASKED), "LANG": "C.UTF-8"}
            with open(self.console_log, "ab") as log:
                self.proc = subprocess.Popen(
                    ["unshare", "-m", "--propagation", "private", "sh", "-c", BOOT_SCRIPT, "sh",
                     str(self.base), *procs, "--", *nspawn],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._wait_ready(listener, start + self.boot_timeout)
        except BaseException:
            self._stop_nspawn(timeout=10)
            raise
        finally:
            listener.close()
        took = time.monotonic() - start
        self.timings.setdefault("boot", took)
        return took

    def _wait_ready(self, listener: NotifyListener, deadline: float) -> None:
        assert self.proc is not None
        ready = False
        while not ready or self.leader is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(f"test host not ready after {self.boot_timeout:g} s; "
                                f"console: {self.console_tail()}")
            msg = listener.receive(min(left, 0.2))
            if msg is None:
                if self.proc.poll() is not None:
                    raise BootError(f"systemd-nspawn exited with {self.proc.returncode}; "
                                    f"console: {self.console_tail()}")
                continue
            if "X_NSPAWN_LEADER_PID" in msg:
                self.leader = int(msg["X_NSPAWN_LEADER_PID"])
            ready = ready or msg.get("READY") == "1"

    def shutdown(self, timeout: float = 30.0) -> float:
        """Power the test host off cleanly (nspawn turns SIGTERM into SIGRTMIN+3 for its init);
        returns the seconds it took. Falls back to SIGKILL of our own processes at the deadline."""
        start = time.monotonic()
        self._stop_nspawn(timeout)
        return time.monotonic() - start

    def reboot(self, timeout: float = 30.0) -> float:
        """Clean power-off, then boot again on the same upper directory. Returns the seconds."""
        start = time.monotonic()
        self.shutdown(timeout)
        self.boot()
        return time.monotonic() - start

    def _stop_nspawn(self, timeout: float) -> None:
        proc, self.proc = self.proc, None
        leader, self.leader = self.leader, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Killing the container's PID 1 kills its whole PID namespace.
                if leader is not None and _is_child_of(leader, proc.pid):
                    os.kill(leader, signal.SIGKILL)
                proc.kill()
                proc.wait(10)

    def close(self) -> None:
        """Delete the sandboxes, power off, and remove everything the test host left."""
        errors: list[str] = []
        try:
            if self.proc is not None and self.proc.poll() is None and self.leader is not None:
                for name in list(self.sandboxes):
                    r = self.cli("delete", "--force", name, check=False, timeout=60)
                    if r.returncode == 0:
                        self.sandboxes.remove(name)
        finally:
            try:
                self._stop_nspawn(timeout=30)
            finally:
                errors += _remove_domains(self.sandboxes)
                _remove_sandbox_cgroups(self.all_sandboxes)
                errors += _remove_cgroup_trees(self._cgroups)
                errors += _remove_cgroup_trees(sorted(setup_cgroups() - self._setup_cgroups))
                shutil.rmtree(self.base, ignore_errors=True)
                if self._made_run_systemd:
                    with contextlib.suppress(OSError):
                        RUN_SYSTEMD.rmdir()
        if errors:
            raise RuntimeError("test host clean-up: " + "; ".join(errors))

    # --- inside ----------------------------------------------------------------------------------

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run cmd in all the test host's namespaces, with a clean environment."""
        if self.leader is None:
            raise BootError("the test host is not running")
        full_env = {"PATH": INNER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", **self.env,
                    **(env or {})}
        argv = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i",
                *(f"{k}={v}" for k, v in full_env.items()), *cmd]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} exited {proc.returncode} in the test host:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def systemctl(self, *args: str, check: bool = False,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props), check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", "-o", "cat", *args], check=False).stdout

    def cli(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """virt-sandbox-service inside the test host."""
        return self.run([CLI, *args], check=check, timeout=timeout)

    def host_cli(self, *args: str, check: bool = False,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """virt-sandbox-service on the real host, on the same sandboxes (e.g. `execute`, which
        enters the sandbox's PID namespace: that works only from an ancestor PID namespace)."""
        env = {**os.environ, **self.env}
        return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                              check=check, env=env, stdin=subprocess.DEVNULL)

    # --- sandboxes -------------------------------------------------------------------------------

    def new_name(self, prefix: str = "sdt") -> str:
        """A sandbox name unique on the shared libvirtd; deleted by close() if still there."""
        name = f"{prefix}{secrets.token_hex(4)}"
        self.sandboxes.append(name)
        self.all_sandboxes.append(name)
        return name

    def state_dir(self, name: str) -> Path:
        return self.shared / "state" / name

    @contextlib.contextmanager
    def sandbox(self, *create_args: str) -> Iterator[str]:
        """Create a sandbox inside the test host (`create ARGS NAME`); delete it afterwards."""
        name = self.new_name()
        self.cli("create", *create_args, name)
        try:
            yield name
        finally:
            if self.leader is not None:
                self.systemctl("stop", f"{name}_sandbox.service", timeout=90)
                r = self.cli("delete", "--force", name, check=False)
                if r.returncode == 0:
                    self.sandboxes.remove(name)

    def console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])


def pid1_is_systemd() -> bool:
    """This machine is a standard host: systemd is its PID 1 (sd_booted()'s test, plus /proc/1)."""
    try:
        return RUN_SYSTEMD.joinpath("system").is_dir() and \
            Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


class LocalSystemd(SystemdHost):
    """The same interface on a standard host, whose own PID 1 is systemd (the test host VM,
    tests/testhost.py): the units are the host's, driven by its real systemd and libvirtd. No
    boot or power-off here (that would end the test run): the VM's harness reboots the guest
    from outside (tests/test_testhost.py)."""

    def __init__(self) -> None:  # no cgroups or overlay of its own: nothing is booted
        self.machine, self.boot_timeout, self.leader = "local", 0.0, 1
        self.base = Path(tempfile.mkdtemp(prefix="vss-systemd-local-", dir=WORK_PARENT))
        self.shared = self.base / "shared"
        self.env = {}
        for key, sub in (("VSS_STATE_DIR", "state"), ("VSS_CONFIG_DIR", "config"),
                         ("VSS_RUN_DIR", "run")):
            (self.shared / sub).mkdir(parents=True)
            self.env[key] = str(self.shared / sub)
        self.console_log = self.base / "console.log"
        self.proc = None
        self.sandboxes, self.all_sandboxes = [], []
        self.timings = {}
        self._made_run_systemd = False
        self._cgroups = []

    def boot(self) -> float:
        return 0.0

    def shutdown(self, timeout: float = 30.0) -> float:
        pytest.skip("powering off the host the tests run on: tests/test_testhost.py reboots "
                    "the standard test host from outside instead")

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": INNER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", **self.env,
                    **(env or {})}
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL, env=full_env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def close(self) -> None:
        errors: list[str] = []
        for name in list(self.sandboxes):
            self.systemctl("stop", f"{name}_sandbox.service", timeout=90)
            r = self.cli("delete", "--force", name, check=False, timeout=60)
            if r.returncode == 0:
                self.sandboxes.remove(name)
        errors += _remove_domains(self.sandboxes)
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise RuntimeError("clean-up: " + "; ".join(errors))


def _own_cgroups(machine: str) -> list[Path]:
    """A fresh child of our cgroup in the cgroup2 and name=systemd hierarchies, where mounted."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = right.split()[:3]
            point = Path(left.split()[4])
            if fstype == "cgroup2":
                mounts.setdefault("", point)
            elif fstype == "cgroup" and "name=systemd" in opts.split(","):
                mounts.setdefault("name=systemd", point)
    out = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, ctl, path = line.rstrip("\n").split(":", 2)
            if ctl in mounts:
                d = mounts[ctl] / path.lstrip("/") / f"vss-{machine}"
                d.mkdir()
                out.append(d)
    return out


def _remove_cgroup_trees(tops: list[Path]) -> list[str]:
    errors = []
    for top in tops:
        if not top.exists():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as e:
                errors.append(f"cgroup {dirpath} stays: {e.strerror}")
    return errors


def _remove_domains(names: list[str]) -> list[str]:
    """Last resort for sandboxes the CLI could not delete: destroy and undefine from here."""
    if not names:
        return []
    import libvirt

    errors = []
    conn = libvirt.open("lxc:///")
    try:
        for name in names:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            errors.append(f"sandbox {name} was left behind; removed its domain")
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
    finally:
        conn.close()
    return errors


def setup_cgroups() -> set[Path]:
    """The cgroups of the fresh-instance set-up sandboxes (vss-setup-*) that creates inside the
    test host made: like a sandbox's, they sit in the host's tree, where the CLI inside (its
    own cgroup namespace) cannot remove them."""
    return {Path(p) for pattern in ("/sys/fs/cgroup/*/machine/lxc-*-vss-setup-*.libvirt-lxc",
                                    "/sys/fs/cgroup/machine/lxc-*-vss-setup-*.libvirt-lxc")
            for p in glob.glob(pattern)}


def _remove_sandbox_cgroups(names: list[str]) -> None:
    """The empty cgroups a stopped sandbox leaves. `stop` inside the test host cannot see them:
    they sit in the host's cgroup tree, outside the test host's cgroup namespace."""
    from virt_sandbox_service.runtime.lxc import remove_cgroups

    for name in names:
        remove_cgroups(name)


def _is_child_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1]) == parent
    except OSError:
        pass
    return False


@pytest.fixture(scope="module", name="systemd_host")
def systemd_host_fixture(request: pytest.FixtureRequest) -> Iterator[SystemdHost]:
    """One booted test host per test module; everything it made is removed afterwards.

    Tests record what they measured in `host.timings`; they are printed at the end.
    """
    from .conftest import need

    host: SystemdHost
    if pid1_is_systemd():
        host = LocalSystemd()
    else:
        reason = unavailable()
        need(reason is None, reason or "")
        host = SystemdHost()
    try:
        host.boot()
        yield host
    finally:
        try:
            host.close()
        finally:
            _report_timings(request, host.timings)


def _report_timings(request: pytest.FixtureRequest, timings: dict[str, float]) -> None:
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not timings:
        return
    text = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\nsystemd test host timings: {text}")
