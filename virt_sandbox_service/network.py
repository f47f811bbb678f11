"""-N network specs and network filters.

    -N source=NET[,mac=MAC][,address=IP/PREFIX[%BROADCAST]]...[,route=NET/PREFIX%GATEWAY]...
       [,dhcp][,filter=NAME[,port=N]...][,inbound=AVG[:PEAK[:BURST]]][,outbound=...]

Each -N is one interface on the libvirt network NET. Addresses and routes are set inside the
sandbox by libvirt (LXC) or by the guest's init and systemd-networkd (KVM: see guest_args);
`dhcp` enables systemd-networkd's DHCP client in a unit sandbox. `filter`
attaches a libvirt nwfilter; `vss-listen-only` is ours (see filter_xml): the sandbox may
answer on the given ports and ask DNS, nothing else. `inbound` and `outbound` (into and out
of the sandbox: rates a second and a burst size, e.g. 1M:2M:256K) become the interface's
<bandwidth>, which libvirt applies with tc on the host end of the interface.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field

from lxml import etree

from .errors import UserError

HINT = ("write -N source=NET[,address=IP/PREFIX][,route=NET/PREFIX%GATEWAY][,mac=MAC][,dhcp]"
        "[,filter=NAME[,port=N]...][,inbound=AVG[:PEAK[:BURST]]][,outbound=...]")
# libvirt's <bandwidth> attributes. Their units are what libvirt hands tc: average and peak
# as "<N>kbps", which tc reads as N * 1000 bytes a second, and burst as "<N>kb", N * 1024
# bytes (iproute2's rates are decimal, its sizes binary). A spec keeps the bytes it was given
# (K, M... binary, as every size here) and becomes those units only in the XML.
BANDWIDTH_ATTRS = ("average", "peak", "burst")
BANDWIDTH_UNITS = (1000, 1000, 1024)
BANDWIDTH_MAX = 2**32 - 1  # libvirt's unsigned int, in those units
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
OUR_FILTER = "vss-listen-only"


@dataclass(frozen=True)
class Address:
    ip: str
    prefix: int
    broadcast: str | None = None

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.ip else "ipv4"


@dataclass(frozen=True)
class Route:
    network: str
    prefix: int
    gateway: str

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.network else "ipv4"


@dataclass(frozen=True)
class NetSpec:
    source: str
    mac: str | None = None
    dhcp: bool = False
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()
    filter: str | None = None
    ports: tuple[int, ...] = field(default=())
    inbound: tuple[int, ...] = ()  # bytes: average and peak a second, then burst, if given
    outbound: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """The canonical -N spelling, the form a config saves: parse_network of it gives an
        equal spec."""
        items = [f"source={self.source}"]
        items += [f"mac={self.mac}"] if self.mac else []
        items += ["dhcp"] if self.dhcp else []
        items += [f"address={a.ip}/{a.prefix}" + (f"%{a.broadcast}" if a.broadcast else "")
                  for a in self.addresses]
        items += [f"route={r.network}/{r.prefix}%{r.gateway}" for r in self.routes]
        items += [f"filter={self.filter}"] if self.filter else []
        items += [f"port={p}" for p in self.ports]
        items += [f"{d}={rates_text(values)}"
                  for d, values in (("inbound", self.inbound), ("outbound", self.outbound))
                  if values]
        return ",".join(items)


def parse_network(text: str) -> NetSpec:
    source, mac, dhcp, filt = None, None, False, None
    addresses: list[Address] = []
    routes: list[Route] = []
    ports: list[int] = []
    rates: dict[str, tuple[int, ...]] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if key == "dhcp" and not eq:
            dhcp = True
        elif not eq or not value:
            raise UserError(f"network option '{item}' in '{text}' is not KEY=VALUE", HINT)
        elif key == "source":
            source = value
        elif key == "mac":
            mac = _mac(value, text)
        elif key == "address":
            addresses.append(_address(value, text))
        elif key == "route":
            routes.append(_route(value, text))
        elif key == "filter":
            filt = value
        elif key == "port":
            ports.append(_port(value, text))
        elif key in ("inbound", "outbound"):
            rates[key] = _bandwidth(key, value, text)
        else:
            raise UserError(f"'{key}' is not a network option in '{text}'", HINT)
    if source is None:
        raise UserError(f"network '{text}' has no source=NET", HINT)
    if ports and filt != OUR_FILTER:
        raise UserError(f"port= goes with filter={OUR_FILTER} in '{text}'", HINT)
    if filt == OUR_FILTER and not ports:
        raise UserError(f"filter={OUR_FILTER} needs the ports to answer on, e.g. port=80",
                        HINT)
    return NetSpec(source, mac, dhcp, tuple(addresses), tuple(routes), filt, tuple(ports),
                   rates.get("inbound", ()), rates.get("outbound", ()))


def _bandwidth(key: str, value: str, text: str) -> tuple[int, ...]:
    """AVG[:PEAK[:BURST]], sizes a second (and a size), as bytes."""
    from .config import parse_size

    hint = f"e.g. {key}=1M (a second), or {key}=1M:4M:256K (average, peak, burst)"
    parts = value.split(":")
    if len(parts) > 3:
        raise UserError(f"{key}='{value}' in '{text}' is not AVG[:PEAK[:BURST]]", hint)
    sizes = []
    for name, part, unit in zip(BANDWIDTH_ATTRS, parts, BANDWIDTH_UNITS, strict=False):
        number = parse_size(part, f"{key} {name}")
        if -(-number // unit) > BANDWIDTH_MAX:
            raise UserError(f"{key} {name} '{part}' in '{text}' is too large", hint)
        sizes.append(number)
    if len(sizes) > 1 and sizes[1] < sizes[0]:
        raise UserError(f"{key} peak '{parts[1]}' in '{text}' is below its average '{parts[0]}'",
                        hint)
    return tuple(sizes)


def rates_text(values: tuple[int, ...]) -> str:
    """Bytes as the spec spells them back: 1M, 512K, 1500 (parse_network reads it again)."""
    def size(n: int) -> str:
        for suffix, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
            if n % factor == 0:
                return f"{n // factor}{suffix}"
        return str(n)
    return ":".join(size(v) for v in values)


def libvirt_rates(values: tuple[int, ...]) -> tuple[int, ...]:
    """The bytes of a spec in libvirt's <bandwidth> units (BANDWIDTH_UNITS), rounded up."""
    return tuple(-(-v // unit) for v, unit in zip(values, BANDWIDTH_UNITS, strict=False))


def set_bandwidth(sandbox: str, nets: tuple[NetSpec, ...], direction: str,
                  given: tuple[str, ...]) -> tuple[NetSpec, ...]:
    """`limit --inbound/--outbound [NET=]AVG[:PEAK[:BURST]]`, each value for one interface:
    the interfaces with their new rates (0: no limit). NET is the interface's network (its
    -N source=) or its host device (host_device); it may be left out where there is one."""
    option = f"--{direction}"
    out = list(nets)
    for text in given:
        net, _, value = text.rpartition("=")
        if not out:
            raise UserError(f"{option} {text}: sandbox '{sandbox}' has no network interface",
                            "it has loopback only; -N source=NET,... at create gives it one")
        if net:
            found = [i for i, n in enumerate(out)
                     if net in (n.source, host_device(sandbox, i))]
        else:
            found = list(range(len(out)))
        if len(found) != 1:
            named = ", ".join(f"{n.source} ({host_device(sandbox, i)})"
                              for i, n in enumerate(out))
            what = (f"sandbox '{sandbox}' has no interface '{net}'" if not found else
                    f"more than one interface of '{sandbox}' is on '{net}'" if net else
                    f"sandbox '{sandbox}' has {len(out)} interfaces: name one")
            raise UserError(f"{option} {text}: {what}",
                            f"write {option} NET={value or 'RATE'}; its interfaces: {named} "
                            "(a network, or the host device where two share one)")
        try:
            rates = () if value == "0" else _bandwidth(direction, value, text)
        except UserError as e:
            raise UserError(f"{option} {text}: {e.message}", e.hint or (
                f"e.g. {option} 1M, or {option} NET=1M:4M:256K (average, peak, burst a "
                "second); 0 removes it")) from None
        spec = out[found[0]]
        out[found[0]] = (dataclasses.replace(spec, inbound=rates) if direction == "inbound"
                         else dataclasses.replace(spec, outbound=rates))
    return tuple(out)


def interface_params(spec: NetSpec) -> dict[str, int]:
    """libvirt's live interface parameters for spec's rates: every one of both directions,
    0 where not given (libvirt keeps a parameter left out, and 0 is none)."""
    return {f"{d}.{a}": (units[i] if i < len(units) else 0)
            for d, units in (("inbound", libvirt_rates(spec.inbound)),
                             ("outbound", libvirt_rates(spec.outbound)))
            for i, a in enumerate(BANDWIDTH_ATTRS)}


def bandwidth_element(spec: NetSpec) -> etree._Element | None:
    """<bandwidth> of an interface; None without inbound= or outbound=."""
    if not spec.inbound and not spec.outbound:
        return None
    bw = etree.Element("bandwidth")
    for direction, values in (("inbound", spec.inbound), ("outbound", spec.outbound)):
        if values:
            etree.SubElement(bw, direction, {a: str(v) for a, v in zip(
                BANDWIDTH_ATTRS, libvirt_rates(values), strict=False)})
    return bw


def _mac(value: str, text: str) -> str:
    if not MAC_RE.fullmatch(value) or int(value[:2], 16) & 1:
        raise UserError(f"'{value}' in '{text}' is not a unicast MAC address",
                        "e.g. mac=52:54:00:12:34:56")
    return value.lower()


def _address(value: str, text: str) -> Address:
    addr, _, broadcast = value.partition("%")
    try:
        iface = ipaddress.ip_interface(addr)
    except ValueError:
        raise UserError(f"'{value}' in '{text}' is not IP/PREFIX",
                        "e.g. address=192.0.2.10/24 or address=2001:db8::10/64") from None
    if "/" not in addr:
        raise UserError(f"address '{value}' in '{text}' needs a /PREFIX",
                        "e.g. address=192.0.2.10/24 or address=2001:db8::10/64")
    if broadcast:
        try:
            ipaddress.ip_address(broadcast)
        except ValueError:
            raise UserError(f"broadcast '{broadcast}' in '{text}' is not an address",
                            "e.g. address=192.0.2.10/24%192.0.2.255") from None
    return Address(str(iface.ip), iface.network.prefixlen, broadcast or None)


def _route(value: str, text: str) -> Route:
    net, pct, gateway = value.partition("%")
    try:
        network = ipaddress.ip_network(net, strict=False)
        gw = ipaddress.ip_address(gateway)
    except ValueError:
        raise UserError(f"'{value}' in '{text}' is not NET/PREFIX%GATEWAY",
                        "e.g. route=0.0.0.0/0%192.0.2.1") from None
    if not pct or "/" not in net or network.version != gw.version:
        raise UserError(f"route '{value}' in '{text}' must be NET/PREFIX%GATEWAY of one family",
                        "e.g. route=0.0.0.0/0%192.0.2.1 or route=::/0%2001:db8::1")
    return Route(str(network.network_address), network.prefixlen, str(gw))


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UserError(f"port '{value}' in '{text}' is not 1..65535", "e.g. port=80")
    return int(value)


def host_device(sandbox: str, index: int) -> str:
    """The host end's name: stable per sandbox and interface, within IFNAMSIZ (15 bytes).
    libvirt's LXC driver needs a fixed name to bind a network filter to."""
    import hashlib  # only where a network is planned, not in every run (issue 16)

    digest = hashlib.sha256(f"{sandbox}/{index}".encode()).hexdigest()
    return f"vss{digest[:11]}"


def interface_element(spec: NetSpec, device: str) -> etree._Element:
    """<interface type='network'> in the order of libvirt's schema."""
    iface = etree.Element("interface", type="network")
    if spec.mac:
        etree.SubElement(iface, "mac", address=spec.mac)
    etree.SubElement(iface, "source", network=spec.source)
    etree.SubElement(iface, "target", dev=device)
    for a in spec.addresses:
        etree.SubElement(iface, "ip", address=a.ip, family=a.family, prefix=str(a.prefix))
    for r in spec.routes:
        etree.SubElement(iface, "route", family=r.family, address=r.network,
                         prefix=str(r.prefix), gateway=r.gateway)
    _filterref(iface, spec)
    _bandwidth_el(iface, spec)
    return iface


def _filterref(iface: etree._Element, spec: NetSpec) -> None:
    if spec.filter:
        ref = etree.SubElement(iface, "filterref", filter=spec.filter)
        for port in spec.ports:
            etree.SubElement(ref, "parameter", name="PORT", value=str(port))


def _bandwidth_el(iface: etree._Element, spec: NetSpec) -> None:
    bw = bandwidth_element(spec)
    if bw is not None:
        iface.append(bw)


def guest_mac(sandbox: str, index: int, spec: NetSpec) -> str:
    """The interface's MAC: the one given, else one derived from the sandbox and the index.
    A KVM guest finds its interfaces by MAC (their names are the guest kernel's choice), so
    the MAC must be known when the domain is built, and stay the same for every start.
    52:54:00 is the prefix qemu and libvirt use for their own."""
    if spec.mac:
        return spec.mac
    import hashlib

    digest = hashlib.sha256(f"{sandbox}/{index}/mac".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def kvm_interface_element(spec: NetSpec, device: str, mac: str) -> etree._Element:
    """<interface type='network'> of a KVM sandbox: a virtio-net device on the microvm's
    virtio-mmio bus. No <ip>/<route>: qemu refuses them (the guest is not libvirt's to
    configure); the guest init sets them up from the kernel command line (guest_args)."""
    iface = etree.Element("interface", type="network")
    etree.SubElement(iface, "mac", address=mac)
    etree.SubElement(iface, "source", network=spec.source)
    etree.SubElement(iface, "target", dev=device)
    etree.SubElement(iface, "model", type="virtio")
    _filterref(iface, spec)
    _bandwidth_el(iface, spec)
    etree.SubElement(iface, "address", type="virtio-mmio")
    return iface


def guest_args(spec: NetSpec, mac: str) -> list[str]:
    """One interface for the KVM guest's init (initrd/init), as kernel arguments:
    vss.net=MAC[,dhcp], vss.addr=MAC,IP/PREFIX[,BROADCAST], vss.route=MAC,NET/PREFIX,GATEWAY.
    Every value was checked by the parsers above: no spaces, no commas of its own."""
    args = [f"vss.net={mac}" + (",dhcp" if spec.dhcp else "")]
    args += [f"vss.addr={mac},{a.ip}/{a.prefix}" + (f",{a.broadcast}" if a.broadcast else "")
             for a in spec.addresses]
    args += [f"vss.route={mac},{r.network}/{r.prefix},{r.gateway}" for r in spec.routes]
    return args


def networkd_file(index: int) -> str:
    """systemd-networkd config for a DHCP interface of a unit sandbox (eth0, eth1, ...)."""
    return (f"# virt-sandbox-service: -N ...,dhcp\n[Match]\nName=eth{index}\n\n"
            "[Network]\nDHCP=yes\n")


def filter_xml() -> str:
    """Our nwfilter. Lower priorities run first. Allowed: ARP and IPv6 neighbour discovery
    (to be reachable at all), answers on $PORT (incoming TCP to the port and what belongs to
    those connections), DNS queries out. Everything else, both ways, is dropped."""
    root = etree.Element("filter", name=OUR_FILTER, chain="root")
    etree.SubElement(root, "filterref", filter="no-mac-spoofing")
    _rule(root, "accept", "inout", -500, "mac", protocolid="arp")
    # IPv6 neighbour discovery (ICMPv6 133-136: router and neighbour solicitation and
    # advertisement) and no other ICMPv6. libvirt 9.0 silently leaves out ip6tables rules
    # with an ICMPv6 type, so the type is matched at the bridge layer (ebtables), and the
    # ip6tables layer then lets through the ICMPv6 that got past it.
    _rule(root, "accept", "inout", -400, "ipv6", protocol="icmpv6", type="133", typeend="136")
    _rule(root, "drop", "inout", -390, "ipv6", protocol="icmpv6")
    _rule(root, "accept", "inout", -380, "icmpv6")
    # Connection state is matched for IPv4; libvirt's schema has no state for IPv6 rules.
    for proto, new, est in (("tcp", {"state": "NEW,ESTABLISHED"}, {"state": "ESTABLISHED"}),
                            ("tcp-ipv6", {}, {})):
        _rule(root, "accept", "in", 100, proto, dstportstart="$PORT", **new)
        _rule(root, "accept", "out", 100, proto, srcportstart="$PORT", **est)
    for proto, new, est in (("udp", {"state": "NEW,ESTABLISHED"}, {"state": "ESTABLISHED"}),
                            ("udp-ipv6", {}, {})):
        _rule(root, "accept", "out", 200, proto, dstportstart="53", **new)
        _rule(root, "accept", "in", 200, proto, srcportstart="53", **est)
    _rule(root, "drop", "inout", 1000, "all")
    _rule(root, "drop", "inout", 1000, "all-ipv6")
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def _rule(root: etree._Element, action: str, direction: str, priority: int, match: str,
          **attrs: str) -> None:
    rule = etree.SubElement(root, "rule", action=action, direction=direction,
                            priority=str(priority))
    etree.SubElement(rule, match, attrib=attrs)
