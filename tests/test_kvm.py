"""KVM sandboxes end to end: micro-VMs booting the host's kernel and root, against the real
libvirtd's QEMU driver (TCG on this machine: no hardware virtualization).

The unit sandbox confines apache2, as the LXC tests do: under TCG its systemd and apache2
answer in about 10-15 s, which the issue allows; a lighter daemon would save little, since the
guest's kernel and systemd dominate the time.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import CLI, ROOT, Env, need, unique_name
from .test_run import reachable

pytestmark = [pytest.mark.root, pytest.mark.kvm]
URI = "qemu:///system"


@pytest.fixture(autouse=True)
def qemu_driver() -> None:
    need(reachable(URI), "needs libvirtd with the QEMU driver (scripts/setup.sh)")


def kvm_domains() -> list[str]:
    import libvirt

    conn = libvirt.open(URI)
    try:
        return [d.name() for d in conn.listAllDomains(0)]
    finally:
        conn.close()


def execute(env: Env, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([*CLI, "execute", name, "--", *argv], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})


def test_unit_sandbox_answers_http_and_stops_cleanly(env: Env) -> None:
    name = unique_name("kweb")
    env.run("create", "-c", URI, "-u", "apache2.service", name, check=True)
    (env.state(name) / "var/www/html/index.html").write_text(f"<h1>{name}</h1>\n")
    assert name in kvm_domains()
    env.run("start", "--detach", name, check=True, timeout=240)
    # start --detach returns once the confined unit is up: apache2 answers at once.
    proc = execute(env, name, "curl", "-sS", "--max-time", "10", "http://localhost/")
    assert (proc.returncode, proc.stdout) == (0, f"<h1>{name}</h1>\n"), proc.stderr
    proc = execute(env, name, "sh", "-c", "hostname; cat /etc/machine-id; "
                   "systemctl is-active apache2.service; echo err >&2; exit 7")
    assert proc.returncode == 7 and proc.stderr == "err\n"
    host_name, machine_id, active = proc.stdout.split()
    assert host_name == name and active == "active"
    assert machine_id == json.loads(env.run("inspect", "--json", name).stdout)["machine_id"]
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert rows[name]["state"] == "running" and rows[name]["driver"] == "kvm"
    proc = env.run("reload", name, timeout=120)  # systemctl reload, through the guest agent
    assert proc.returncode == 0, proc.stderr
    env.run("stop", name, check=True, timeout=120)
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert rows[name]["state"] == "stopped"
    # Clean: the guest's systemd stopped apache2 itself (no destroy after the timeout).
    log = subprocess.run(["journalctl", "-D", str(env.state(name) / "var/log/journal"),
                          "-u", "apache2.service", "--no-pager"],
                         capture_output=True, text=True).stdout
    assert "Stopped" in log or "Deactivated successfully" in log, log[-2000:]
    env.run("delete", name, check=True)
    assert name not in kvm_domains()
    assert not env.state(name).exists()


def test_unit_that_fails_to_start_fails_start_with_its_log(env: Env) -> None:
    name = unique_name("kbad")
    env.run("create", "-c", URI, "-u", "apache2.service", name, check=True)
    with open(env.state(name) / "etc/apache2/apache2.conf", "a") as f:
        f.write("NotADirective on\n")
    proc = env.run("start", "--detach", name, timeout=240)
    assert proc.returncode == 6, proc.stderr  # EXIT_NOT_CONFIGURED: no restart loop
    assert f"apache2.service failed in sandbox '{name}'" in proc.stderr
    assert "NotADirective" in proc.stderr  # the unit's own log
    assert json.loads(env.run("list", "--json").stdout)[0]["state"] == "stopped"
    env.run("delete", name, check=True)


def test_generic_sandbox_returns_its_commands_status(env: Env) -> None:
    name = unique_name("kgen")
    script = ("echo sandbox > /etc/vss-probe; touch /usr/vss-probe 2>/dev/null || "
              "echo read-only > /var/tmp/usr; exit 3")
    env.run("create", "-c", URI, name, "--", "/bin/sh", "-c", script, check=True)
    proc = env.run("start", name, timeout=240)
    assert proc.returncode == 3, proc.stderr
    assert (env.state(name) / "etc/vss-probe").read_text() == "sandbox\n"
    assert (env.state(name) / "var/tmp/usr").read_text() == "read-only\n"
    env.run("delete", name, check=True)
    assert name not in kvm_domains()
