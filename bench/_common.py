"""Shared pieces of the bench scripts: the machine, medians, the tool, and the peers.

Peers (HOST-NOTES.md, "Peers to measure against"), all started and stopped here by PID:
- raw libvirt: the sandbox's own domain XML under another name, through `virsh create`;
- systemd-nspawn booting an overlay of the host root (tmpfs upper) with only apache2 enabled,
  in a private mount namespace, with --private-network;
- a bare `unshare` of the same command (apache2 in the foreground, or /bin/true).
Every bench asserts nothing: it prints figures and ratios and writes bench/results/NAME.md and
NAME.json (bench/summarize.py builds bench/results/README.md from the JSON files).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

libvirt.registerErrorHandler(lambda _c, _e: None, None)
LOAD_AT_START = Path("/proc/loadavg").read_text().split()[0]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt()


def on_sigterm_clean_up() -> None:
    """SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so every `finally` cleans up."""
    signal.signal(signal.SIGTERM, _interrupt)


# --- figures ---------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    kvm = "no vmx/svm (no hardware KVM)" if not any(
        f in Path("/proc/cpuinfo").read_text() for f in (" vmx", " svm")) else "vmx/svm"
    ver = libvirt.getVersion()
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}; {kvm}), "
            f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB RAM, "
            f"kernel {platform.release()}, libvirt {ver // 1000000}.{ver // 1000 % 1000}, "
            f"{distro()}, PID 1 {Path('/proc/1/comm').read_text().strip()}")


def distro() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "?"


def ratio(ours: float | None, peer: float | None) -> str:
    if not ours or not peer:
        return "-"
    return f"{ours / peer:.2f}"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def write_result(stem: str, title: str, runs: int, body: list[str],
                 summary: list[dict[str, Any]]) -> None:
    """bench/results/STEM.md (human) and STEM.json (for the README summary); prints the md."""
    header = [f"# {title}", "", f"Machine: {machine()}",
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"Runs: medians of {runs}",
              f"Load average (1 min) at start / end: {LOAD_AT_START} / "
              f"{Path('/proc/loadavg').read_text().split()[0]} on {os.cpu_count()} cores "
              "(the machine is shared: other test runs add noise)", ""]
    text = "\n".join(header + body) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"title": title, "file": f"{stem}.md", "runs": runs,
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "figures": summary},
        indent=2) + "\n")


# --- the tool ----------------------------------------------------------------------------------


def compile_tool() -> None:
    """Byte-compile the tool, as an install is (and scripts/setup.sh does): a module changed
    since, under PYTHONDONTWRITEBYTECODE=1, was compiled again by every command (5-10 ms
    each; a bench after an edit measured that too)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "virt_sandbox_service")],
                   check=True, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def tool_env() -> Iterator[dict[str, str]]:
    """Private config/state/unit/run dirs for the tool; every sandbox left in them is deleted.
    The tool is byte-compiled first (compile_tool)."""
    compile_tool()
    base = Path(tempfile.mkdtemp(prefix="vss-bench-", dir="/var/tmp"))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "VSS_CONFIG_DIR": str(base / "config"), "VSS_STATE_DIR": str(base / "state"),
           "VSS_UNIT_DIR": str(base / "units"), "VSS_RUN_DIR": str(base / "run")}
    try:
        yield env
    finally:
        sandboxes = base / "config" / "sandboxes"
        if sandboxes.is_dir():
            for cfg in sandboxes.glob("*.json"):
                tool(env, "delete", "--force", cfg.stem, check=False)
                remove_cgroups(cfg.stem)
        shutil.rmtree(base, ignore_errors=True)


def tool(env: dict[str, str], *args: str, check: bool = True,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "virt_sandbox_service.cli", *args], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"virt-sandbox-service {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def tool_spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "virt_sandbox_service.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            stdin=subprocess.DEVNULL)


def parallel(env: dict[str, str], argvs: list[list[str]], timeout: float = 300) -> None:
    procs = [tool_spawn(env, *a) for a in argvs]
    errors = []
    for a, p in zip(argvs, procs, strict=True):
        _, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            errors.append(f"{' '.join(a)}: {err.strip()}")
    if errors:
        raise RuntimeError("; ".join(errors))


def state_dir(env: dict[str, str], name: str) -> Path:
    return Path(env["VSS_STATE_DIR"]) / name


def remove_cgroups(name: str) -> None:
    """The empty cgroup2 directories the sandbox init of a stopped domain NAME left (ours or
    a raw copy of our XML that this bench started); only empty ones can go."""
    from virt_sandbox_service.runtime.lxc import remove_cgroups as rm

    rm(name)


# --- processes, namespaces, memory ------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = children(p)
        out += kids
        todo += kids
    return out


def ns_init(pid: int) -> int | None:
    """The first process below `pid` that is PID 1 of a new PID namespace."""
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == "1" \
                        and len(line.split()) > 2:
                    return p
    return None


def domain_init(dom: libvirt.virDomain) -> int | None:
    """A running LXC domain's init: the child of its libvirt_lxc controller (PID = dom.ID())."""
    try:
        ctl = dom.ID()
        kids = Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()
        return int(kids[0]) if kids else None
    except (OSError, libvirt.libvirtError, ValueError):
        return None


def http_status(pid: int, timeout: float = 1) -> str:
    """HTTP status of http://127.0.0.1/ from inside the network namespace of `pid`."""
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "curl", "-s", "-o", "/dev/null",
                        "-w", "%{http_code}", "--max-time", str(timeout), "http://127.0.0.1/"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return r.stdout.strip()


def wait_http(find_pid: Any, deadline: float = 30) -> float:
    """time.monotonic() of the first HTTP 200 from the netns of find_pid()'s process."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pid = find_pid()
        if pid and http_status(pid) == "200":
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError("no HTTP 200 within the deadline")


def pss_kib(pids: list[int]) -> int:
    """Sum of the Pss of these processes (/proc/PID/smaps_rollup), in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def memcg_usage(pid: int) -> int | None:
    """memory.usage_in_bytes of the cgroup v1 memory hierarchy holding `pid` (read only)."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctl, path = line.split(":", 2)
            if "memory" in ctl.split(","):
                return int(Path(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
                           .read_text())
    except (OSError, ValueError):
        return None
    return None


def stop_pid(pid: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20) -> None:
    """SIGTERM, wait, SIGKILL: for a process this bench started (and its Popen, if any)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if proc is not None:
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            proc.wait(10)


# --- a cpu cgroup of our own ---------------------------------------------------------------

CPU_V1 = Path("/sys/fs/cgroup/cpu")


class CpuGroup:
    """A child cgroup of the v1 cpu hierarchy's root that this bench makes and removes.

    libvirt puts every domain under machine/ (cpu.shares 1024 for the whole group), while a
    process started here sits at the root, where each one weighs 1024 by itself: twenty load
    generators at the root would get 20/21 of the CPU against all the sandboxes together. A
    group of our own for the load generators (and one for a peer's servers) makes the fight
    the same for ours and for the peer. Without a v1 cpu hierarchy, `wrap` changes nothing.
    """

    def __init__(self, label: str) -> None:
        self.path: Path | None = None
        if (CPU_V1 / "cpu.shares").exists():
            self.path = CPU_V1 / f"vss-bench-{label}-{secrets.token_hex(3)}"
            self.path.mkdir()

    def wrap(self, argv: list[str]) -> list[str]:
        """argv, run inside this group (the shell moves itself in, then execs argv)."""
        if self.path is None:
            return argv
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *argv]

    def remove(self, timeout: float = 10) -> None:
        if self.path is None:
            return
        end = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:  # busy until its last process is gone
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)


# --- raw libvirt: the same domain XML, through virsh ------------------------------------------


def raw_copy_xml(conn: libvirt.virConnect, name: str, raw_name: str) -> str:
    xml = conn.lookupByName(name).XMLDesc(0)
    xml = xml.replace(f"<name>{name}</name>", f"<name>{raw_name}</name>")
    return "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)


@contextlib.contextmanager
def xml_file(xml: str) -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(xml)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


def virsh_create(path: str) -> None:
    subprocess.run(["virsh", "-q", "-c", "lxc:///", "create", path], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)


def wait_gone(conn: libvirt.virConnect, name: str, timeout: float = 30) -> float:
    """time.monotonic() when the transient domain `name` no longer runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if not conn.lookupByName(name).isActive():
                return time.monotonic()
        except libvirt.libvirtError:
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"{name} still runs after {timeout:g} s")


def shutdown_raw(conn: libvirt.virConnect, name: str, timeout: float = 15) -> None:
    """Stop a transient domain this bench created (initctl like `stop`, then destroy)."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        remove_cgroups(name)
        return
    with contextlib.suppress(libvirt.libvirtError):
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
    try:
        wait_gone(conn, name, timeout)
    except RuntimeError:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
    remove_cgroups(name)


# --- systemd-nspawn booting an overlay of the host root ---------------------------------------

NSPAWN_MASKED = ("getty.target", "console-getty.service", "systemd-logind.service",
                 "libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket",
                 "libvirtd-admin.socket", "virtlogd.service", "virtlogd.socket",
                 "virtlockd.service", "virtlockd.socket")

# Runs as `unshare -m --propagation private sh -c SCRIPT sh BASE CGROUP_PROCS... -- NSPAWN`.
NSPAWN_SCRIPT = r"""
set -eu
base=$1; shift
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift
if [ -d /run/systemd/nspawn ]; then
  mount -t tmpfs -o mode=0755,size=4m vss-bench-nspawn /run/systemd/nspawn
else
  mount -t tmpfs -o mode=0755,size=4m vss-bench-nspawn /run/systemd
  mkdir /run/systemd/nspawn
fi
mount -t tmpfs -o mode=0755 vss-bench-upper "$base/t"
mkdir "$base/t/upper" "$base/t/work"
mount -t overlay vss-bench-root \
  -o "lowerdir=/,upperdir=$base/t/upper,workdir=$base/t/work" "$base/root"
r=$base/root
find "$r/etc/systemd/system" -mindepth 2 -path '*.wants/*' -delete
mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
ln -s /lib/systemd/system/apache2.service "$r/etc/systemd/system/multi-user.target.wants/"
for unit in $VSS_BENCH_MASKED; do ln -sfn /dev/null "$r/etc/systemd/system/$unit"; done
rm -f "$r/etc/machine-id"
systemd-machine-id-setup --root="$r" >/dev/null
echo ok > "$r/var/www/html/index.html"
date +%s.%N > "$base/exec-time"
exec "$@"
"""


def _own_cgroups(tag: str) -> list[Path]:
    """Fresh children of our cgroup in the cgroup2 and name=systemd hierarchies, for nspawn's
    payload/supervisor cgroups (HOST-NOTES; tests/systemd_host.py does the same)."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _src, opts = right.split()[:3]
        point = Path(left.split()[4])
        if fstype == "cgroup2":
            mounts.setdefault("", point)
        elif fstype == "cgroup" and "name=systemd" in opts.split(","):
            mounts.setdefault("name=systemd", point)
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hid, ctl, path = line.split(":", 2)
        if ctl in mounts:
            d = mounts[ctl] / path.lstrip("/") / f"vss-bench-{tag}"
            d.mkdir()
            out.append(d)
    return out


def _remove_cgroup_trees(tops: list[Path]) -> None:
    for top in tops:
        if not top.exists():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


class Nspawn:
    """One systemd-nspawn container booting the host's apache2; stop() removes everything."""

    def __init__(self, group: CpuGroup | None = None) -> None:
        self.group = group  # the v1 cpu group it runs in (bench/load.py: CPU fairness)
        self.tag = secrets.token_hex(3)
        self.base = Path(tempfile.mkdtemp(prefix="vss-bench-nspawn-", dir="/var/tmp"))
        for d in ("t", "root"):
            (self.base / d).mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroups: list[Path] = []
        self.made_run_systemd = False
        self.launched = 0.0

    def start(self) -> None:
        if not Path("/run/systemd").is_dir():
            Path("/run/systemd").mkdir(mode=0o755)
            self.made_run_systemd = True
        self.cgroups = _own_cgroups(self.tag)
        nspawn = ["systemd-nspawn", "-D", str(self.base / "root"), "-M", f"vssbench-{self.tag}",
                  "--keep-unit", "--register=no", "--private-network", "--console=read-only",
                  "--boot", "systemd.unit=multi-user.target"]
        env = {"PATH": INNER_PATH, "LANG": "C.UTF-8",
               "VSS_BENCH_MASKED": " ".join(NSPAWN_MASKED)}
        self.launched = time.time()
        with open(self.base / "console.log", "ab") as log:
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", NSPAWN_SCRIPT,
                    "sh", str(self.base), *(str(d / "cgroup.procs") for d in self.cgroups),
                    "--", *nspawn]
            self.proc = subprocess.Popen(
                self.group.wrap(argv) if self.group else argv,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def leader(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited: {self.console_tail()}")
        return ns_init(self.proc.pid)

    def exec_time(self) -> float:
        """time.time() at which nspawn itself was exec'd (after the overlay was set up)."""
        return float((self.base / "exec-time").read_text())

    def supervisor_pids(self) -> list[int]:
        """nspawn itself (and its helper processes), not the container's."""
        if self.proc is None:
            return []
        lead = self.leader()
        inside = set(descendants(lead)) | {lead} if lead else set()
        return [self.proc.pid] + [p for p in descendants(self.proc.pid) if p not in inside]

    def console_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.base / "console.log").read_text(errors="replace")
                              .splitlines()[-8:])
        return "(no console log)"

    def stop(self) -> float:
        """Clean power-off (nspawn turns SIGTERM into SIGRTMIN+3); returns the seconds."""
        t0 = time.monotonic()
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                lead = ns_init(proc.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    if lead:  # killing the container's PID 1 kills its PID namespace
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(lead, signal.SIGKILL)
                    proc.kill()
                    proc.wait(10)
            return time.monotonic() - t0
        finally:
            _remove_cgroup_trees(self.cgroups)
            shutil.rmtree(self.base, ignore_errors=True)
            if self.made_run_systemd:
                with contextlib.suppress(OSError):
                    Path("/run/systemd").rmdir()


# --- bare unshare ------------------------------------------------------------------------------

BARE_APACHE = r"""
set -eu
ip link set lo up
mount -t tmpfs -o mode=0755 vss-bench-run /run
mkdir -p /run/apache2 /run/lock/apache2
chown www-data /run/lock/apache2
mount --bind "$VSS_BENCH_LOG" /var/log/apache2
mount -t tmpfs -o mode=0755 vss-bench-www /var/www/html
echo ok > /var/www/html/index.html
APACHE_CONFDIR=/etc/apache2
set +u
. /etc/apache2/envvars
exec /usr/sbin/apache2 -DFOREGROUND
"""


class BareApache:
    """The host's apache2 in new PID, mount and network namespaces (`unshare -fpmn`): the
    namespace floor for a daemon. Its /run and web root are tmpfs, its logs a directory of its
    own on disk (as a sandbox's are): the host is unchanged."""

    def __init__(self, group: CpuGroup | None = None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.group = group
        self.logs = Path(tempfile.mkdtemp(prefix="vss-bench-bare-", dir="/var/tmp"))
        st = os.stat("/var/log/apache2")
        os.chown(self.logs, st.st_uid, st.st_gid)
        os.chmod(self.logs, st.st_mode & 0o7777)

    def start(self) -> None:
        argv = ["unshare", "-fpmn", "--mount-proc", "--propagation", "private",
                "sh", "-c", BARE_APACHE]
        self.proc = subprocess.Popen(
            self.group.wrap(argv) if self.group else argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={"PATH": INNER_PATH, "LANG": "C", "VSS_BENCH_LOG": str(self.logs)})

    def leader(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc and self.proc.stderr else ""
            raise RuntimeError(f"bare apache2 exited: {err}")
        return ns_init(self.proc.pid)

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            shutil.rmtree(self.logs, ignore_errors=True)

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        lead = ns_init(proc.pid)
        if lead:  # apache2 itself: SIGTERM stops it; unshare then exits
            with contextlib.suppress(ProcessLookupError):
                os.kill(lead, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            if lead:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(lead, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
