"""The JSON OUTPUT section of the man page is exactly what list, inspect, upgrade, doctor and
create --dry-run print.

Every key the commands produce must be documented with its type, and every documented key
must be produced, except keys under an alternative the test sandbox does not take (the
interfaces of `network` for a sandbox without -N).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import Env, unique_name
from .test_docs import MAN

SCALARS: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "boolean": (bool,), "null": (type(None),),
    "object": (dict,),
}


def documented() -> dict[str, dict[str, str]]:
    """{section title ("list --json", ...): {key path: type}} from the man page."""
    text = MAN.read_text()
    part = text.split(".SH JSON OUTPUT\n", 1)[1].split("\n.SH ", 1)[0]
    out: dict[str, dict[str, str]] = {}
    for title, body in re.findall(r'^\.SS "([^"]+)"\n(.*?)(?=^\.SS |\Z)', part, re.M | re.S):
        keys = re.findall(r'^\.BR (\S+) " \(([^)]*)\)"$', body, re.M)
        out[title.replace("\\-", "-")] = dict(keys)
    return out


def type_ok(value: Any, typ: str) -> bool:
    for alt in typ.split(" or "):
        if alt in SCALARS and isinstance(value, SCALARS[alt]) \
                and not (alt == "integer" and isinstance(value, bool)):
            return True
        if alt == "object of strings" and isinstance(value, dict) \
                and all(isinstance(v, str) for v in value.values()):
            return True
        if alt == "object of values" and isinstance(value, dict):
            return True
        m = re.fullmatch(r"array of (\w+?)s", alt)
        if m and isinstance(value, list) and all(type_ok(v, m.group(1)) for v in value):
            return True
    return False


def flatten(value: Any, prefix: str, out: list[tuple[str, Any]]) -> None:
    """(key path, value) of every key in value; items of arrays of objects under "a[]"."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out.append((path, item))
            flatten(item, path, out)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                flatten(item, prefix + "[]", out)


def problems(doc: dict[str, str], objects: list[dict[str, Any]]) -> list[str]:
    produced: list[tuple[str, Any]] = []
    for obj in objects:
        flatten(obj, "", produced)
    found = []
    seen = {path for path, _ in produced}
    skip = {p for p, t in doc.items() if "object of" in t}  # free-form maps
    for path, value in produced:
        if any(path.startswith(s + ".") for s in skip):
            continue
        if path not in doc:
            found.append(f"{path}: produced, not documented")
        elif not type_ok(value, doc[path]):
            found.append(f"{path}: {value!r} is not {doc[path]}")
    # Parents whose children were observable: an object, or a non-empty array of objects.
    containers = {p for p, v in produced if isinstance(v, dict)}
    containers |= {p + "[]" for p, v in produced
                   if isinstance(v, list) and any(isinstance(i, dict) for i in v)}
    for path in doc:
        parent = path.rpartition(".")[0]
        if path not in seen and (not parent or parent in containers):
            found.append(f"{path}: documented, not produced")
    return sorted(set(found))


def test_checker_finds_each_kind_of_mismatch() -> None:
    doc = {"a": "string", "b": "array of objects", "b[].c": "integer or null", "d": "object",
           "d.e": "boolean", "n": "string or array of objects", "n[].x": "string",
           "o": "object of strings"}
    good = {"a": "x", "b": [{"c": None}, {"c": 1}], "d": {"e": True}, "n": "none",
            "o": {"free": "form"}}
    assert problems(doc, [good]) == []
    bad = {"a": 1, "b": [{"c": True, "z": 0}], "d": {}, "n": "none", "o": {}, "extra": []}
    assert problems(doc, [bad]) == [
        "a: 1 is not string", "b[].c: True is not integer or null",
        "b[].z: produced, not documented", "d.e: documented, not produced",
        "extra: produced, not documented"]


def test_every_json_command_has_a_section() -> None:
    assert set(documented()) == {"list --json", "inspect --json", "upgrade --json",
                                 "doctor --json", "create --dry-run --json"}
    assert all(len(keys) > 5 for keys in documented().values())
    from virt_sandbox_service.cli import build_parser

    from .test_docs import subparsers

    with_json = {name for name, sub in subparsers(build_parser()).items()
                 if any("--json" in a.option_strings for a in sub._actions)}
    assert with_json == {"list", "inspect", "upgrade", "doctor", "create"}


@pytest.mark.root
@pytest.mark.libvirt
def test_documented_keys_are_exactly_the_produced_ones(env: Env) -> None:
    name = unique_name("js")
    env.run("create", "-u", "apache2.service", name, check=True)
    # Give upgrade something to say about each of its keys.
    cfg_file = env.base / "config" / "sandboxes" / f"{name}.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["private"] = ["/var/lib/vss-json-doc", "/srv/vss-json-doc"]
    cfg_file.write_text(json.dumps(cfg))
    with (env.state(name) / "etc" / "apache2" / "ports.conf").open("a") as f:
        f.write("Listen 8081\n")
    # And a generic sandbox with what only it has: a user (-U) and an image (-i, which needs
    # a short state path: libvirt loop-mounts only paths under 64 bytes).
    short = Path(tempfile.mkdtemp(prefix="vj", dir="/var/tmp"))
    gen = unique_name("js")
    try:
        env.run("create", "-p", str(short), "-i", "16M", "-U", "5000", gen, "--", "/bin/true",
                check=True)
        inspected = [json.loads(env.run("inspect", "--json", n, check=True).stdout)
                     for n in (name, gen)]
        listed = json.loads(env.run("list", "--json", check=True).stdout)
    finally:
        env.run("delete", gen)
        shutil.rmtree(short, ignore_errors=True)
    doc = documented()
    outputs = {
        "list --json": listed,
        "inspect --json": inspected,
        "upgrade --json": json.loads(env.run("upgrade", "--json", name, check=True).stdout),
        "doctor --json": [json.loads(env.run("doctor", "--json").stdout)],
        "create --dry-run --json": [json.loads(env.run(
            "create", "--dry-run", "--json", "-C", "-u", "apache2.service", unique_name("js"),
            check=True).stdout)],
    }
    found = [f"{title}: {p}" for title, objects in outputs.items()
             for p in problems(doc[title], objects)]
    assert not found, "man page JSON OUTPUT and the real output differ:\n" + "\n".join(found)
