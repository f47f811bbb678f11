"""create --dry-run changes nothing at all: not even the tool's run directory or lock file."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from .conftest import Env, domain_names, unique_name


def everything(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize("args", [
    ("-u", "apache2.service", "NAME"),
    ("-C", "-m", "host-bind:/srv=", "--memory", "256M", "NAME", "--", "/bin/true"),
])
def test_dry_run_touches_nothing(env: Env, args: tuple[str, ...]) -> None:
    name = unique_name("dry")
    before, domains = everything(env.base), domain_names(under=env.base)
    proc = env.run("create", "--dry-run", *(name if a == "NAME" else a for a in args))
    assert proc.returncode == 0, proc.stderr
    assert f"# {name}" in proc.stdout or name in proc.stdout
    assert everything(env.base) == before  # the run dir and its .lock included
    assert domain_names(under=env.base) == domains


@pytest.mark.root
@pytest.mark.libvirt
def test_dry_run_reads_libvirt_through_a_read_only_connection(env: Env) -> None:
    """Not a promise kept by care alone: the one connection --dry-run opens is one through
    which libvirt itself refuses every change."""
    import libvirt

    from virt_sandbox_service.config import Paths
    from virt_sandbox_service.create import CreateRequest, create

    opened: list[tuple[str, libvirt.virConnect]] = []
    real_open, real_ro = libvirt.open, libvirt.openReadOnly

    def spy(kind: str, real: Any) -> Any:
        def opener(uri: str) -> libvirt.virConnect:
            conn = real(uri)
            opened.append((kind, conn))
            return conn
        return opener

    paths = Paths.from_env(env.vars)
    name = unique_name("dryro")
    with mock.patch.object(libvirt, "open", spy("rw", real_open)), \
         mock.patch.object(libvirt, "openReadOnly", spy("ro", real_ro)):
        p = create(CreateRequest(name=name, units=("apache2.service",)), paths, dry_run=True)
    assert [kind for kind, _ in opened] == ["ro"]
    with pytest.raises(libvirt.libvirtError):  # what create would do, refused there
        opened[0][1].defineXML(p.domain_xml)
    assert name not in domain_names()
