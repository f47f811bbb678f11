"""Plan -> libvirt domain XML, one module per backend."""

from __future__ import annotations

from ..config import Driver
from ..host import HostFacts
from ..plan import Plan
from ..plantypes import METADATA_NS as METADATA_NS
from . import kvm, lxc


def domain_xml(plan: Plan, facts: HostFacts) -> str:
    if plan.config.driver is Driver.LXC:
        return lxc.build(plan, facts, METADATA_NS)
    return kvm.build(plan, facts, METADATA_NS)
