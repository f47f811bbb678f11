"""Domain XML pieces both backends share."""

from __future__ import annotations

from typing import cast

from lxml import etree
from lxml.builder import ElementMaker

from ..host import HostFacts
from ..plan import Plan

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
