"""planner.build: one pure step from a config, host facts and inputs to the whole plan, for
create (and upgrade/limit), clone and run alike. No root: nothing here touches the host."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from lxml import etree

from virt_sandbox_service.config import Kind, Paths, SandboxConfig
from virt_sandbox_service.image import image_path
from virt_sandbox_service.planner import CloneSource, Inputs, UnitSource, build
from virt_sandbox_service.plantypes import (
    ETC_WORK,
    EVIDENCE_FILE,
    MARKER,
    CopyTree,
    MakeDir,
    MakeImage,
    WriteFile,
)

from .test_golden import APACHE_EVIDENCE, FACTS, HIDDEN, config

PATHS = Paths(config_dir=Path("/c"), state_parent=Path("/s"), unit_dir=Path("/u"),
              run_dir=Path("/r"))
APACHE = (UnitSource("apache2.service", "/lib/systemd/system/apache2.service"),)


def inputs(**kw: object) -> Inputs:
    base = Inputs(evidence=APACHE_EVIDENCE, hidden=HIDDEN, units=APACHE, paths=PATHS,
                  tool="/usr/bin/virt-sandbox-service",
                  conffiles=(("/etc/apache2/apache2.conf", "0" * 32),))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_a_create_plan_is_whole_and_made_of_nothing_but_its_arguments() -> None:
    # The state directory, config and unit paths exist nowhere: build reads none of them.
    cfg = config(state_dir="/nonexistent/web1")
    p = build(cfg, FACTS, inputs())
    assert p == build(cfg, FACTS, inputs())  # same arguments, same plan
    assert p.config_path == "/c/sandboxes/web1.json" and p.run_dir == "/r/web1"
    assert etree.fromstring(p.domain_xml.encode()).findtext("name") == "web1"
    (unit_path, text), = p.unit_files
    assert unit_path == "/u/web1_sandbox.service"
    assert "/usr/bin/virt-sandbox-service" in text
    record = p.files[-1]
    assert isinstance(record, WriteFile)
    assert record.path == f"/nonexistent/web1/{EVIDENCE_FILE}"
    data = json.loads(record.content)
    assert data["conffiles"] == {"/etc/apache2/apache2.conf": "0" * 32}
    assert {e["path"] for e in data["evidence"]} == {e.path for e in APACHE_EVIDENCE}


def test_a_unit_made_by_the_sysv_generator_is_written_into_the_sandboxs_etc() -> None:
    unit = UnitSource("old.service", "/etc/systemd/system/old.service", "[Unit]\n",
                      "/etc/init.d/old")
    p = build(config(units=("old.service",)), FACTS, inputs(units=(unit,)))
    written = {op.path: op for op in p.files if isinstance(op, WriteFile)}
    op = written["/var/lib/virt-sandbox-service/web1/etc/systemd/system/old.service"]
    assert op.content == "[Unit]\n" and op.managed
    assert "/etc/init.d/old" in op.reason


def clone_of(src: SandboxConfig, **kw: object) -> tuple[SandboxConfig, Inputs]:
    dst = dataclasses.replace(src, name="web2", state_dir="/s/web2",
                              machine_id="f" * 32, extra=(("copy", "reflink"),))
    return dst, inputs(clone_of=CloneSource(src, ("etc", "var"), ("/s/web1/var/log/journal/x",)),
                       **kw)


def test_a_clone_copies_the_sources_trees_then_writes_its_own_identity_over_them() -> None:
    src = config(state_dir="/s/web1", etc_overlay=True)
    dst, ins = clone_of(src)
    ops = build(dst, FACTS, ins).files
    copies = [op for op in ops if isinstance(op, CopyTree)]
    assert [(c.src, c.dst) for c in copies] == [("/s/web1/etc", "/s/web2/etc"),
                                                ("/s/web1/var", "/s/web2/var")]
    assert all(c.exclude == ("/s/web1/var/log/journal/x",) for c in copies)
    assert "reflink" in copies[0].reason
    written = [op.path for op in ops if isinstance(op, WriteFile)]
    identity = ["/s/web2/etc/hostname", "/s/web2/etc/machine-id", "/s/web2/etc/hosts"]
    # The identity after every copy (it overwrites the copied one); the record last.
    assert written[-4:] == [*identity, f"/s/web2/{EVIDENCE_FILE}"]
    last_copy = max(i for i, op in enumerate(ops) if isinstance(op, CopyTree))
    assert all(ops.index(op) > last_copy for op in ops
               if isinstance(op, WriteFile) and op.path in identity)
    assert f"/s/web2/{MARKER}" in written
    assert "/s/web2/etc/fstab" not in written  # the source's, copied: an admin's edit stays
    made = [op.path for op in ops if isinstance(op, MakeDir)]
    assert made[0] == "/s/web2" and f"/s/web2/{ETC_WORK}" in made
    machine_id = next(op for op in ops if isinstance(op, WriteFile)
                      and op.path.endswith("machine-id"))
    assert machine_id.content == "f" * 32 + "\n"


def test_a_clone_of_an_image_sandbox_copies_the_image_and_writes_the_identity_into_it() -> None:
    src = config(state_dir="/s/web1", image_size=2**30)
    dst, ins = clone_of(src)
    ops = build(dst, FACTS, ins).files
    image = [op for op in ops if isinstance(op, MakeImage)]
    assert [(i.path, i.source, i.drop) for i in image] == [
        (image_path("/s/web2"), image_path("/s/web1"), ("var/log/journal",))]
    # Staged: the identity is written into /s/web2/etc, then into the image's copy.
    assert ops.index(image[0]) > max(ops.index(op) for op in ops if isinstance(op, WriteFile)
                                     and op.path.endswith("hostname"))
    assert any(isinstance(op, MakeDir) and op.path == "/s/web2/etc" for op in ops)


def run_config(uri: str) -> SandboxConfig:
    return SandboxConfig(name="vss-run-0123abcd", kind=Kind.GENERIC, uri=uri, state_dir="",
                         command=("/bin/true",))


def test_a_run_is_a_transient_plan_with_no_files_and_its_init_in_the_domain() -> None:
    init = ("/bin/sh", "-c", "exec \"$@\"", "vss-run", "/bin/true")
    p = build(run_config("lxc:///"), FACTS, Inputs(init=init, init_env=(("PATH", "/bin"),)))
    assert p.files == () and p.unit_files == () and p.config_path == ""
    dom = etree.fromstring(p.domain_xml.encode())
    assert [a.text for a in dom.findall("os/initarg")] == list(init[1:])
    assert dom.findtext("os/init") == "/bin/sh"
    assert (p.mounts[0].target, p.mounts[0].readonly) == ("/", True)


def test_a_kvm_run_has_its_channels_in_the_run_directory() -> None:
    facts = dataclasses.replace(FACTS, kvm_kernel="/boot/vmlinuz", kvm_initrd="/c/initrd")
    p = build(run_config("qemu:///system"), facts, Inputs(run_dir="/r/vss-run-0123abcd"))
    dom = etree.fromstring(p.domain_xml.encode())
    sockets = {s.get("path") for s in dom.iter("source") if s.get("mode") == "bind"}
    assert sockets and all(os.path.dirname(s) == "/r/vss-run-0123abcd" for s in sockets)
