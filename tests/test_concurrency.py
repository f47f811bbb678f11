"""Parallel creates: distinct names all succeed with distinct labels; one name, one winner."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import CLI, ROOT, Env, domain_names, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]


def spawn(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})


def test_parallel_creates_get_distinct_labels(env: Env) -> None:
    names = [unique_name(f"par{i}-") for i in range(20)]
    procs = [spawn(env, "create", "-u", "apache2.service", n) for n in names]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert all(rc == 0 for rc, _ in results), [e for rc, e in results if rc]
    labels = []
    for n in names:
        cfg = json.loads((env.base / "config" / "sandboxes" / f"{n}.json").read_text())
        labels.append(cfg["security_label"])
    assert len(set(labels)) == len(names)
    assert set(names) <= set(domain_names())


def test_same_name_twice_exactly_one_wins(env: Env) -> None:
    name = unique_name("race")
    procs = [spawn(env, "create", "-u", "apache2.service", name) for _ in range(2)]
    results = sorted((p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs)
    assert [rc for rc, _ in results] == [0, 2]  # the loser: "already exists", bad input
    assert "already exists" in results[1][1]
    assert name in domain_names()
    assert (env.state(name) / ".virt-sandbox-service").read_text() == f"{name}\n"
