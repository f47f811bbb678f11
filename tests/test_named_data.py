"""Paths the service's configuration names under /var and /srv are evidence (evidence.py,
confrefs.data_named): an administrator's site whose DocumentRoot is in /srv is served from
the sandbox (the host's, read-only), which without that evidence sees an empty /srv. Real
libvirtd and apache2; the site is the host's own configuration for the test's duration."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Env, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]

SITES = Path("/etc/apache2/sites-available")


@pytest.fixture
def srv_site() -> Iterator[tuple[str, int]]:
    """A site on its own port with its DocumentRoot in /srv, enabled on the host."""
    name = unique_name("vss-named-")
    port = 18000 + sum(map(ord, name)) % 1000
    root = Path("/srv") / name
    root.mkdir()
    (root / "index.html").write_text(f"{name}\n")
    conf = SITES / f"{name}.conf"
    conf.write_text(f"Listen {port}\n<VirtualHost *:{port}>\n  DocumentRoot {root}\n"
                    f"  <Directory {root}>\n    Require all granted\n  </Directory>\n"
                    "</VirtualHost>\n")
    link = Path("/etc/apache2/sites-enabled") / conf.name
    link.symlink_to(f"../sites-available/{conf.name}")
    try:
        yield name, port
    finally:
        link.unlink(missing_ok=True)
        conf.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_document_root_named_in_srv_is_served(env: Env, srv_site: tuple[str, int]) -> None:
    site, port = srv_site
    name = unique_name("named")
    env.run("create", "-u", "apache2.service", name, check=True)
    evidence = {e["path"]: e for e in json.loads(
        (env.state(name) / "evidence.json").read_text())["evidence"]}
    assert evidence[f"/srv/{site}"]["access"] == "shared"
    assert any(f"sites-available/{site}.conf" in r for r in evidence[f"/srv/{site}"]["reasons"])
    info = env.run("inspect", name, check=True).stdout
    assert f"/srv/{site}" in info, info
    env.run("start", "--detach", name, check=True, timeout=120)
    got = env.run("execute", name, "--", "curl", "-sS", "-m", "5",
                  f"http://127.0.0.1:{port}/", timeout=60)
    assert got.stdout == f"{site}\n", got
    # Read-only: the sandbox's root cannot change the host's site.
    wrote = env.run("execute", name, "--", "/bin/sh", "-c",
                    f"echo x > /srv/{site}/index.html", timeout=60)
    assert wrote.returncode != 0
    assert (Path("/srv") / site / "index.html").read_text() == f"{site}\n"
