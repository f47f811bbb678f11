"""Thin layer over libvirt-python: connect, define, undefine, find our domains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import libvirt

from ..errors import HostError, UserError
from ..layout import METADATA_NS
from . import apparmor
from .txn import Transaction

if TYPE_CHECKING:
    from lxml import etree

# lxml is imported where XML is read: `start` reads none before its domain runs, and lxml
# is ~10 ms of every start's time before that otherwise.

# libvirt prints its errors to stderr by default; we report them ourselves, once.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# libvirt checks each document against its own schema (domain.rng, nwfilter.rng) before it
# defines or starts it, so a malformed domain is refused with the schema's reason instead of
# parts of it being silently dropped. Domains: libvirt >= 1.3.3 (defineXMLFlags, createXML);
# network filters: >= 7.7 (nwfilterDefineXMLFlags).
DEFINE_VALIDATE = libvirt.VIR_DOMAIN_DEFINE_VALIDATE
START_VALIDATE = libvirt.VIR_DOMAIN_START_VALIDATE
NWFILTER_VALIDATE_SINCE = 7_007_000


def connect(uri: str, readonly: bool = False) -> libvirt.virConnect:
    """readonly: a connection through which nothing can be changed (--dry-run's)."""
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise HostError(f"cannot connect to libvirt at {uri}: {e.get_error_message()}",
                        "is libvirtd running? 'virt-sandbox-service doctor' checks the host") from e


def close_without_waiting(conn: libvirt.virConnect) -> None:
    """The connection closed in a thread of its own that does not hold up our exit.

    For a command whose transient AUTODESTROY domain (a `run`'s, a create's set-up) has ended:
    libvirt still tears the domain down, and the close waits for that (libvirtd ends an
    autodestroy domain at the close, under the domain's lock, which its teardown holds
    through a 200 ms round on libvirt 9.0): 0.2 s of every such command. Should we exit
    first, the kernel closes the socket and libvirtd does the same on its own."""
    import threading

    threading.Thread(target=conn.close, name="libvirt-close", daemon=True).start()


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise HostError(f"libvirt: {e.get_error_message()}") from e


def is_ours(dom: libvirt.virDomain) -> bool:
    from lxml import etree

    root = etree.fromstring(dom.XMLDesc(0).encode())
    return root.find(f"metadata/{{{METADATA_NS}}}sandbox") is not None


def metadata(dom: libvirt.virDomain) -> dict[str, str]:
    """Our metadata in the domain: kind, config, state (first value of each)."""
    return xml_metadata(dom.XMLDesc(0))


def xml_metadata(xml: str) -> dict[str, str]:
    """Our metadata in a domain's XML (see metadata)."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    box = root.find(f"metadata/{{{METADATA_NS}}}sandbox")
    out: dict[str, str] = {}
    for child in box if box is not None else ():
        out.setdefault(etree.QName(child).localname, child.text or "")
    return out


def check_name_free(conn: libvirt.virConnect, name: str) -> None:
    if lookup(conn, name) is not None:
        raise UserError(f"a libvirt domain named '{name}' already exists",
                        "choose another sandbox name")


def check_network(conn: libvirt.virConnect, name: str) -> None:
    try:
        conn.networkLookupByName(name)
    except libvirt.libvirtError:
        raise UserError(f"libvirt network '{name}' does not exist",
                        "see 'virsh net-list --all'; the README shows how to make one") from None


def check_nwfilter(conn: libvirt.virConnect, name: str) -> None:
    try:
        conn.nwfilterLookupByName(name)
    except libvirt.libvirtError:
        raise UserError(f"libvirt network filter '{name}' does not exist",
                        "see 'virsh nwfilter-list', or use filter=vss-listen-only,port=N") \
            from None


def ensure_nwfilter(conn: libvirt.virConnect, name: str, xml: str) -> None:
    """Define our shared filter if it is missing or its rules differ from this version's (an
    older one may be there). It stays, even if this create fails: another create may already
    refer to it, and it is shared infrastructure like the config dir."""
    from lxml import etree

    try:
        current = conn.nwfilterLookupByName(name)
    except libvirt.libvirtError:
        current = None
    if current is not None:
        old = etree.fromstring(current.XMLDesc(0).encode())
        if _filter_rules(old) == _filter_rules(etree.fromstring(xml.encode())):
            return
        # Same name, same UUID: libvirt replaces the rules on every interface using it.
        new = etree.fromstring(xml.encode())
        uuid = old.find("uuid")
        if uuid is not None:
            new.insert(0, uuid)
        xml = etree.tostring(new, encoding="unicode")
    try:
        define_nwfilter(conn, xml)
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt refused network filter {name}: {e.get_error_message()}") from e


def define_nwfilter(conn: libvirt.virConnect, xml: str) -> None:
    if conn.getLibVersion() >= NWFILTER_VALIDATE_SINCE:
        conn.nwfilterDefineXMLFlags(xml, libvirt.VIR_NWFILTER_DEFINE_VALIDATE)
    else:
        conn.nwfilterDefineXML(xml)


def _filter_rules(root: etree._Element) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(str(el.tag), sorted((str(k), str(v)) for k, v in el.attrib.items()))
            for el in root.iter() if el.tag not in ("filter", "uuid")]


def define(conn: libvirt.virConnect, xml: str, txn: Transaction) -> libvirt.virDomain:
    # libvirt checks at define that a static AppArmor label names a loaded profile.
    names = apparmor.load_for(xml)
    if names:
        txn.did(f"loaded AppArmor profile {' '.join(names)}", lambda: apparmor.unload(names))
    # The undo is registered before the define: a Ctrl-C or SIGTERM that arrives while libvirt
    # defines it is raised the moment the call returns, before any line after it could record
    # the domain (a test that interrupts creates left such domains defined). It takes back
    # only the domain this define made: the one of that name whose state dir is ours.
    from lxml import etree

    name = str(etree.fromstring(xml.encode()).findtext("name"))
    state = xml_metadata(xml).get("state", "")
    txn.did(f"defining domain {name}", lambda: _undefine_ours(conn, name, state))
    try:
        dom = conn.defineXMLFlags(xml, DEFINE_VALIDATE)
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt refused the domain: {e.get_error_message()}") from e
    txn.did(f"defined domain {name}", lambda: None)  # (the fault-injection point of tests)
    return dom


def _undefine_ours(conn: libvirt.virConnect, name: str, state: str) -> None:
    dom = lookup(conn, name)
    if dom is not None and state and metadata(dom).get("state") == state:
        undefine(dom)


def redefine(conn: libvirt.virConnect, xml: str) -> None:
    """Replace the persistent definition of an existing domain (same name and UUID)."""
    apparmor.load_for(xml)
    try:
        conn.defineXMLFlags(xml, DEFINE_VALIDATE)
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt refused the changed domain: {e.get_error_message()}") from e


def undefine(dom: libvirt.virDomain) -> None:
    try:
        dom.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise HostError(f"cannot undefine {dom.name()}: {e.get_error_message()}") from e


def is_active(dom: libvirt.virDomain) -> bool:
    """Whether the domain runs (a transient one that ended is gone: "no"). A lost connection
    to libvirtd is an error, not a "no"."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise HostError(f"libvirt: {e.get_error_message()}",
                        "is libvirtd running? the sandbox itself keeps running") from e


def state_name(dom: libvirt.virDomain) -> str:
    state, _reason = domain_state(dom)
    return {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_BLOCKED: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTDOWN: "stopping",
        libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
        libvirt.VIR_DOMAIN_CRASHED: "crashed",
    }.get(state, "unknown")


# A few of libvirt-python's generated annotations do not match what its C glue takes or
# returns. mypy follows the binding's annotations (pyproject.toml), so these calls go through
# the wrappers below, each typed as the call really behaves.

def domain_state(dom: libvirt.virDomain) -> tuple[int, int]:
    """(state, reason); the annotation says str."""
    state, reason = cast(list[int], dom.state())
    return state, reason


def open_first_console(dom: libvirt.virDomain, stream: libvirt.virStream, flags: int) -> None:
    """Open the domain's first console: libvirt takes no device name for it (None), which
    the annotation (str) leaves out."""
    dom.openConsole(cast(str, None), stream, flags)


def pin_cpus(dom: libvirt.virDomain, cpus: tuple[bool, ...], flags: int) -> None:
    """Pin vCPU 0 and the emulator threads; the glue takes a tuple of booleans, one per host
    CPU, where the annotation says bytes."""
    dom.pinVcpuFlags(0, cast(bytes, cpus), flags)
    dom.pinEmulator(cast(bytes, cpus), flags)


def lease_addresses(dom: libvirt.virDomain) -> dict[str, dict[str, Any]]:
    """The DHCP leases of the domain's interfaces, by interface (the annotation says str)."""
    got = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
    return cast(dict[str, dict[str, Any]], got)
