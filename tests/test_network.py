"""-N networks on a private test bridge: static IPv4/IPv6 addresses reachable from the host,
and the vss-listen-only filter. The tests make their own isolated libvirt network (no
forwarding, STP off, forward delay 0) and remove it; traffic stays on that bridge."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator

import libvirt
import pytest
from lxml import etree

from virt_sandbox_service.errors import UserError
from virt_sandbox_service.network import parse_network

from .conftest import Env, unique_name

V4 = "10.231.{}.{}"
V6 = "fd42:7673:7300:{}::{}"


def test_parse_networks() -> None:
    spec = parse_network("source=n1,address=10.0.0.2/24,address=fd00::2/64,"
                         "route=0.0.0.0/0%10.0.0.1,mac=52:54:00:00:00:01")
    assert [(a.ip, a.prefix, a.family) for a in spec.addresses] == \
        [("10.0.0.2", 24, "ipv4"), ("fd00::2", 64, "ipv6")]
    assert spec.routes[0].gateway == "10.0.0.1"
    assert parse_network("source=n,dhcp").dhcp


@pytest.mark.parametrize(("text", "needle"), [
    ("address=10.0.0.2/24", "has no source=NET"),
    ("source=n,address=10.0.0.300/24", "is not IP/PREFIX"),
    ("source=n,address=10.0.0.2", "needs a /PREFIX"),
    ("source=n,route=0.0.0.0/0", "NET/PREFIX%GATEWAY"),
    ("source=n,route=0.0.0.0/0%fd00::1", "of one family"),
    ("source=n,mac=01:00:5e:00:00:01", "not a unicast MAC"),
    ("source=n,colour=red", "'colour' is not a network option"),
    ("source=n,port=80", "port= goes with filter=vss-listen-only"),
    ("source=n,filter=vss-listen-only", "needs the ports"),
    ("source=n,filter=vss-listen-only,port=99999", "is not 1..65535"),
])
def test_bad_networks(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        parse_network(text)


def isolated_network(prefix: str, dhcp: bool = False) -> Iterator[tuple[str, int]]:
    """An isolated libvirt network on a new bridge (IPv4 and IPv6; with `dhcp`, IPv4 only and
    libvirt's dnsmasq leasing .100-.150); yields (name, subnet number), then removes it."""
    conn = libvirt.open("lxc:///")
    subnet = 100 + secrets.randbelow(100)
    name = f"{prefix}{secrets.token_hex(3)}"
    root = etree.Element("network")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "bridge", name=name, stp="off", delay="0")
    ip = etree.SubElement(root, "ip", address=V4.format(subnet, 1), prefix="24")
    if dhcp:
        etree.SubElement(etree.SubElement(ip, "dhcp"), "range", start=V4.format(subnet, 100),
                         end=V4.format(subnet, 150))
    else:
        etree.SubElement(root, "ip", family="ipv6", address=V6.format(subnet, 1), prefix="64")
    net = conn.networkCreateXML(etree.tostring(root, encoding="unicode"))
    try:
        yield name, subnet
    finally:
        net.destroy()


@pytest.fixture
def test_network() -> Iterator[tuple[str, int]]:
    """An isolated libvirt network on a new bridge; yields (name, subnet number)."""
    yield from isolated_network("vsst")


def curl(address: str, port: int = 80) -> subprocess.CompletedProcess[str]:
    host = f"[{address}]" if ":" in address else address
    return subprocess.run(["curl", "-sS", "--max-time", "3", f"http://{host}:{port}/"],
                          capture_output=True, text=True)


@pytest.mark.root
@pytest.mark.libvirt
def test_two_sandboxes_with_static_addresses_answer_from_the_host(
        env: Env, test_network: tuple[str, int]) -> None:
    net, subnet = test_network
    names = [unique_name("net"), unique_name("net")]
    for i, name in enumerate(names, start=10):
        env.run("create", "-u", "apache2.service", "-N",
                f"source={net},address={V4.format(subnet, i)}/24,"
                f"address={V6.format(subnet, i)}/64", name, check=True)
        (env.state(name) / "var/www/html/index.html").write_text(f"{name}\n")
        env.run("start", "--detach", name, check=True)
    for i, name in enumerate(names, start=10):
        assert curl(V4.format(subnet, i)).stdout == f"{name}\n"
        v6 = curl(V6.format(subnet, i))
        assert v6.stdout == f"{name}\n", v6.stderr
    rows = env.run("list", check=True).stdout
    assert V4.format(subnet, 10) in rows


@pytest.mark.root
@pytest.mark.libvirt
def test_listen_only_filter(env: Env, test_network: tuple[str, int]) -> None:
    net, subnet = test_network
    name = unique_name("flt")
    host_ip, host_ip6 = V4.format(subnet, 1), V6.format(subnet, 1)
    _older_filter_defined()
    env.run("create", "-u", "apache2.service", "-N",
            f"source={net},address={V4.format(subnet, 20)}/24,"
            f"address={V6.format(subnet, 20)}/64,filter=vss-listen-only,port=80",
            name, check=True)
    env.run("start", "--detach", name, check=True)
    # Servers on the host's end of the bridge, which the sandbox must not reach.
    def serve(ip: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["python3", "-m", "http.server", "--bind", ip, "18080"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    servers = [serve(ip) for ip in (host_ip, host_ip6)]
    try:
        # The servers are up (the host reaches them), so a failure below is the filter's.
        # A new bridge's IPv6 address is tentative until duplicate address detection ends
        # (a bind fails with EADDRNOTAVAIL until then): a server that exited is started again.
        deadline = time.monotonic() + 20
        while curl(host_ip, 18080).returncode or curl(host_ip6, 18080).returncode:
            assert time.monotonic() < deadline, "the test's own servers did not come up"
            for i, ip in enumerate((host_ip, host_ip6)):
                if servers[i].poll() is not None:
                    servers[i] = serve(ip)
            time.sleep(0.2)
        assert curl(V4.format(subnet, 20)).returncode == 0  # port 80 answers, over IPv4
        v6 = curl(V6.format(subnet, 20))  # and over IPv6 (neighbour discovery passes)
        assert v6.returncode == 0, v6.stderr
        for target in (host_ip, f"[{host_ip6}]"):
            out = env.run("execute", name, "--", "curl", "-sS", "--max-time", "3",
                          f"http://{target}:18080/")
            assert out.returncode != 0, target  # no outbound connection
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    info = env.run("inspect", name, check=True).stdout
    assert "vss-listen-only" in info


def _older_filter_defined() -> None:
    """Our filter as an older version defined it (no IPv6 neighbour discovery): create must
    bring it up to date, not keep it because the name exists."""
    from virt_sandbox_service.network import OUR_FILTER, filter_xml

    conn = libvirt.open("lxc:///")
    root = etree.fromstring(filter_xml().encode())
    for rule in root.findall("rule"):
        if rule.find("ipv6") is not None or rule.find("icmpv6") is not None:
            root.remove(rule)
    with contextlib.suppress(libvirt.libvirtError):
        root.insert(0, etree.fromstring(
            conn.nwfilterLookupByName(OUR_FILTER).XMLDesc(0).encode()).find("uuid"))
    conn.nwfilterDefineXML(etree.tostring(root, encoding="unicode"))


@pytest.mark.root
@pytest.mark.libvirt
def test_unknown_network_is_refused(env: Env) -> None:
    before = env.snapshot()
    proc = env.run("create", "-u", "apache2.service", "-N", "source=no-such-net-xyz",
                   unique_name("nn"))
    assert proc.returncode == 2
    assert "libvirt network 'no-such-net-xyz' does not exist" in proc.stderr
    assert env.snapshot() == before
