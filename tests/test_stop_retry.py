"""A stop asks libvirt again when it gave up on a process that would not die yet (pure: the
domain is a stand-in that fails its first destroys as libvirt does)."""

from __future__ import annotations

import libvirt
import pytest

from virt_sandbox_service.errors import HostError
from virt_sandbox_service.runtime import lxcstop as lxc


class StuckDomain:
    """Active until `fails` destroys have failed with libvirt's own error."""

    def __init__(self, fails: int) -> None:
        self.fails, self.calls, self.active = fails, 0, True

    def name(self) -> str:
        return "stuck"

    def isActive(self) -> bool:
        return self.active

    def destroy(self) -> int:
        self.calls += 1
        if self.calls <= self.fails:
            e = libvirt.libvirtError("internal error: Some processes refused to die")
            e.err = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_LXC, str(e), 2, "",
                     None, None, 0, 0)  # as libvirt fills it in
            raise e
        self.active = False
        return 0


def test_destroy_is_asked_again_until_the_processes_die() -> None:
    dom = StuckDomain(fails=lxc.DESTROY_TRIES - 1)
    lxc._force_stop(dom)  # type: ignore[arg-type]
    assert dom.calls == lxc.DESTROY_TRIES and not dom.active


def test_a_sandbox_that_never_dies_is_one_error_with_a_hint() -> None:
    dom = StuckDomain(fails=lxc.DESTROY_TRIES)
    with pytest.raises(HostError, match=r"cannot stop stuck: .*refused to die") as e:
        lxc._force_stop(dom)  # type: ignore[arg-type]
    assert dom.calls == lxc.DESTROY_TRIES and "stuck in the kernel" in (e.value.hint or "")
