"""create --dry-run changes nothing at all: not even the tool's run directory or lock file."""

from __future__ import annotations

from pathlib import Path

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
