"""Confinement from inside running sandboxes: limits the kernel enforces and the sandbox
cannot loosen, capabilities, and what a sandbox cannot see."""

from __future__ import annotations

import json
import re
from pathlib import Path

import libvirt
import pytest

from virt_sandbox_service import host
from virt_sandbox_service.limits import bounding_set, caps_from_mask
from virt_sandbox_service.plantypes import GENERATOR_DIRS, GENERATOR_PATH
from virt_sandbox_service.runtime.enter import init_pid

from .conftest import Env, need, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
ALLOC = "/usr/bin/python3 -c 'x = bytearray(200 * 1024 * 1024); print(\"survived\")'"


def cgroup_dir(controller: str, name: str) -> Path:
    dom = libvirt.open("lxc:///").lookupByName(name)
    return Path(f"/sys/fs/cgroup/{controller}/machine/lxc-{dom.ID()}-{name}.libvirt-lxc")


def test_memory_limit_is_enforced_by_the_kernel(env: Env) -> None:
    name = unique_name("oom")
    env.run("create", "--memory", "64M", name, "--", "/bin/sh", "-c", ALLOC, check=True)
    proc = env.run("start", name, timeout=60)
    assert proc.returncode == 137, proc.stdout + proc.stderr  # SIGKILL by the OOM killer
    assert "survived" not in proc.stdout


# The cgroup layer alone: with the mount calls and CAP_SYS_ADMIN given back, the sandbox can
# mount a hierarchy and write what it sees as its limit, and the limit still holds.
MOUNT_BACK = ("--cap-add", "sys_admin", "--syscall-allow", "@mount")


@pytest.mark.parametrize("given_back", [(), MOUNT_BACK], ids=["confined", "cgroups-alone"])
def test_sandbox_cannot_raise_its_own_memory_limit(env: Env, given_back: tuple[str, ...]
                                                   ) -> None:
    name = unique_name("raise")
    script = ("mount -t cgroup -o memory none /mnt && "
              "echo 999999999999 > /mnt/memory.limit_in_bytes && echo LIMIT-RAISED; " + ALLOC)
    env.run("create", *given_back, "--memory", "64M", name, "--", "/bin/sh", "-c", script,
            check=True)
    proc = env.run("start", name, timeout=60)
    # Whatever it writes lands on its own child cgroup; the limit on the parent holds.
    assert proc.returncode == 137, proc.stdout + proc.stderr
    assert "survived" not in proc.stdout
    # A line of its own: the sandbox's name, printed by start, may contain any word.
    assert ("LIMIT-RAISED" in proc.stdout.splitlines()) == bool(given_back), proc.stdout


def test_limits_applied_and_changed_live(env: Env) -> None:
    name = unique_name("lim")
    env.run("create", "-u", "apache2.service", "--memory", "256M", "--cpu-weight", "512",
            "--cpu-quota", "50", name, check=True)
    env.run("start", "--detach", name, check=True)
    mem, cpu = cgroup_dir("memory", name), cgroup_dir("cpu", name)
    assert int((mem / "memory.limit_in_bytes").read_text()) == 256 * 1024**2
    assert int((cpu / "cpu.shares").read_text()) == 512
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50000
    env.run("limit", name, "--memory", "300M", "--cpu-quota", "80", check=True)
    assert int((mem / "memory.limit_in_bytes").read_text()) == 300 * 1024**2
    again = env.run("limit", name, "--memory", "300M", check=True)
    assert again.stdout == f"{name}: already as given; nothing changed\n"
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 80000
    cfg = json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())
    assert (cfg["memory"], cfg["cpu_quota"]) == (300 * 1024**2, 80)
    # ... and for the next start: the persistent definition changed too.
    env.run("stop", name, check=True)
    env.run("start", "--detach", name, check=True)
    assert int((cgroup_dir("memory", name) / "memory.limit_in_bytes").read_text()) \
        == 300 * 1024**2
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert info["limits"]["cpu_quota_percent"] == 80


def test_blkio_weight_enforced_or_refused_up_front(env: Env) -> None:
    """libvirt writes the weight into the sandbox's blkio cgroup at start; a kernel without
    a weight policy (BFQ, io.cost) has nowhere to hold it, and then create, run and limit
    refuse it before changing anything, instead of a sandbox that cannot start."""
    name = unique_name("blk")
    if host.blkio_weight_supported():
        env.run("create", "--blkio-weight", "300", name, "--", "/bin/sleep", "30", check=True)
        env.run("start", "--detach", name, check=True)
        weights = [p for f in host.BLKIO_WEIGHT_FILES
                   if (p := cgroup_dir("blkio", name) / f).exists()]
        assert weights and "300" in weights[0].read_text()
        env.run("stop", name, check=True)
        return
    before = env.snapshot()
    for args in (("create", "--blkio-weight", "300", name, "--", "/bin/true"),
                 ("run", "--blkio-weight", "300", "--", "/bin/true")):
        proc = env.run(*args)
        assert proc.returncode != 0
        assert "--blkio-weight cannot be enforced on this host" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert env.snapshot() == before
    env.run("create", name, "--", "/bin/true", check=True)
    proc = env.run("limit", name, "--blkio-weight", "300")
    assert proc.returncode != 0 and "cannot be enforced" in proc.stderr
    cfg = json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())
    assert cfg["blkio_weight"] is None


def test_capabilities_dropped_for_init_and_execute(env: Env) -> None:
    name = unique_name("caps")
    env.run("create", "-u", "apache2.service", "--cap-drop", "net_raw", name, check=True)
    env.run("start", "--detach", name, check=True)
    dom = libvirt.open("lxc:///").lookupByName(name)
    init_caps = set(caps_from_mask(bounding_set(init_pid(dom))))
    # The sandbox's systemd runs confined (confine.py): no sys_admin, no dac_read_search.
    assert not init_caps & {"sys_module", "sys_rawio", "sys_time", "net_raw", "sys_admin",
                            "dac_read_search", "sys_ptrace"}
    assert {"net_bind_service", "setuid", "chown"} <= init_caps
    out = env.run("execute", name, "--", "grep", "CapBnd", "/proc/self/status",
                  check=True).stdout
    executed = set(caps_from_mask(int(out.split()[1], 16)))
    assert executed == init_caps  # execute gets no more than the sandbox itself
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert "sys_module" in info["capabilities"]["dropped"]


def test_what_a_sandbox_cannot_see(env: Env) -> None:
    a, b = unique_name("seea"), unique_name("seeb")
    for n in (a, b):
        env.run("create", "-u", "apache2.service", n, check=True)
        env.run("start", "--detach", n, check=True)
    (env.state(b) / "var" / "lib" / "apache2" / "secret-of-b").write_text("b\n")
    script = (f"ls {env.base}/state 2>&1; find / -xdev -name secret-of-b 2>/dev/null | wc -l; "
              "ls /sys/class/net; ls /proc | grep -c '^[0-9]'; "
              "touch /usr/probe 2>&1; cat /proc/1/comm; "
              "ls -d /run/systemd/generator* 2>/dev/null | wc -l; "
              "tr '\\0' '\\n' < /proc/1/environ | grep ^SYSTEMD_GENERATOR_PATH=; "
              "ls -A /run/.vss-generators 2>&1; "
              "cat /proc/$(systemctl show -P MainPID apache2.service)/environ | tr '\\0' '\\n'"
              " | grep -c ^SYSTEMD_GENERATOR_PATH= || true")
    out = env.run("execute", a, "--", "sh", "-c", script).stdout.splitlines()
    assert "No such file or directory" in out[0]  # the host's state dirs: not there
    assert out[1] == "0"  # nothing of sandbox b
    assert out[2] == "lo"  # no network but loopback
    assert int(out[3]) < 30  # its own processes only
    assert re.search("Read-only file system", out[4])
    assert out[5] == "systemd"
    # No generator of the host made units for it (fstab's mounts, gettys, other packages'
    # instances): its systemd searches only its own generator path, where apache2's
    # packages put none; the setting is its systemd's, not passed to the service.
    host_generators = sorted({p.name for d in GENERATOR_DIRS if Path(d).is_dir()
                              for p in Path(d).iterdir()})
    assert host_generators  # systemd's own at least: the path is what keeps them out
    assert out[6] == "0"
    assert out[7] == f"SYSTEMD_GENERATOR_PATH={GENERATOR_PATH}"
    assert "No such file or directory" in out[8]
    assert out[9] == "0"


def test_userns_refused_cleanly_or_maps_root(env: Env) -> None:
    """Where libvirt cannot start user-namespaced containers (this hybrid layout), --userns is
    refused before any change; elsewhere, a file the sandbox makes is owned by its range."""
    from virt_sandbox_service import host

    name = unique_name("uns")
    problem = host.cgroup_layout().userns_problem
    before = env.snapshot()
    proc = env.run("create", "--userns", name, "--", "/bin/sh", "-c", "touch /var/tmp/made")
    if problem:
        assert proc.returncode == 2 and "--userns is not possible" in proc.stderr
        assert env.snapshot() == before
        return
    assert proc.returncode == 0, proc.stderr
    assert env.run("start", name, timeout=60).returncode == 0
    cfg = json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())
    made = env.state(name) / "var" / "tmp" / "made"
    assert made.stat().st_uid == cfg["id_base"] != 0


# Start 80 sleepers; count those that started. Under --tasks 48 the kernel refuses the rest.
FORKS = ("/usr/bin/python3 -c '\n"
         "import os, time\n"
         "n = 0\n"
         "for _ in range(80):\n"
         "    try:\n"
         "        if os.fork() == 0:\n"
         "            null = os.open(\"/dev/null\", os.O_RDWR)\n"
         "            for fd in (0, 1, 2):\n"
         "                os.dup2(null, fd)\n"
         "            time.sleep(30)\n"
         "            os._exit(0)\n"
         "        n += 1\n"
         "    except OSError:\n"
         "        pass\n"
         "print(\"started=%d\" % n, flush=True)\n"
         "os._exit(0)'")


def _started(out: str) -> int:
    return int(re.search(r"started=(\d+)", out).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("given_back", [(), MOUNT_BACK], ids=["confined", "cgroups-alone"])
def test_tasks_limit_is_enforced_and_cannot_be_raised(env: Env, given_back: tuple[str, ...]
                                                      ) -> None:
    name = unique_name("pids")
    # Given the mount back, the sandbox mounts the pids hierarchy itself and raises what it
    # sees as its limit: that is its own namespace root, below the cgroup holding pids.max.
    script = ("mount -t cgroup -o pids none /mnt && echo max > /mnt/pids.max && "
              "echo LIMIT-RAISED; "
              + FORKS)
    env.run("create", *given_back, "--tasks", "48", name, "--", "/bin/sh", "-c", script,
            check=True)
    proc = env.run("start", name, timeout=90)
    assert ("LIMIT-RAISED" in proc.stdout.splitlines()) == bool(given_back), \
        proc.stdout + proc.stderr
    assert 20 < _started(proc.stdout) < 48, proc.stdout


def test_tasks_limit_changed_live(env: Env) -> None:
    name = unique_name("tsk")
    env.run("create", "-u", "apache2.service", "--tasks", "200", name, check=True)
    env.run("start", "--detach", name, check=True)
    pids = cgroup_dir("pids", name)
    assert (pids / "pids.max").read_text().strip() == "200"
    env.run("limit", name, "--tasks", "64", check=True)
    assert (pids / "pids.max").read_text().strip() == "64"
    out = env.run("execute", name, "--", "/bin/sh", "-c", FORKS, timeout=90).stdout
    assert _started(out) < 64
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert info["limits"]["tasks"] == 64
    env.run("stop", name, check=True)  # the next start takes the new value from the domain
    env.run("start", "--detach", name, check=True)
    assert (cgroup_dir("pids", name) / "pids.max").read_text().strip() == "64"


def test_run_sees_no_cgroup_tree_and_cannot_mount_one(env: Env) -> None:
    """libvirt mounts the roots of the host's v1 hierarchies in a container, read-write: a
    run's command would reach every other cgroup's limits. Its init unmounts them, and the
    command, confined, cannot mount them again; its own memory limit holds."""
    script = ("ls /sys/fs/cgroup | wc -l; "
              "mount -t cgroup -o memory none /mnt && echo mounted; " + ALLOC)
    proc = env.run("run", "--memory", "64M", "--", "/bin/sh", "-c", script, timeout=60)
    assert proc.stdout.splitlines()[0] == "0", proc.stdout + proc.stderr
    assert "mounted" not in proc.stdout and "survived" not in proc.stdout
    assert proc.returncode == 137


def test_a_time_daemon_fails_naming_its_capability_and_works_given_it(env: Env) -> None:
    """chrony's unit says ConditionCapability=CAP_SYS_TIME, which a sandbox does not give: it
    is named at create, and the start fails with one line naming it and the option (instead
    of a silently skipped unit). With --cap-add sys_time it runs and answers its client."""
    need(Path("/lib/systemd/system/chrony.service").exists(),
         "chrony is installed by scripts/test-daemons.sh")
    name = unique_name("ntp")
    made = env.run("create", "-u", "chrony.service", name, check=True)
    assert "chrony.service needs CAP_SYS_TIME (ConditionCapability=)" in made.stderr
    proc = env.run("start", "--detach", name, timeout=90)
    assert proc.returncode != 0
    assert "chrony.service needs CAP_SYS_TIME" in proc.stderr, proc.stderr
    assert "hint: give it with --cap-add sys_time" in proc.stderr
    assert "Traceback" not in proc.stderr
    env.run("delete", "--force", name, check=True)
    env.run("create", "--cap-add", "sys_time", "-u", "chrony.service", name, check=True)
    env.run("start", "--detach", name, check=True, timeout=90)
    out = env.run("execute", name, "--", "chronyc", "-n", "tracking", check=True).stdout
    assert "Reference ID" in out
    env.run("stop", name, check=True)
