"""Tuning controls (limits.py): device I/O throttles, CPU pinning, NUMA memory policy, the
memory soft limit and memory-plus-swap limit; at create, in run and live in limit.

Each effect is measured where this host can show it: a throttled dd against its rate (dd's
own timing), the pinned CPUs in the sandbox's tasks' Cpus_allowed_list, the limits in the
host's cgroup files of the running sandbox. Bad values: one error line and a hint, exit 2
(run: 125, as for all its own failures), nothing left behind.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from virt_sandbox_service.limits import (
    LimitArgs,
    Throttle,
    blkio_live_params,
    merge_throttles,
    parse_limits,
)

from .conftest import CLI, ROOT, Env, need, unique_name

root_libvirt = [pytest.mark.root, pytest.mark.libvirt]
MIB = 2**20


def root_disk() -> str:
    """The whole disk under /var/tmp (where the tests' files are), e.g. /dev/vda."""
    dev = os.stat("/var/tmp").st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sysfs / "partition").exists():
        sysfs = sysfs.parent
    path = f"/dev/{sysfs.name}"
    need(os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode),
         f"needs /var/tmp on a block device node in /dev ({path})")
    return path


def dd_seconds(stderr: str) -> float:
    m = re.search(r"copied, ([\d.]+) s", stderr)
    assert m, stderr
    return float(m.group(1))


@pytest.fixture
def data_file() -> Iterator[Path]:
    path = Path(f"/var/tmp/vss-tuning-{os.getpid()}.bin")
    path.write_bytes(os.urandom(4 * MIB))
    yield path
    path.unlink()


# --- parsing (pure) ------------------------------------------------------------------------------


def test_lists_are_normalised_and_throttles_merge() -> None:
    disk = root_disk()
    out = parse_limits(LimitArgs(cpuset="1,0", device_read_bps=(f"{disk}:2M",),
                                 device_write_iops=(f"{disk}:50",)), 2)
    assert out["cpuset"] == "0-1"
    assert out["io_throttle"] == (f"read_bytes_sec:{disk}:{2 * MIB}",
                                  f"write_iops_sec:{disk}:50")
    merged = merge_throttles(out["io_throttle"], (f"read_bytes_sec:{disk}:0",
                                                  f"read_iops_sec:{disk}:10"))
    assert merged == (f"read_iops_sec:{disk}:10", f"write_iops_sec:{disk}:50")
    assert Throttle.parse("read_bytes_sec:/dev/disk/by-path/pci-0000:00:04.0:5") == \
        Throttle("read_bytes_sec", "/dev/disk/by-path/pci-0000:00:04.0", 5)


BAD = [
    (["--cpuset", "7"], "--cpuset '7' names CPU 7, which this host does not have online"),
    (["--cpuset", "1-0"], "--cpuset '1-0': the range 1-0 runs backwards"),
    (["--cpuset", "one"], "--cpuset 'one' is not a list of CPUs"),
    (["--numa-nodes", "9"], "--numa-nodes '9' names NUMA node 9, which this host does not"),
    (["--device-read-bps", "/dev/vss-no-such-disk:1M"],
     "--device-read-bps: /dev/vss-no-such-disk: No such file or directory"),
    (["--device-write-bps", "/etc/passwd:1M"], "--device-write-bps: /etc/passwd is not a "
                                              "block device"),
    (["--device-read-iops", "DISK:lots"], "--device-read-iops 'lots' is not a whole number"),
    (["--device-read-bps", "1M"], "--device-read-bps '1M' is not DEVICE:RATE"),
    (["--memory-swap", "1G"], "--memory-swap needs --memory: it bounds memory plus swap"),
    (["--memory", "512M", "--memory-swap", "256M"], "--memory-swap (256M) is below --memory"),
    (["--memory", "256M", "--memory-soft", "512M"], "--memory-soft (512M) is above --memory"),
    (["--memory-soft", "lots"], "--memory-soft 'lots' is not a size"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_one_line_before_anything(env: Env, options: list[str],
                                                 message: str) -> None:
    options = [o.replace("DISK", root_disk()) for o in options]
    before = env.snapshot()
    proc = env.run("create", *options, "tune1", "--", "/bin/true")
    assert proc.returncode == 2, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("virt-sandbox-service: hint: "), lines
    assert message in lines[0], lines[0]
    assert env.snapshot() == before


def test_run_refuses_bad_values_with_its_own_status(env: Env) -> None:
    proc = env.run("run", "--cpuset", "99", "--", "/bin/true")
    assert proc.returncode == 125
    assert "--cpuset '99' names CPU 99" in proc.stderr


# --- measured: run -------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize(("option", "value", "dd_args", "low", "high"), [
    # 4 MiB at 1 MiB/s: 4 s (the kernel lets a first slice through: at least 3 s).
    ("--device-read-bps", "1M", ["bs=64k", "count=64", "iflag=direct"], 3.0, 8.0),
    # 40 reads of 4 KiB at 10 a second: 4 s.
    ("--device-read-iops", "10", ["bs=4k", "count=40", "iflag=direct"], 3.0, 8.0),
], ids=["read-bps", "read-iops"])
def test_a_throttled_read_is_held_to_its_rate(env: Env, data_file: Path, option: str,
                                              value: str, dd_args: list[str], low: float,
                                              high: float) -> None:
    disk = root_disk()
    dd = ["/bin/dd", f"if={data_file}", "of=/dev/null", *dd_args]
    free = env.run("run", "--", *dd, check=True)
    slow = env.run("run", f"{option}", f"{disk}:{value}", "--", *dd, check=True)
    fast, held = dd_seconds(free.stderr), dd_seconds(slow.stderr)
    assert low <= held <= high, (held, slow.stderr)
    assert fast < held / 3, (fast, held)


@pytest.mark.root
@pytest.mark.libvirt
def test_a_throttled_write_is_held_to_its_rate(env: Env, tmp_path: Path) -> None:
    disk = root_disk()
    out = Path(f"/var/tmp/vss-tuning-w-{os.getpid()}")
    out.mkdir()
    try:
        dd = ["/bin/dd", "if=/dev/zero", "of=/mnt/f", "bs=64k", "count=64", "oflag=direct"]
        proc = env.run("run", "-m", f"host-bind:/mnt={out}", "--device-write-bps",
                       f"{disk}:1M", "--", *dd, check=True)
        assert 3.0 <= dd_seconds(proc.stderr) <= 8.0, proc.stderr
        assert (out / "f").stat().st_size == 4 * MIB
    finally:
        for f in out.iterdir():
            f.unlink()
        out.rmdir()


@pytest.mark.root
@pytest.mark.libvirt
def test_a_pinned_run_has_only_its_cpus(env: Env) -> None:
    need((os.cpu_count() or 1) >= 2, "needs two CPUs")
    proc = env.run("run", "--cpuset", "1", "--", "/bin/sh", "-c",
                   "grep Cpus_allowed_list /proc/1/status /proc/self/status", check=True)
    assert re.findall(r"Cpus_allowed_list:\s*(\S+)", proc.stdout) == ["1", "1"], proc.stdout
    free = env.run("run", "--", "/bin/grep", "Cpus_allowed_list", "/proc/self/status",
                   check=True)
    assert free.stdout.split()[-1] == "0-1"


def v1_dir(pid_cgroup: str, controller: str) -> Path:
    """The host directory of a v1 cgroup, from a process's /proc/PID/cgroup text."""
    path = next(line.split(":", 2)[2] for line in pid_cgroup.splitlines()
                if controller in line.split(":")[1].split(","))
    return Path("/sys/fs/cgroup") / controller / path.lstrip("/")


def cgroup_file(pid_cgroup: str, controller: str, name: str) -> str:
    return (v1_dir(pid_cgroup, controller) / name).read_text().strip()


@pytest.mark.root
@pytest.mark.libvirt
def test_memory_and_numa_controls_reach_the_runs_cgroup(env: Env) -> None:
    need(Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
         "needs the cgroup v1 memory controller with swap accounting")
    proc = subprocess.Popen(
        [*CLI, "run", "--memory", "256M", "--memory-soft", "128M", "--memory-swap", "384M",
         "--numa-nodes", "0", "--", "/bin/sh", "-c", "cat /proc/self/cgroup; echo END; "
         "read -r _"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})
    assert proc.stdin and proc.stdout
    text = ""
    while "END" not in text:
        line = proc.stdout.readline()
        assert line, "run ended early"
        text += line
    try:
        assert cgroup_file(text, "memory", "memory.soft_limit_in_bytes") == str(128 * MIB)
        assert cgroup_file(text, "memory", "memory.limit_in_bytes") == str(256 * MIB)
        assert cgroup_file(text, "memory", "memory.memsw.limit_in_bytes") == str(384 * MIB)
        assert cgroup_file(text, "cpuset", "cpuset.mems") == "0"
    finally:
        proc.communicate("\n", timeout=120)
    assert proc.returncode == 0


# --- live: limit on a running sandbox -------------------------------------------------------------


def dd_in(cgroup: Path, source: Path) -> float:
    """dd's seconds for a direct read of `source` by a process in that blkio cgroup (where
    the sandbox's own processes are)."""
    proc = subprocess.run(["/bin/sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs"; exec dd '
                           f'if="{source}" of=/dev/null bs=64k iflag=direct'],
                          capture_output=True, text=True, timeout=120, check=True)
    return dd_seconds(proc.stderr)


@pytest.mark.root
@pytest.mark.libvirt
def test_a_created_sandbox_is_throttled_and_limit_changes_it_live(env: Env,
                                                                  data_file: Path) -> None:
    disk = root_disk()
    st = os.stat(disk)
    devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    name = unique_name("tun")
    env.run("create", "--memory", "256M", "--device-read-bps", f"{disk}:1M", name, "--",
            "/bin/sleep", "infinity", check=True)
    env.run("start", "--detach", name, check=True, timeout=300)
    try:
        cg = Path(f"/proc/{init_pid_of(env, name)}/cgroup").read_text()
        payload = v1_dir(cg, "blkio")  # the child its init moved into
        assert payload.name == "sandbox", payload
        assert f"{devno} {MIB}" in (payload / "blkio.throttle.read_bps_device").read_text()
        assert 3.0 <= dd_in(payload, data_file) <= 8.0  # 4 MiB at 1 MiB/s
        proc = env.run("limit", "--device-read-bps", f"{disk}:0", "--device-write-iops",
                       f"{disk}:40", "--memory-soft", "100M", "--cpuset", "1", name,
                       check=True)
        assert "applies at its next start" in proc.stderr  # LXC: libvirt pins at start
        assert "older version" not in proc.stderr  # the definition was this version's
        env.run("upgrade", "--check", name, check=True)  # and is, with the new limits
        assert devno not in (payload / "blkio.throttle.read_bps_device").read_text()
        assert f"{devno} 40" in (payload / "blkio.throttle.write_iops_device").read_text()
        assert f"{devno} 40" in \
            (payload.parent / "blkio.throttle.write_iops_device").read_text()
        assert dd_in(payload, data_file) < 1.5
        # libvirt's cgroup, above the child: v1's memory controller is hierarchical.
        memory = v1_dir(cg, "memory").parent
        assert (memory / "memory.soft_limit_in_bytes").read_text().strip() == str(100 * MIB)
        env.run("stop", name, check=True, timeout=300)
        env.run("start", "--detach", name, check=True, timeout=300)
        status = Path(f"/proc/{init_pid_of(env, name)}/status").read_text()
        assert re.search(r"Cpus_allowed_list:\s*1$", status, re.M), status
    finally:
        env.run("stop", name, timeout=300)


def init_pid_of(env: Env, name: str) -> int:
    import libvirt

    from virt_sandbox_service.runtime.enter import init_pid

    conn = libvirt.open("lxc:///")
    try:
        return init_pid(conn.lookupByName(name))
    finally:
        conn.close()


def test_live_blkio_parameters_name_only_the_changes() -> None:
    from virt_sandbox_service.config import Kind, SandboxConfig

    old = SandboxConfig(name="x", kind=Kind.GENERIC, uri="lxc:///", state_dir="/s",
                        io_throttle=("read_bytes_sec:/dev/vda:5", "write_iops_sec:/dev/vda:7"))
    new = SandboxConfig(name="x", kind=Kind.GENERIC, uri="lxc:///", state_dir="/s",
                        io_throttle=("write_iops_sec:/dev/vda:7", "read_iops_sec:/dev/vdb:9"))
    assert blkio_live_params(old, new) == {"device_read_bytes_sec": "/dev/vda,0",
                                           "device_read_iops_sec": "/dev/vdb,9"}


@pytest.mark.root
@pytest.mark.kvm
def test_a_pinned_kvm_run_has_its_qemu_threads_on_its_cpus(env: Env) -> None:
    # Every thread of the VM's qemu (the vCPU and the emulator's: 9p, the monitor) on CPU 1.
    need((os.cpu_count() or 1) >= 2, "needs two CPUs")
    import libvirt

    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        need(False, "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    proc = subprocess.Popen([*CLI, "run", "-c", "qemu:///system", "--cpuset", "1", "--",
                             "/bin/sh", "-c", "echo UP; read -r _"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})
    assert proc.stdin and proc.stdout
    try:
        assert proc.stdout.readline() == "UP\n"
        ours = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if d.name().startswith("vss-run-") and '<emulatorpin cpuset="1"/>' in
                d.XMLDesc(0).replace("'", '"')]
        assert len(ours) == 1, [d.name() for d in ours]
        pid = int(Path(f"/run/libvirt/qemu/{ours[0].name()}.pid").read_text())
        allowed = {re.search(r"Cpus_allowed_list:\s*(\S+)", t.joinpath("status").read_text())
                   .group(1) for t in Path(f"/proc/{pid}/task").iterdir()}  # type: ignore[union-attr]
        assert allowed == {"1"}, allowed
    finally:
        proc.communicate("\n", timeout=300)
        conn.close()
    assert proc.returncode == 0


# --- network bandwidth (-N ...,inbound=,outbound=) ----------------------------------------------

# The rate a limit holds is the sustained one: a limit's burst (by default as large as a
# second's average, as libvirt sets it) passes at line speed first. So each end measures bytes
# a second over the transfer's second half (steady).
def steady(s: socket.socket, half: int) -> tuple[int, float]:
    """Bytes received until EOF, and bytes a second from the one at `half` to the last."""
    import time

    n, n_half, t_half = 0, 0, 0.0
    while data := s.recv(65536):
        n += len(data)
        if not t_half and n >= half:
            t_half, n_half = time.monotonic(), n
    return n, (n - n_half) / (time.monotonic() - t_half)


RECEIVER = "import socket, sys\n" + inspect.getsource(steady) + """
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(*steady(s, int(sys.argv[3]) // 2))
"""
# sendall returns once the bytes are in the socket's buffer, and the sandbox's network goes
# with its command: a sender that exits at once loses what a limit still holds back (seen: the
# policed 2 MiB never arrived). So it waits for the host's close, which follows the last byte.
SENDER = """import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""
TRANSFER = 2 * MIB


def _serve_once(host: str, send: int, out: list[float]) -> tuple[socket.socket, threading.Thread]:
    """A host-side peer on the test bridge: sends `send` bytes, or (0) receives them and
    records their sustained rate (steady)."""
    srv = socket.create_server((host, 0))
    srv.settimeout(120)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            if send:
                conn.sendall(b"y" * send)
                return
            n, rate = steady(conn, TRANSFER // 2)
            assert n == TRANSFER, n
            out.append(rate)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


def _transfer(env: Env, net: str, subnet: int, direction: str, limit: str | None) -> float:
    """Bytes a second of one transfer of TRANSFER bytes in `direction` (of the sandbox)."""
    from .test_network import V4

    host = V4.format(subnet, 1)
    rates: list[float] = []
    srv, thread = _serve_once(host, TRANSFER if direction == "inbound" else 0, rates)
    port = str(srv.getsockname()[1])
    spec = f"source={net},address={V4.format(subnet, 20)}/24"
    spec += f",{direction}={limit}" if limit else ""
    code = RECEIVER if direction == "inbound" else SENDER
    proc = env.run("run", "-N", spec, "--", "/usr/bin/python3", "-c", code, host, port,
                   str(TRANSFER), check=True, timeout=300)
    thread.join(60)
    srv.close()
    if direction == "inbound":
        n, rate = proc.stdout.split()
        assert int(n) == TRANSFER
        return float(rate)
    assert rates, "the host received nothing"
    return rates[0]


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_a_bandwidth_limited_transfer_is_held_to_its_rate(env: Env, direction: str) -> None:
    from virt_sandbox_service import host

    from .test_network import isolated_network

    missing = host.bandwidth_missing(direction)
    if missing:  # a kernel's build options: no set-up can add them, so this is a plain skip
        pytest.skip(f"needs a kernel with {', '.join(missing)} (libvirt's tc shaping)")

    bridge = isolated_network("vssbw")
    net, subnet = next(bridge)
    try:
        free = _transfer(env, net, subnet, direction, None)
        held = _transfer(env, net, subnet, direction, "512K")
    finally:
        next(bridge, None)
    limit = 512 * 1024
    assert held <= 1.2 * limit, (direction, held)
    assert held >= 0.3 * limit, (direction, held)  # policing costs TCP some, not all
    assert free > 4 * limit, (direction, free)


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_bandwidth_the_kernel_cannot_hold_is_refused_up_front(env: Env, direction: str) -> None:
    from virt_sandbox_service import host

    missing = host.bandwidth_missing(direction)
    need(bool(missing), "this kernel has everything libvirt's tc shaping needs")
    before = env.snapshot()
    proc = env.run("create", "-N", f"source=default,address=192.0.2.9/24,{direction}=1M",
                   "bw1", "--", "/bin/true")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        f"virt-sandbox-service: error: -N ...,{direction}= cannot be enforced on this host: "
        f"its kernel lacks {', '.join(missing)} (libvirt shapes an interface with tc)")
    assert env.snapshot() == before


@pytest.mark.parametrize(("spec", "message"), [
    ("inbound=fast", "inbound average 'fast' is not a size"),
    ("outbound=1M:512K", "outbound peak '512K' in"),
    ("inbound=1M:2M:1K:1", "inbound='1M:2M:1K:1' in"),
])
def test_bad_bandwidth_values(spec: str, message: str) -> None:
    from virt_sandbox_service.errors import UserError
    from virt_sandbox_service.network import parse_network

    with pytest.raises(UserError) as e:
        parse_network(f"source=n,{spec}")
    assert message in e.value.message
    assert e.value.hint


def test_bandwidth_in_bytes_then_in_libvirts_units() -> None:
    """A spec keeps the bytes given (K, M binary, as every size here); libvirt's <bandwidth>
    gets rates in tc's kbps (1000 bytes a second: libvirt writes "<N>kbps") and the burst in
    tc's kb (1024 bytes), rounded up, so that tc holds what was asked, not 2.4% less."""
    from virt_sandbox_service.network import (
        bandwidth_element,
        parse_network,
        rates_text,
    )

    spec = parse_network("source=n,inbound=1M:2M:1500,outbound=100K")
    assert (spec.inbound, spec.outbound) == ((MIB, 2 * MIB, 1500), (100 * 1024,))
    element = bandwidth_element(spec)
    assert element is not None
    assert [dict(e.attrib) for e in element] == [
        {"average": "1049", "peak": "2098", "burst": "2"}, {"average": "103"}]
    assert rates_text(spec.inbound) == "1M:2M:1500"
    assert parse_network(spec.text) == spec  # what a config saves reads back the same


# --- limit --inbound/--outbound: an interface's rates, after create ---------------------------


def test_limit_sets_and_removes_one_interfaces_rates() -> None:
    from virt_sandbox_service.network import host_device, parse_network, set_bandwidth

    a, b = parse_network("source=lan,inbound=1M"), parse_network("source=wan")
    one = set_bandwidth("web1", (a,), "inbound", ("2M:4M:64K",))
    assert one[0].inbound == (2 * MIB, 4 * MIB, 64 * 1024) and one[0].source == "lan"
    assert set_bandwidth("web1", (a,), "inbound", ("lan=0",))[0].inbound == ()
    two = set_bandwidth("web1", (a, b), "outbound", ("wan=100K",))
    assert (two[0], two[1].outbound) == (a, (100 * 1024,))
    by_device = set_bandwidth("web1", (a, a), "outbound", (f"{host_device('web1', 1)}=1M",))
    assert (by_device[0].outbound, by_device[1].outbound) == ((), (MIB,))


@pytest.mark.parametrize(("nets", "value", "message"), [
    ((), "1M", "--inbound 1M: sandbox 'web1' has no network interface"),
    (("lan",), "dmz=1M", "--inbound dmz=1M: sandbox 'web1' has no interface 'dmz'"),
    (("lan", "wan"), "1M", "--inbound 1M: sandbox 'web1' has 2 interfaces: name one"),
    (("lan", "lan"), "lan=1M", "--inbound lan=1M: more than one interface of 'web1' is on "
                               "'lan'"),
    (("lan",), "lan=fast", "inbound average 'fast' is not a size"),
])
def test_limit_bandwidth_names_what_is_wrong(nets: tuple[str, ...], value: str,
                                             message: str) -> None:
    from virt_sandbox_service.errors import UserError
    from virt_sandbox_service.network import parse_network, set_bandwidth

    specs = tuple(parse_network(f"source={n}") for n in nets)
    with pytest.raises(UserError) as e:
        set_bandwidth("web1", specs, "inbound", (value,))
    assert e.value.message.startswith(message) or message in e.value.message, e.value.message
    assert e.value.hint
    if nets and "name one" in message:
        assert "lan (vss" in e.value.hint and "wan (vss" in e.value.hint


def test_live_interface_parameters_give_every_rate() -> None:
    from virt_sandbox_service.network import interface_params, parse_network

    spec = parse_network("source=lan,inbound=1M:2M,outbound=64K")
    assert interface_params(spec) == {
        "inbound.average": 1049, "inbound.peak": 2098, "inbound.burst": 0,
        "outbound.average": 66, "outbound.peak": 0, "outbound.burst": 0}


@pytest.mark.root
@pytest.mark.libvirt
def test_limit_bandwidth_is_checked_before_anything_changes(env: Env) -> None:
    """Each refusal leaves the sandbox's config and definition as they were: a name that is
    none of its interfaces, and (where the kernel lacks sfq or police, as here) a rate the
    host cannot hold; what it can hold is set in the definition for the next start."""
    from virt_sandbox_service import host

    from .test_network import isolated_network

    bridge = isolated_network("vssbl")
    net, subnet = next(bridge)
    name = unique_name("bwl")
    try:
        env.run("create", "-N", f"source={net},address=10.231.{subnet}.9/24", name, "--",
                "/bin/true", check=True)
        config = (env.base / "config" / "sandboxes" / f"{name}.json").read_text()
        r = env.run("limit", name, "--inbound", "nosuch=1M")
        assert r.returncode == 2
        assert r.stderr.splitlines()[0] == (
            f"virt-sandbox-service: error: --inbound nosuch=1M: sandbox '{name}' has no "
            "interface 'nosuch'")
        for direction in ("inbound", "outbound"):
            missing = host.bandwidth_missing(direction)
            r = env.run("limit", name, f"--{direction}", "1M")
            if missing:
                assert r.returncode == 2, r
                assert r.stderr.splitlines()[0] == (
                    f"virt-sandbox-service: error: --{direction} cannot be enforced on this "
                    f"host: its kernel lacks {', '.join(missing)} (libvirt shapes an "
                    "interface with tc)")
                continue
            assert r.returncode == 0, r.stderr
            assert f"{direction}({net})=1024K" in r.stdout
            config = (env.base / "config" / "sandboxes" / f"{name}.json").read_text()
        assert (env.base / "config" / "sandboxes" / f"{name}.json").read_text() == config
        assert "<bandwidth" not in _definition(name) or not host.bandwidth_missing("inbound")
    finally:
        env.run("delete", name)
        next(bridge, None)


def tc_rates(device: str) -> tuple[int | None, int | None]:
    """(inbound, outbound) bytes a second that tc holds on a host-end device: libvirt's htb
    class 1:1 and its ingress police (None where there is none). tc prints bits a second,
    1000-based."""
    import re

    def rate(argv: list[str], pattern: str) -> int | None:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        m = re.search(pattern + r" rate (\d+)([KMG]?)bit", out)
        if m is None:
            return None
        return int(m[1]) * {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}[m[2]] // 8

    return (rate(["tc", "class", "show", "dev", device], r"class htb 1:1 .*?"),
            rate(["tc", "filter", "show", "dev", device, "parent", "ffff:"], r"police \S+"))


@pytest.mark.root
@pytest.mark.libvirt
def test_limit_changes_an_lxc_sandboxs_rates_for_its_next_start(env: Env) -> None:
    """limit --inbound/--outbound on an LXC sandbox: the definition libvirt applies at the
    next start has the new rates (libvirt's LXC driver changes no interface live; the
    transfer tests above show its start holding them), 0 removes one, and nothing else
    differs."""
    from virt_sandbox_service import host

    from .test_network import isolated_network

    missing = host.bandwidth_missing("inbound") + host.bandwidth_missing("outbound")
    if missing:  # a kernel's build options, as for the transfer above
        pytest.skip(f"needs a kernel with {', '.join(missing)} (libvirt's tc shaping)")
    bridge = isolated_network("vssbr")
    net, subnet = next(bridge)
    name = unique_name("bwr")
    try:
        env.run("create", "-N", f"source={net},address=10.231.{subnet}.9/24,inbound=512K",
                name, "--", "/bin/sleep", "infinity", check=True)
        r = env.run("limit", name, "--inbound", "256K:1M:64K", "--outbound", f"{net}=128K")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{name}: inbound({net})=256K:1M:64K, outbound({net})=128K\n"
        assert _rates(name) == {"inbound": {"average": "263", "peak": "1049", "burst": "64"},
                                "outbound": {"average": "132"}}
        env.run("limit", name, "--inbound", "0", check=True)
        assert _rates(name) == {"outbound": {"average": "132"}}
        again = env.run("limit", name, "--inbound", "0", check=True)  # the rate it has
        assert again.stdout == f"{name}: already as given; nothing changed\n"
        env.run("upgrade", "--check", name, check=True)
    finally:
        env.run("delete", name, timeout=120)
        next(bridge, None)


def _rates(name: str) -> dict[str, dict[str, str]]:
    bandwidth = etree.fromstring(_definition(name).encode()).find("devices/interface/bandwidth")
    return {} if bandwidth is None else {str(e.tag): dict(e.attrib) for e in bandwidth}


def _definition(name: str) -> str:
    import libvirt

    conn = libvirt.open("lxc:///")
    try:
        return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()


@pytest.mark.root
@pytest.mark.kvm
def test_limit_pins_a_running_kvm_sandbox_live(env: Env) -> None:
    # Live through libvirt (pinVcpuFlags, pinEmulator, setMemoryParameters, blkiotune):
    # every qemu thread on CPU 1 at once, the soft limit set, the definition in step.
    need((os.cpu_count() or 1) >= 2, "needs two CPUs")
    import libvirt

    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        need(False, "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    name = unique_name("ktun")
    env.run("create", "-c", "qemu:///system", name, "--", "/bin/sleep", "infinity",
            check=True, timeout=600)
    env.run("start", "--detach", name, check=True, timeout=600)
    try:
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        env.run("limit", "--cpuset", "1", "--memory-soft", "100M", "--device-read-bps",
                f"{root_disk()}:2M", name, check=True)
        allowed = {re.findall(r"Cpus_allowed_list:\s*(\S+)", (t / "status").read_text())[0]
                   for t in Path(f"/proc/{pid}/task").iterdir()}
        assert allowed == {"1"}, allowed
        params = conn.lookupByName(name).memoryParameters(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert params["soft_limit"] == 100 * 1024
        env.run("upgrade", "--check", name, check=True)
    finally:
        env.run("stop", name, timeout=300)
        conn.close()


@pytest.mark.root
@pytest.mark.kvm
def test_limit_changes_a_running_kvm_sandboxs_rates_live(env: Env) -> None:
    """On KVM libvirt re-runs its tc on the tap at once (setInterfaceParameters): the new
    rates hold on the running sandbox and are in its definition for the next start. Run in
    the AppArmor test host (this machine's kernel lacks sfq and police), where it also shows
    a KVM sandbox starting with its qemu under libvirt's per-domain profile."""
    import libvirt

    from virt_sandbox_service import host
    from virt_sandbox_service.network import host_device

    from .test_network import isolated_network

    missing = host.bandwidth_missing("inbound") + host.bandwidth_missing("outbound")
    if missing:  # a kernel's build options, as for the transfer above
        pytest.skip(f"needs a kernel with {', '.join(missing)} (libvirt's tc shaping)")
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError:
        need(False, "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    bridge = isolated_network("vssbk")
    net, subnet = next(bridge)
    name = unique_name("bwk")
    kb = 1000  # libvirt writes its rates as tc kbps: 1000 bytes a second
    try:
        env.run("create", "-c", "qemu:///system", "-N",
                f"source={net},address=10.231.{subnet}.9/24,inbound=512K", name, "--",
                "/bin/sleep", "infinity", check=True, timeout=600)
        env.run("start", "--detach", name, check=True, timeout=600)
        if host.apparmor_enabled():  # the AppArmor test host: qemu under libvirt's profile
            pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
            label = Path(f"/proc/{pid}/attr/current").read_text().strip()
            assert re.fullmatch(r"libvirt-[0-9a-f-]{36} \(enforce\)", label), label
        assert tc_rates(host_device(name, 0)) == (525 * kb, None)  # 512K, and no more
        r = env.run("limit", name, "--inbound", "256K", "--outbound", "128K", timeout=300)
        assert r.returncode == 0, r.stderr
        assert tc_rates(host_device(name, 0)) == (263 * kb, 132 * kb)
        env.run("upgrade", "--check", name, check=True)
    finally:
        env.run("delete", "--force", name, timeout=300)
        next(bridge, None)
