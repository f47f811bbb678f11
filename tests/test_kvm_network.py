"""-N for KVM sandboxes: a virtio-net interface on a private test network, configured inside
the guest (by its init for a generic sandbox, by systemd-networkd for a unit sandbox), reached
from the host at its static addresses. TCG here: each case boots a micro-VM."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import Env, unique_name
from .test_network import V4, V6, curl, isolated_network, test_network  # noqa: F401
from .test_run import reachable

pytestmark = [pytest.mark.root, pytest.mark.libvirt, pytest.mark.kvm]
URI = "qemu:///system"


@pytest.fixture(autouse=True)
def qemu_driver() -> None:
    from .conftest import need

    need(reachable(URI), "needs libvirtd with the QEMU driver (scripts/setup.sh)")


def execute(env: Env, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return env.run("execute", name, "--", *argv)


def get(address: str, port: int, path: str) -> subprocess.CompletedProcess[str]:
    host = f"[{address}]" if ":" in address else address
    return subprocess.run(["curl", "-sS", "--max-time", "3", f"http://{host}:{port}{path}"],
                          capture_output=True, text=True)


def wait_http(address: str, port: int, path: str,
              timeout: float = 180) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        proc = get(address, port, path)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc
        time.sleep(0.5)


def test_generic_sandbox_serves_http_at_its_static_addresses(
        env: Env, test_network: tuple[str, int]) -> None:  # noqa: F811
    net, subnet = test_network
    name = unique_name("kng")
    v4, v6 = V4.format(subnet, 30), V6.format(subnet, 30)
    env.run("create", "-c", URI, "-N", f"source={net},address={v4}/24,address={v6}/64", name,
            "--", "/usr/bin/python3", "-m", "http.server", "--bind", "::", "--directory", "/etc",
            "8000",
            check=True)
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    mac = info["network"][0]["mac"]
    assert mac.startswith("52:54:00:")  # derived: the guest finds the interface by it
    env.run("start", "--detach", name, check=True, timeout=120)
    proc = wait_http(v4, 8000, "/hostname")
    assert proc.stdout == f"{name}\n", proc.stderr  # /hostname of its private /etc
    proc = get(v6, 8000, "/hostname")
    assert proc.stdout == f"{name}\n", proc.stderr
    neighbours = subprocess.run(["ip", "neigh", "show", v4], capture_output=True, text=True)
    assert mac in neighbours.stdout
    env.run("stop", name, check=True, timeout=120)
    env.run("delete", name, check=True)


def test_unit_sandbox_answers_through_networkd_and_the_filter(
        env: Env, test_network: tuple[str, int]) -> None:  # noqa: F811
    net, subnet = test_network
    name = unique_name("knu")
    v4, v6 = V4.format(subnet, 31), V6.format(subnet, 31)
    env.run("create", "-c", URI, "-u", "apache2.service", "-N",
            f"source={net},address={v4}/24,address={v6}/64,filter=vss-listen-only,port=80",
            name, check=True)
    (env.state(name) / "var/www/html/index.html").write_text(f"{name}\n")
    env.run("start", "--detach", name, check=True, timeout=300)
    # Ready means reachable: networkd has configured the addresses.
    proc = curl(v4)
    assert proc.stdout == f"{name}\n", proc.stderr
    out = execute(env, name, "ip", "-o", "addr", "show").stdout
    assert f" {v4}/24 " in out and f" {v6}/64 " in out, out
    # The filter: only port 80 answers (a port with nothing listening would refuse
    # the connection at once; dropped, it times out).
    proc = subprocess.run(["curl", "-sS", "--max-time", "2", f"http://{v4}:22/"],
                          capture_output=True, text=True)
    assert proc.returncode == 28, proc.stderr  # timed out: dropped, not refused
    env.run("stop", name, check=True, timeout=120)
    env.run("delete", name, check=True)


@pytest.fixture
def dhcp_network() -> Iterator[tuple[str, int]]:
    """An isolated libvirt network whose dnsmasq hands out addresses .100-.150."""
    yield from isolated_network("vssd", dhcp=True)


def test_unit_sandbox_gets_its_address_by_dhcp(env: Env, dhcp_network: tuple[str, int]) -> None:
    net, subnet = dhcp_network
    name = unique_name("knd")
    env.run("create", "-c", URI, "-u", "apache2.service", "-N", f"source={net},dhcp", name,
            check=True)
    (env.state(name) / "var/www/html/index.html").write_text(f"{name}\n")
    env.run("start", "--detach", name, check=True, timeout=300)
    # Ready once networkd has its lease; libvirt knows the lease, `list` shows it.
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    address = rows[name]["address"]
    assert address and address.startswith(V4.format(subnet, "")), rows[name]
    proc = curl(address.split("/")[0])
    assert proc.stdout == f"{name}\n", proc.stderr
    env.run("stop", name, check=True, timeout=120)
    env.run("delete", name, check=True)
