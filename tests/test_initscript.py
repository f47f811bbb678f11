"""Golden files for the sandbox's init (initscript.py), from the fixed inputs of
test_golden.py: the shell script an LXC sandbox's first process runs, its arguments and its
environment. Each script must also parse (`sh -n`) and be exactly what the domain carries.
`pytest --regenerate-output` rewrites the files after an intended change (review the diff).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from virt_sandbox_service.config import Driver, Kind
from virt_sandbox_service.initscript import CONFINE_IN_SANDBOX, generator_path, init_command
from virt_sandbox_service.plantypes import GENERATOR_DIRS, GENERATOR_PATH

from .conftest import GOLDEN
from .test_golden import CASES, FACTS, check_golden, make

LXC_CASES = sorted(c for c, (cfg, _, _) in CASES.items() if cfg.driver is Driver.LXC)


def init_text(case: str) -> str:
    p, _, _ = make(case)
    sh, dash_c, script, *args = p.init
    assert (sh, dash_c) == (FACTS.sh, "-c")
    env = "".join(f"# environment: {k}={v}\n" for k, v in p.init_env)
    return (f"#!{sh}\n# arguments: {shlex.join(args) or '(none)'}\n{env}"
            f"{script}\n")


@pytest.mark.parametrize("case", LXC_CASES)
def test_init_golden(case: str, regenerate: bool) -> None:
    check_golden(GOLDEN / f"init-{case}.sh", init_text(case), regenerate)


@pytest.mark.parametrize("case", LXC_CASES)
def test_init_parses_and_is_what_the_domain_runs(case: str) -> None:
    p, xml, _ = make(case)
    script = p.init[2]
    proc = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    os_el = etree.fromstring(xml.encode()).find("os")
    assert os_el is not None
    assert (os_el.findtext("init"), *(a.text for a in os_el.findall("initarg"))) == p.init
    assert tuple((e.get("name"), e.text) for e in os_el.findall("initenv")
                 if e.get("name") in dict(p.init_env)) == p.init_env


@pytest.mark.parametrize("case", LXC_CASES)
def test_init_confines_what_the_sandbox_runs(case: str) -> None:
    """Whatever the sandbox is for runs through confine.py, after every mount the init makes;
    nothing runs after it but the status report of a generic command."""
    cfg, _, _ = CASES[case]
    p, _, _ = make(case)
    lines = p.init[2].splitlines()
    jail = next(i for i, line in enumerate(lines) if CONFINE_IN_SANDBOX in line)
    assert not any(w in line for line in lines[jail + 1:] for w in ("mount ", "umount"))
    if cfg.kind is Kind.SERVICE:
        assert lines[jail].startswith("exec ") and lines[jail] == lines[-1]
        assert p.init_env == (("NOTIFY_SOCKET", "/run/sandbox-host/notify"),
                              ("SYSTEMD_GENERATOR_PATH", GENERATOR_PATH))
    else:
        assert lines[jail + 1:] == ["echo $rc > /run/sandbox-host/exit-status; exit $rc"]
        assert p.init[3] == "sandbox-init" and p.init_env == ()


def test_init_command_without_mounts_has_no_etc_stage() -> None:
    cfg, _, _ = CASES["apache2-overlay"]
    (_, _, script), _ = init_command(cfg, FACTS)
    assert "mount --rbind" not in script and "mount -t overlay" in script


def test_on_selinux_the_overlay_etc_is_mounted_with_the_sandboxs_file_context() -> None:
    """With SELinux the overlay /etc carries the sandbox's file type at its MCS pair (else it
    shows the host's labels: the sandbox may not replace ld.so.cache, and what it writes gets
    etc_t at s0), mounted by mount(2) itself: libmount drops context= inside the container."""
    import dataclasses

    from virt_sandbox_service.config import SandboxConfig
    from virt_sandbox_service.initscript import RAW_MOUNT, _overlay_binds

    cfg = SandboxConfig(name="w", kind=Kind.GENERIC, uri="lxc:///", state_dir="/s/w",
                        command=("/bin/true",), etc_overlay=True,
                        security_label="system_u:system_r:svirt_lxc_net_t:s0:c1,c2")
    plain = _overlay_binds(cfg, FACTS, ())[0]
    assert plain.startswith("mkdir ") and "mount -t overlay" in plain and "context=" not in plain
    facts = dataclasses.replace(FACTS, selinux=True, sandbox_file_type="svirt_sandbox_file_t")
    line = _overlay_binds(cfg, facts, ())[0]
    argv = shlex.split(line.split("&&", 1)[1].rsplit("||", 1)[0])
    assert argv[:5] == [facts.python, "-I", "-S", "-c", RAW_MOUNT]
    assert argv[5:7] == ["overlay", argv[6]] and argv[6].endswith("merged")
    assert argv[7].endswith(',context="system_u:object_r:svirt_sandbox_file_t:s0:c1,c2"')
    assert "lowerdir=/etc," in argv[7]
    # A label without a level (no MCS pair to give): no context, as without SELinux.
    bare = dataclasses.replace(cfg, security_label="")
    assert "context=" not in _overlay_binds(bare, facts, ())[0]


def test_only_the_services_own_generators_are_on_systemds_path(tmp_path: Path) -> None:
    """The generator lines run by sh against a made-up host: the sandbox's systemd searches
    GENERATOR_PATH only (its SYSTEMD_GENERATOR_PATH), which gets a link to each kept
    generator (the service's package's, named with a space too) in the first of systemd's
    directories that has it, an admin's /dev/null mask in /etc included; no other host
    generator is there. Nothing kept: no line at all (no process at start)."""
    dirs = [tmp_path / d.strip("/") for d in GENERATOR_DIRS]
    for d, names in zip(dirs, (["masked-one"], ["local-one"],
                               ["postfix-instance-generator", "a b", "masked-one"],
                               ["systemd-fstab-generator", "a b"]), strict=True):
        d.mkdir(parents=True)
        for n in names:
            (d / n).write_text("#!/bin/sh\n")
    (dirs[0] / "masked-one").unlink()
    (dirs[0] / "masked-one").symlink_to("/dev/null")
    path = tmp_path / GENERATOR_PATH.strip("/")
    text = "\n".join(generator_path(("postfix-instance-generator", "a b", "masked-one",
                                      "not-on-this-host")))
    # One pass, longest first: /lib/systemd/... is also the tail of /usr/lib/systemd/...
    alternatives = sorted((GENERATOR_PATH, *GENERATOR_DIRS), key=len, reverse=True)
    text = re.sub("|".join(map(re.escape, alternatives)),
                  lambda m: str(tmp_path) + m.group(0), text)
    subprocess.run(["sh", "-ec", text], check=True)
    assert {p.name: os.readlink(p) for p in path.iterdir()} == {
        "postfix-instance-generator": str(dirs[2] / "postfix-instance-generator"),
        "a b": str(dirs[2] / "a b"), "masked-one": str(dirs[0] / "masked-one")}
    assert generator_path(()) == []
