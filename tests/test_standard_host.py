"""On a standard host: systemd as PID 1, pure cgroup v2, libvirtd started by systemd, an LSM.

These run inside the standard test host (tests/testhost.py boots it, tests/test_testhost.py runs
them there); on a machine whose PID 1 is not systemd they skip, naming that tier. The harness
sets VSS_TESTHOST_LSM to the security module it booted the guest with ("selinux" or
"apparmor"), so a guest that silently came up without it fails instead of passing vacuously.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from .conftest import Env, tool_env, unique_name

pytestmark = [pytest.mark.standard_host, pytest.mark.root, pytest.mark.libvirt]

LSM = os.environ.get("VSS_TESTHOST_LSM", "")
APACHE = ("-u", "apache2.service")
CURL = ("curl", "-sS", "-m", "10", "http://localhost/")

START = ("start", "--detach")


@pytest.fixture(scope="module")
def menv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from tool_env(tmp_path_factory.mktemp("std") / "vss")


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    c = libvirt.open("lxc:///")
    yield c
    c.close()


def init_pid(conn: libvirt.virConnect, name: str) -> int:
    """The sandbox's init: the one child of its libvirt_lxc controller (PID = domain ID)."""
    controller = conn.lookupByName(name).ID()
    kids: set[int] = set()
    for task in Path(f"/proc/{controller}/task").iterdir():
        kids.update(int(p) for p in (task / "children").read_text().split())
    assert len(kids) == 1, kids
    return kids.pop()


def started(menv: Env, *create: str) -> str:
    name = unique_name("std")
    menv.run("create", *create[:-1] if create and create[-1] == "--" else create, name,
             check=True, timeout=300)
    menv.run(*START, name, check=True, timeout=300)
    return name


def attr(pid: int) -> str:
    return Path(f"/proc/{pid}/attr/current").read_text().strip("\0\n ")


# --- the host is what it says ---------------------------------------------------------------


def test_this_is_a_standard_host() -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    cgroup_types = {line.split()[2] for line in mounts if "cgroup" in line.split()[2]}
    assert cgroup_types == {"cgroup2"}, f"not pure cgroup v2: {cgroup_types}"
    # Debian's libvirtd is socket-activated and exits when idle (--timeout 120).
    r = subprocess.run(["systemctl", "is-active", "libvirtd.service", "libvirtd.socket"],
                       capture_output=True, text=True, check=False)
    assert "active" in r.stdout.split(), r.stdout
    assert LSM, "VSS_TESTHOST_LSM is not set: run through tests/test_testhost.py"
    assert LSM in Path("/sys/kernel/security/lsm").read_text().split(",")
    if LSM == "selinux":
        assert Path("/sys/fs/selinux/enforce").read_text().strip() == "1"


def test_doctor_sees_a_host_that_needs_no_workaround(menv: Env) -> None:
    r = menv.run("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cgroup" in r.stdout


# --- cgroup v2 ------------------------------------------------------------------------------


def test_tasks_limit_holds_on_cgroup_v2(menv: Env, conn: libvirt.virConnect) -> None:
    name = unique_name("tasks")
    menv.run("create", "--tasks", "40", name, "--", "/bin/sleep", "infinity", check=True)
    menv.run(*START, name, check=True, timeout=120)
    try:
        cg = Path("/sys/fs/cgroup") / Path(f"/proc/{init_pid(conn, name)}/cgroup").read_text()\
            .strip().split("::", 1)[1].lstrip("/")
        limits = [(d / "pids.max").read_text().strip() for d in (cg, *cg.parents)
                  if (d / "pids.max").exists()]
        assert "40" in limits, f"no pids.max of 40 above {cg}: {limits}"
        # And it holds: a fork bomb inside stops at the limit instead of taking the host.
        r = menv.run("execute", name, "--", "/bin/sh", "-c",
                     "for i in $(seq 60); do sleep 30 & done 2>&1; wait", timeout=120)
        assert "fork" in (r.stdout + r.stderr).lower() or r.returncode != 0, r
    finally:
        menv.run("stop", name, timeout=120)


WRITE_LIMIT = ("for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/*/memory.max; do "
               "[ -f $f ] && echo 2147483648 > $f && echo WROTE $f; done; true")


def test_the_memory_limit_sits_above_the_sandboxs_cgroup_namespace(
        menv: Env, conn: libvirt.virConnect, tmp_path: Path) -> None:
    """The attack: root in a cgroup namespace whose root cgroup holds the memory limit
    mounts cgroup2 and raises it (this kernel's nsdelegate does not refuse the write, though
    cgroup-v2.rst says it should). The layer: the init moves into a child before unsharing,
    so the limit libvirt set is above the root, out of sight; the same write from the
    sandbox (its unit's cgroup, or `execute`) reaches no memory.max, and the limit stays."""
    bare = Path("/sys/fs/cgroup") / unique_name("vss-nsroot-")
    bare.mkdir()
    try:
        (bare / "memory.max").write_text("104857600\n")
        mnt = tmp_path / "cg"
        mnt.mkdir()
        script = (f"echo $$ > {bare}/cgroup.procs && exec unshare -C -m sh -c "
                  f"'mount -t cgroup2 none {mnt} && echo 2147483648 > {mnt}/memory.max'")
        subprocess.run(["sh", "-c", script], check=True, timeout=30)
        assert (bare / "memory.max").read_text().strip() == "2147483648"  # the attack works
    finally:
        bare.rmdir()
    name = unique_name("mem")
    menv.run("create", "--memory", "300M", *APACHE, name, check=True)
    menv.run(*START, name, check=True, timeout=120)
    try:
        cg = Path("/sys/fs/cgroup") / Path(f"/proc/{init_pid(conn, name)}/cgroup").read_text()\
            .strip().split("::", 1)[1].lstrip("/")
        holder = next(d for d in (cg, *cg.parents) if (d / "memory.max").exists()
                      and (d / "memory.max").read_text().strip() != "max")
        assert holder.name == "libvirt" and cg.is_relative_to(holder) and cg != holder, (cg, holder)
        # Its systemd mounted the namespace's cgroup2 at /sys/fs/cgroup.
        r = menv.run("execute", name, "--", "/bin/sh", "-c",
                     f"grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts && {WRITE_LIMIT}",
                     timeout=120)
        assert r.returncode == 0 and "WROTE" not in r.stdout, r
        assert (holder / "memory.max").read_text().strip() == str(300 * 1024 * 1024)
    finally:
        menv.run("stop", name, timeout=120)


# --- user namespaces ------------------------------------------------------------------------


def _sys_mounts() -> list[str]:
    from virt_sandbox_service import host

    return list(host.cgroup_layout().sys_mounts)


def test_userns_is_refused_where_libvirt_fails_and_the_raw_failure_is_libvirts(
        menv: Env, conn: libvirt.virConnect) -> None:
    """A finding, not a skip: on a standard systemd host libvirt 9.0 cannot start ANY
    user-namespaced LXC domain whose root is the host's. Its container /sys hides the host's
    mounts below /sys (tracefs, debugfs, configfs, fusectl, mounted by systemd, and cgroup2
    itself: with all the others unmounted, /sys/fs/cgroup fails the same way), and
    lxcContainerSetReadOnly then fails to remount them. create refuses --userns up front,
    naming them; a hand-made domain shows the failure is libvirt's own."""
    hidden = _sys_mounts()
    assert hidden, "a systemd host mounts tracefs/debugfs below /sys"
    name = unique_name("uns")
    r = menv.run("create", "--userns", name, "--", "/bin/true")
    assert r.returncode != 0 and "user-namespaced" in r.stderr and hidden[0] in r.stderr, r
    assert name not in menv.snapshot()["domains"] and not menv.state(name).exists()
    xml = f"""<domain type='lxc'><name>{name}raw</name><memory>65536</memory>
      <os><type>exe</type><init>/bin/true</init></os><features><privnet/></features>
      <idmap><uid start='0' target='300000' count='65536'/>
             <gid start='0' target='300000' count='65536'/></idmap>
      <devices><filesystem type='mount'><source dir='/'/><target dir='/'/><readonly/>
      </filesystem><console type='pty'/></devices></domain>"""
    with pytest.raises(libvirt.libvirtError) as e:
        conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
    assert "readonly" in str(e.value) and any(m in str(e.value) for m in hidden), e.value


# --- SELinux --------------------------------------------------------------------------------

selinux = pytest.mark.skipif(LSM != "selinux", reason="the SELinux guest runs these")


@selinux
def test_doctor_fix_loads_the_policy_module_and_points_lxc_contexts(menv: Env) -> None:
    """scripts/setup.sh ran `doctor --fix` in this guest: the module is loaded, Debian's
    lxc_contexts (container_t, a type its policy lacks) now names the module's types, the
    original is kept, and doctor has nothing left to fix."""
    mods = subprocess.run(["semodule", "-l"], capture_output=True, text=True, check=True).stdout
    assert "virt_sandbox_service" in mods.split()
    from virt_sandbox_service.apply import selinux_policy as sp

    entries = sp.lxc_context_entries(sp.lxc_contexts_path().read_text())
    assert ":svirt_lxc_net_t:" in entries["process"] and sp.context_valid(entries["process"])
    assert ":svirt_sandbox_file_t:" in entries["file"] and sp.context_valid(entries["file"])
    assert "container_t" in sp.lxc_contexts_path().with_name("lxc_contexts.vss-orig").read_text()
    assert sp.problems() == []
    r = menv.run("doctor")
    assert "BAD selinux" not in r.stdout, r.stdout


@dataclass(frozen=True)
class Pair:
    """Two apache2 sandboxes at their own MCS pairs, sharing a host directory (as podman's
    :z would: the sandboxes' file type at s0, no category), started once for the SELinux
    tests below: each start takes 30-40 s under TCG."""

    a: str
    b: str
    shared: Path


@pytest.fixture(scope="module")
def pair(menv: Env) -> Iterator[Pair]:
    shared = Path("/srv") / unique_name("shared")
    shared.mkdir(mode=0o777)
    os.setxattr(shared, "security.selinux", b"system_u:object_r:svirt_sandbox_file_t:s0\0")
    made: list[str] = []
    try:
        # At the same path inside: a host-bind target must exist on the read-only host root.
        mount = ("-m", f"host-bind:{shared}={shared}")
        for _ in range(2):
            made.append(started(menv, *mount, *APACHE))
        yield Pair(made[0], made[1], shared)
    finally:
        for name in made:
            menv.run("stop", name, timeout=120)
        subprocess.run(["rm", "-rf", str(shared)], check=False)


@selinux
def test_policy_module_types_run_the_sandboxes(pair: Pair, conn: libvirt.virConnect) -> None:
    label = attr(init_pid(conn, pair.a))
    assert ":svirt_lxc_net_t:s0:c" in label, label


@selinux
def test_two_sandboxes_run_with_distinct_mcs_pairs(menv: Env, pair: Pair,
                                                   conn: libvirt.virConnect) -> None:
    a, b = pair.a, pair.b
    la, lb = (attr(init_pid(conn, n)) for n in (a, b))
    cats = [label.split(":", 4)[4] for label in (la, lb)]
    assert cats[0] != cats[1], (la, lb)
    ps = subprocess.run(["ps", "-eZ"], capture_output=True, text=True, check=True).stdout
    for n, cat in zip((a, b), cats, strict=True):
        assert any(f"svirt_lxc_net_t:s0:{cat} " in line and "apache2" in line
                   for line in ps.splitlines()), f"no apache2 of {n} at {cat}:\n{ps}"
        ctx = os.getxattr(menv.state(n) / "var", "security.selinux").decode().strip("\0")
        assert ctx.endswith(f":{cat}") and "svirt_sandbox_file_t" in ctx, ctx
    for n in (a, b):
        r = menv.run("execute", n, "--", *CURL)
        assert r.returncode == 0 and "html" in r.stdout.lower(), r


@selinux
def test_run_is_mcs_confined_and_its_stdio_crosses_the_mcs_boundary(menv: Env) -> None:
    """A one-shot run under SELinux: its command runs as svirt_lxc_net_t at a category pair of
    its own, and gets our stdin, stdout and stderr (relayed through sockets at s0: libvirtd
    may not carry an administrator's pipes, and the sandbox may not write them) and our exit
    status back, the streams apart. Without the relay libvirt refused the pipes outright."""
    script = ("read line; echo \"got $line\"; cat /proc/self/attr/current; echo; "
              "echo to-stderr >&2; exit 7")
    proc = menv.run("run", "--", "/bin/sh", "-c", script, input="hello\n", timeout=300)
    assert proc.returncode == 7, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "got hello"
    label = out[1].strip("\0 ")
    assert ":svirt_lxc_net_t:s0:c" in label, label
    assert proc.stderr == "to-stderr\n"


@selinux
def test_a_new_pair_avoids_the_one_a_running_run_holds(menv: Env) -> None:
    """A run's category pair is in no config (it is gone with its command), so a create
    reading only the configs could give a new sandbox the very pair a run holds at that
    moment, and each could then reach the other's files. The pair is chosen among the
    running domains' too: given a random source whose first draw is the run's pair, the
    configs-only choice takes it and the real one draws again."""
    from virt_sandbox_service import labels, registry
    from virt_sandbox_service.config import Paths, all_configs

    from .conftest import CLI, ROOT

    script = "cat /proc/self/attr/current; echo; read _"
    env = {**os.environ, **menv.vars, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([*CLI, "run", "--", "/bin/sh", "-c", script], env=env, cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None and run.stdin is not None
        label = run.stdout.readline().strip("\0\n ")
        held = labels.parse_label(label)[1]
        assert held is not None, label
        first, other = [held.c1, held.c2], [held.c1, held.c2 + 1]

        class FirstTheRunsPair(random.Random):
            def __init__(self) -> None:
                super().__init__()
                self.draws = [first, other]

            def sample(self, population: Sequence[Any], k: int, *,
                       counts: Iterable[int] | None = None) -> list[Any]:
                return self.draws.pop(0)

        paths = Paths.from_env(env)
        configs_only = [c.security_label for c in all_configs(paths)]
        assert labels.allocate(configs_only, FirstTheRunsPair()) == held
        with registry.config_lock(paths):
            in_use = registry.labels_in_use(paths)
        assert label in in_use, in_use
        assert labels.allocate(in_use, FirstTheRunsPair()) != held
        run.stdin.write("done\n")
        run.stdin.close()
        assert run.wait(timeout=120) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


@selinux
def test_kvm_is_refused_up_front_where_selinux_would_stop_it(menv: Env) -> None:
    """qemu (svirt_t) can neither share the host's root over 9p nor bind a sandbox's channels
    under enforcing SELinux (both seen here; in permissive mode the same sandboxes run): one
    line before anything is made, rather than libvirt's error from half-way."""
    before = menv.snapshot()
    for args in (("run", "-c", "qemu:///system", "--", "/bin/true"),
                 ("create", "-c", "qemu:///system", unique_name("kvmsel"), "--", "/bin/true")):
        r = menv.run(*args)
        assert r.returncode != 0
        assert r.stderr.splitlines()[0].startswith(
            "virt-sandbox-service: error: KVM sandboxes do not run on an SELinux-enforcing "
            "host yet"), r.stderr
        assert "-c lxc:///" in r.stderr
    assert menv.snapshot() == before


@selinux
def test_execute_enters_the_sandboxs_label(menv: Env, pair: Pair,
                                           conn: libvirt.virConnect) -> None:
    want = attr(init_pid(conn, pair.a))
    r = menv.run("execute", pair.a, "--", "cat", "/proc/self/attr/current")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip("\0\n ") == want


@selinux
def test_connect_enters_the_sandboxs_label(menv: Env, pair: Pair,
                                           conn: libvirt.virConnect) -> None:
    """A login shell from `connect` runs with the sandbox's label, on a terminal of the
    sandbox's own, and gets its pty master back to the caller across MCS."""
    from .test_connect import terminal

    want = attr(init_pid(conn, pair.a))
    with terminal(menv, "connect", pair.a) as t:
        t.expect(r"Escape character is \^\]")
        t.send("echo \"L<$(tr -d '\\000' </proc/self/attr/current)>\"; tty\r")
        got, tty = t.expect(r"L<(system_u:[^>\r\n]+)>\r\n([^\r\n]*)\r\n")
        t.send("exit 3\r")
        assert t.wait() == 3
    assert got == want
    assert tty.startswith("/dev/pts/"), tty


@selinux
def test_mcs_denies_another_sandboxs_file_that_permissions_allow(
        menv: Env, pair: Pair) -> None:
    """A directory shared into two sandboxes: what one writes there (mode 0666) carries its
    category, and root in the other can neither read nor write it. The same file is readable
    by root outside, so the refusal is MCS's, and the kernel logs an AVC for it."""
    w1, w2, shared = pair.a, pair.b, pair.shared
    r = menv.run("execute", w2, "--", "/bin/sh", "-c",
                 f"umask 0; echo secret-of-w2 > {shared}/f; chmod 666 {shared}/f")
    assert r.returncode == 0, r.stderr
    assert (shared / "f").read_text().strip() == "secret-of-w2"  # DAC: readable
    since = time.strftime("%H:%M:%S")
    r = menv.run("execute", w1, "--", "cat", f"{shared}/f")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = menv.run("execute", w1, "--", "/bin/sh", "-c", f"echo x >> {shared}/f")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    avc = subprocess.run(["ausearch", "-m", "avc", "-ts", since, "-c", "cat"],
                         capture_output=True, text=True, check=False).stdout
    assert "denied" in avc and "svirt_lxc_net_t" in avc, avc


# --- AppArmor -------------------------------------------------------------------------------

apparmor = pytest.mark.skipif(LSM != "apparmor", reason="the AppArmor guest runs these")


@apparmor
def test_lxc_domains_get_libvirts_apparmor_profile(menv: Env, conn: libvirt.virConnect) -> None:
    name = started(menv, *APACHE)
    try:
        dom = conn.lookupByName(name)
        uuid = dom.UUIDString()
        label = attr(init_pid(conn, name))
        assert label == f"libvirt-{uuid} (enforce)", label
        r = menv.run("execute", name, "--", *CURL)
        assert r.returncode == 0 and "html" in r.stdout.lower(), r
    finally:
        menv.run("stop", name, timeout=120)


# --- systemd and libvirtd -------------------------------------------------------------------


def test_a_sandbox_survives_a_libvirtd_restart(menv: Env, conn: libvirt.virConnect) -> None:
    name = started(menv, *APACHE)
    try:
        before = init_pid(conn, name)
        subprocess.run(["systemctl", "restart", "libvirtd.service"], check=True, timeout=120)
        c = libvirt.open("lxc:///")
        try:
            assert c.lookupByName(name).isActive()
            assert init_pid(c, name) == before
        finally:
            c.close()
        r = menv.run("execute", name, "--", *CURL)
        assert r.returncode == 0, r.stderr
    finally:
        r = menv.run("stop", name, timeout=120)
        assert r.returncode == 0, r.stderr
