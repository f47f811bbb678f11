"""Plan -> libvirt domain XML, one module per backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Driver
from ..plantypes import METADATA_NS as METADATA_NS
from ..plantypes import Plan

if TYPE_CHECKING:
    from ..host import HostFacts


def domain_xml(plan: Plan, facts: HostFacts) -> str:
    # Each backend's builder is imported when used: a command imports only its own.
    if plan.config.driver is Driver.LXC:
        from . import lxc

        return lxc.build(plan, facts, METADATA_NS)
    from . import kvm

    return kvm.build(plan, facts, METADATA_NS)
