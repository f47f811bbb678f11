"""The LXC domain: host root read-only, private /etc and /var, tmpfs /run /tmp /dev/shm.

Built with lxml element builders in the element order of libvirt's schema, never by string
formatting. Everything comes from the plan; nothing here reads the host.
"""

from __future__ import annotations

from typing import cast

from lxml import etree
from lxml.builder import ElementMaker

from .. import apparmor, devices
from ..config import IDMAP_COUNT
from ..host import HostFacts
from ..limits import caps_element, set_tunables
from ..network import host_device, interface_element
from ..plantypes import Mount, Plan
from .common import apparmor_label, metadata, selinux_label, what

E = ElementMaker()


def build(plan: Plan, facts: HostFacts, metadata_ns: str) -> str:
    cfg = plan.config
    dom = E.domain(
        E.name(cfg.name),
        *([E.uuid(apparmor.domain_uuid(cfg.machine_id))] if cfg.machine_id else []),
        E.title(f"virt-sandbox-service: {what(plan)}"),
        metadata(plan, metadata_ns),
        _os(plan),
        E.features(E.privnet(), caps_element(cfg)),
        E.clock(offset="utc"),
        E.on_poweroff("destroy"),
        E.on_reboot("restart"),
        E.on_crash("destroy"),
        E.devices(*_filesystems(plan.mounts),
                  *[interface_element(n, host_device(cfg.name, i))
                    for i, n in enumerate(cfg.networks)],
                  *map(_hostdev, cfg.devices), _console()),
        type="lxc",
    )
    if cfg.id_base is not None:
        idmap = E.idmap(E.uid(start="0", target=str(cfg.id_base), count=str(IDMAP_COUNT)),
                        E.gid(start="0", target=str(cfg.id_base), count=str(IDMAP_COUNT)))
        dom.insert(list(dom).index(dom.find("os")) + 1, idmap)
    set_tunables(dom, cfg, facts.memory_kib)
    # AppArmor: a profile of the sandbox's own, named after its machine-id (apparmor.py).
    profile = apparmor.profile_name(cfg.machine_id) if cfg.machine_id else None
    for label in (selinux_label(plan, facts), apparmor_label(facts.secmodels, profile)):
        if label is not None:
            dom.append(label)
    return etree.tostring(dom, pretty_print=True, encoding="unicode")


def _hostdev(spec: str) -> etree._Element:
    """--device: libvirt makes the node at the same path in the container's /dev and allows
    it in the container's device cgroup (misc: a character device; storage: a block one)."""
    dev = devices.parse(spec)
    source = E.source(E.char(dev.path) if dev.kind == "char" else E.block(dev.path))
    return cast(etree._Element, E.hostdev(source, mode="capabilities",
                                          type="misc" if dev.kind == "char" else "storage"))


def _os(plan: Plan) -> etree._Element:
    init, *args = plan.init
    os_el = cast(etree._Element, E.os(E.type("exe"), E.init(init)))
    for arg in args:
        os_el.append(E.initarg(arg))
    for name, value in plan.init_env:
        os_el.append(E.initenv(value, name=name))
    return os_el


def _filesystems(mounts: tuple[Mount, ...]) -> list[etree._Element]:
    out = []
    for m in mounts:
        if m.tmpfs_kib:
            fs = E.filesystem(E.source(usage=str(m.tmpfs_kib), units="KiB"),
                              E.target(dir=m.target), type="ram")
        elif m.image:
            fs = E.filesystem(E.driver(type="loop", format="raw"), E.source(file=m.source),
                              E.target(dir=m.target), type="file", accessmode="passthrough")
        else:
            fs = E.filesystem(E.source(dir=m.source), E.target(dir=m.target),
                              type="mount", accessmode="passthrough")
            if m.readonly:
                fs.append(E.readonly())
        out.append(fs)
    return out


def _console() -> etree._Element:
    return cast(etree._Element, E.console(E.target(type="lxc", port="0"), type="pty"))
