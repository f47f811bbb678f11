"""Domain XML pieces both backends share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from lxml import etree
from lxml.builder import ElementMaker

from ..host import HostFacts
from ..plantypes import Plan

E = ElementMaker()


def what(plan: Plan) -> str:
    """The domain's title: the confined units, or the generic command."""
    return plan.config.summary


def metadata(plan: Plan, ns: str) -> etree._Element:
    """Our metadata: marks the domain as ours and records kind, config and state paths."""
    m = ElementMaker(namespace=ns, nsmap={"vss": ns})
    cfg = plan.config
    return cast(etree._Element, E.metadata(m.sandbox(
        m.kind(cfg.kind.value),
        m.config(plan.config_path),
        m.state(plan.state_dir),
        *[m.unit(u) for u in cfg.units],
    )))


def selinux_label(plan: Plan, facts: HostFacts) -> etree._Element | None:
    """The sandbox's MCS label, only where the host's libvirt can honour it."""
    if not (facts.selinux and plan.config.security_label):
        return None
    return cast(etree._Element, E.seclabel(E.label(plan.config.security_label), type="static",
                                           model="selinux", relabel="no"))


def apparmor_label(secmodels: Sequence[str], profile: str | None = None) -> etree._Element | None:
    """libvirt's AppArmor confinement for an LXC domain, where the host's libvirt has the
    apparmor security model (`secmodels`: host.libvirt_secmodels of the LXC connection).

    Without `profile`: a dynamic label, for which libvirt makes the domain a profile of its
    own from /etc/apparmor.d/libvirt/TEMPLATE.lxc (abstractions/libvirt-lxc) and adds the
    domain's filesystem sources to it (virt-aa-helper). Saying so in the domain keeps it
    confined even where libvirt's security_default_confined is off. A dynamic label must say
    relabel='yes' (or nothing): libvirt refuses relabel='no' with it ("dynamic label type must
    use resource relabeling"), and so does the schema.
    With `profile`: a static label naming a profile already loaded on the host.
    """
    if "apparmor" not in secmodels:
        return None
    if profile is None:
        return cast(etree._Element, E.seclabel(type="dynamic", model="apparmor", relabel="yes"))
    return cast(etree._Element, E.seclabel(E.label(profile), type="static", model="apparmor",
                                           relabel="no"))
