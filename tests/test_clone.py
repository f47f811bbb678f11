"""clone: same content, new identity, source untouched; bad clones leave nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import Env, domain_names, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)} {st.st_mode} {st.st_uid} {st.st_gid}".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def cfg(env: Env, name: str) -> dict[str, object]:
    return json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())


def test_clone_of_running_sandbox_serves_same_content_with_new_identity(env: Env) -> None:
    src, dst = unique_name("src"), unique_name("dst")
    env.run("create", "-u", "apache2.service", src, check=True)
    (env.state(src) / "var/www/html/index.html").write_text(f"<p>{src}</p>\n")
    env.run("start", "--detach", src, check=True)
    before = tree_digest(env.state(src) / "etc")
    env.run("clone", src, dst, check=True)
    assert tree_digest(env.state(src) / "etc") == before  # source untouched
    env.run("start", "--detach", dst, check=True)
    for name in (src, dst):
        out = env.run("execute", name, "--", "sh", "-c",
                      "curl -s localhost; hostname; cat /etc/machine-id", check=True).stdout
        page, hostname, machine_id = out.splitlines()
        assert page == f"<p>{src}</p>"
        assert hostname == name
        assert machine_id == cfg(env, name)["machine_id"]
    a, b = cfg(env, src), cfg(env, dst)
    assert a["security_label"] != b["security_label"]
    assert a["machine_id"] != b["machine_id"]
    assert (env.base / "units" / f"{dst}_sandbox.service").exists()
    info = json.loads(env.run("inspect", "--json", dst, check=True).stdout)
    assert info["origin"]["cloned_from"] == src
    assert info["origin"]["copy"] in ("reflink", "full copy")
    # The clone's journal is its own: none of the source's history came along.
    journal = env.state(dst) / "var/log/journal"
    assert {p.name for p in journal.iterdir()} <= {b["machine_id"]}


def test_clone_onto_existing_name_fails_cleanly(env: Env) -> None:
    a, b = unique_name("ca"), unique_name("cb")
    env.run("create", "-u", "apache2.service", a, check=True)
    env.run("create", "-u", "apache2.service", b, check=True)
    before = env.snapshot()
    proc = env.run("clone", a, b)
    assert proc.returncode == 2 and f"a sandbox named '{b}' already exists" in proc.stderr
    assert env.snapshot() == before
    proc = env.run("clone", "nosuch", unique_name("x"))
    assert proc.returncode == 2 and "no sandbox named 'nosuch'" in proc.stderr
    proc = env.run("clone", a, "bad/name")
    assert proc.returncode == 2 and "must not contain '/'" in proc.stderr
    assert env.snapshot() == before


def test_clone_failure_midway_rolls_back(env: Env) -> None:
    import os

    src, dst = unique_name("fs"), unique_name("fd")
    env.run("create", "-u", "apache2.service", src, check=True)
    before = env.snapshot()
    os.environ["VSS_FAULT_AFTER"] = "defined domain"
    try:
        proc = env.run("clone", src, dst)
    finally:
        del os.environ["VSS_FAULT_AFTER"]
    assert proc.returncode != 0 and "injected fault" in proc.stderr
    assert env.snapshot() == before
    assert dst not in domain_names()
