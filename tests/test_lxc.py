"""LXC sandboxes end to end, against the real libvirtd and the host's real apache2."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .conftest import Env, domain_names, need, unique_name
from .test_run import SIGNALS_SCRIPT, assert_default_signals

pytestmark = [pytest.mark.root, pytest.mark.libvirt]


def create_apache(env: Env, name: str, page: str) -> None:
    env.run("create", "-u", "apache2.service", name, check=True)
    html = env.state(name) / "var" / "www" / "html"
    (html / "index.html").write_text(page)


def http_inside(env: Env, name: str) -> str:
    proc = env.run("execute", name, "--", "curl", "-sS", "--max-time", "5", "http://localhost/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_two_apache_sandboxes_serve_their_own_content(env: Env) -> None:
    a, b = unique_name("web"), unique_name("web")
    create_apache(env, a, f"<h1>{a}</h1>\n")
    create_apache(env, b, f"<h1>{b}</h1>\n")
    env.run("start", "--detach", a, check=True)
    env.run("start", "--detach", b, check=True)
    # start --detach returns once the sandbox's systemd is READY: apache2 answers at once.
    assert http_inside(env, a) == f"<h1>{a}</h1>\n"
    assert http_inside(env, b) == f"<h1>{b}</h1>\n"
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert rows[a]["state"] == rows[b]["state"] == "running"
    assert rows[a]["units"] == ["apache2.service"]
    env.run("stop", a, check=True)
    assert http_inside(env, b) == f"<h1>{b}</h1>\n"
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert rows[a]["state"] == "stopped" and rows[b]["state"] == "running"


def test_instance_has_own_identity_and_no_host_secrets(env: Env) -> None:
    name = unique_name("id")
    create_apache(env, name, "x\n")
    env.run("start", "--detach", name, check=True)
    script = (
                  "hostname; cat /etc/machine-id; test -e /etc/shadow && echo SHADOW; "
                  "ls /etc/systemd/system/multi-user.target.wants; "
                  "systemctl is-active apache2.service; "
                  "systemctl list-units --no-legend --plain 'getty*' 'cron*' | wc -l; "
                  "tail -1 /proc/$(cat /run/apache2/apache2.pid)/cgroup")
    out = env.run("execute", name, "--", "sh", "-c", script, check=True).stdout.split("\n")
    host_id = Path("/etc/machine-id").read_text().strip()
    assert out[0] == name
    assert len(out[1]) == 32 and out[1] != host_id
    assert "SHADOW" not in out
    assert out[2] == "apache2.service"
    assert out[3] == "active"
    assert out[4] == "0"
    # The sandbox's systemd has its own cgroup namespace: its services sit under the
    # container's cgroup, not in the host's system.slice.
    pattern = (rf"0::/machine/lxc-\d+-{name}\.libvirt-lxc/sandbox/system\.slice/"
               r"apache2\.service")
    assert re.fullmatch(pattern, out[5]), out[5]
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    private = {e["path"]: e["reasons"] for e in info["private"]}
    assert any("apache2" in r for r in private["/var/lib/apache2"])
    assert "/etc/shadow" in {e["path"] for e in info["hidden"]}
    assert info["security"]["label"].startswith("system_u:system_r:svirt_lxc_net_t:s0:c")


def test_execute_returns_status_and_keeps_streams_apart(env: Env) -> None:
    name = unique_name("ex")
    create_apache(env, name, "x\n")
    env.run("start", "--detach", name, check=True)
    proc = env.run("execute", name, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    proc = env.run("execute", name, "--", "/no/such/binary")
    assert proc.returncode == 127
    # Signals at their default, not as ignored in our Python (test_run: SIGNALS_SCRIPT).
    proc = env.run("execute", name, "--", "/bin/sh", "-c", SIGNALS_SCRIPT)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert_default_signals(proc.stdout)


def test_generic_sandbox_runs_its_command_confined(env: Env) -> None:
    name = unique_name("gen")
    script = ("ls /sys/class/net > /var/tmp/net; "
              "ls /proc | grep -c '^[0-9]' > /var/tmp/npids; "
              "touch /usr/vss-probe 2>/dev/null && echo yes > /var/tmp/usr "
              "|| echo no > /var/tmp/usr; "
              "echo sandbox > /etc/vss-probe-etc; exit 3")
    env.run("create", name, "--", "/bin/sh", "-c", script, check=True)
    proc = env.run("start", name, timeout=60)
    assert proc.returncode == 3, proc.stderr  # the command's own exit status
    var = env.state(name) / "var" / "tmp"
    assert (var / "net").read_text().split() == ["lo"]
    assert int((var / "npids").read_text()) < 5  # sh, its children: no host PIDs
    assert (var / "usr").read_text().strip() == "no"  # host root is read-only
    assert not Path("/etc/vss-probe-etc").exists()  # its /etc is its own
    assert (env.state(name) / "etc" / "vss-probe-etc").read_text() == "sandbox\n"


def test_round_trip_leaves_nothing(env: Env) -> None:
    before = env.snapshot()
    name = unique_name("rt")
    create_apache(env, name, "x\n")
    assert name in domain_names()
    assert (env.base / "units" / f"{name}_sandbox.service").exists()
    env.run("start", "--detach", name, check=True)
    env.run("stop", name, check=True)
    env.run("delete", name, check=True)
    after = env.snapshot()
    assert after["domains"] == before["domains"]
    leftovers = [f for f in after["files"] if f not in before["files"]]  # type: ignore[operator]
    # Only the (empty) parent dirs the tool keeps may remain.
    assert all(f in ("config", "config/sandboxes", "state", "run", "units") for f in leftovers)
    cg = Path("/sys/fs/cgroup/unified/machine")
    if cg.is_dir():
        assert not [p for p in cg.iterdir() if p.name.endswith(f"-{name}.libvirt-lxc")]


def test_delete_refuses_running_then_force(env: Env) -> None:
    name = unique_name("del")
    create_apache(env, name, "x\n")
    env.run("start", "--detach", name, check=True)
    proc = env.run("delete", name)
    assert proc.returncode == 2
    assert f"error: sandbox '{name}' is running" in proc.stderr
    assert name in domain_names()
    env.run("delete", "--force", name, check=True)
    assert name not in domain_names()
    assert not env.state(name).exists()


def test_delete_never_removes_a_directory_it_did_not_make(env: Env) -> None:
    name = unique_name("mk")
    create_apache(env, name, "x\n")
    marker = env.state(name) / ".virt-sandbox-service"
    marker.write_text("someone-else\n")
    proc = env.run("delete", name)
    assert proc.returncode == 2
    assert "was not made by virt-sandbox-service" in proc.stderr
    assert env.state(name).is_dir() and name in domain_names()
    marker.write_text(f"{name}\n")


def test_create_copy_takes_host_content(env: Env) -> None:
    name = unique_name("cp")
    env.run("create", "-C", "-u", "apache2.service", name, check=True)
    host_index = Path("/var/www/html/index.html")
    copied = env.state(name) / "var" / "www" / "html" / "index.html"
    assert copied.read_bytes() == host_index.read_bytes()
    st_host, st_copy = os.stat(host_index), os.stat(copied)
    assert (st_host.st_uid, st_host.st_mode) == (st_copy.st_uid, st_copy.st_mode)


def test_list_without_systemd_says_so(env: Env) -> None:
    """Where no systemd runs (this machine), list cannot know the host unit's state: "-" in
    the table, null in the JSON; with systemd it asks (test_systemd_lifecycle.py)."""
    from virt_sandbox_service.apply.systemd import systemd_running

    need(not systemd_running(), "a host without systemd as PID 1")
    name = unique_name("ls")
    env.run("create", name, "--", "/bin/true", check=True)
    row = next(r for r in json.loads(env.run("list", "--json", check=True).stdout)
               if r["name"] == name)
    assert (row["unit_active"], row["unit_enabled"]) == (None, None)
    lines = env.run("list", check=True).stdout.splitlines()
    assert lines[0].split() == ["NAME", "DRIVER", "UNITS", "STATE", "HOST", "UNIT", "ADDRESS"]
    assert next(ln for ln in lines if ln.startswith(name)).split()[-2:] == ["-", "-"]
