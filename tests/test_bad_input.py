"""Bad input and failures midway: one clear error line, exit 2 (bad input) or 1 (a failure
midway), nothing left behind."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import CLI, ROOT, Env, unique_name

LIBVIRT = pytest.mark.libvirt
ROOT_TIER = pytest.mark.root

BAD_CREATES = [
    (["create", "-u", "apache2.service", ""], "sandbox name is empty"),
    (["create", "-u", "apache2.service", "a/b"], "must not contain '/' or '..'"),
    (["create", "-u", "apache2.service", ".."], "must not contain '/' or '..'"),
    (["create", "-u", "apache2.service", "wéb"], "characters that are not allowed"),
    (["create", "-u", "apache2.service", "x" * 300], "300 characters long"),
    (["create", "-u", "no-such-daemon.service", "nx1"], "no-such-daemon.service"),
    (["create", "-u", "bad name!", "nx2"], "bad name!"),
    (["create", "-c", "xen:///", "-u", "apache2.service", "nx3"], "not a libvirt LXC or QEMU URI"),
    (["create", "nx4"], "nothing to run"),
    (["create", "-c", "qemu:///system", "--userns", "-u", "apache2.service", "nx15"],
     "--userns is for LXC sandboxes"),
    (["create", "-u", "apache2.service", "nx5", "--", "/bin/true"], "not both"),
    (["create", "nx6", "--", "true"], "must be an absolute path"),
    (["create", "-p", "relative/dir", "-u", "apache2.service", "nx7"], "not an absolute path"),
    (["create", "-p", "/etc/hostname", "-u", "apache2.service", "nx8"], "is not a directory"),
    (["create", "--memory", "lots", "-u", "apache2.service", "nx9"], "is not a size"),
    (["create", "-s", "magic", "-u", "apache2.service", "nx10"], "not a valid security mode"),
    (["create", "-s", "static,label=oops", "-u", "apache2.service", "nx11"],
     "is not an SELinux label"),
    (["create", "--private", "var/x", "-u", "apache2.service", "nx12"], "absolute"),
    (["create", "--private", "/etc", "-u", "apache2.service", "nx13"], "/etc"),
    (["create", "-P", "no-such-package-xyz", "-u", "apache2.service", "nx14"],
     "no-such-package-xyz"),
    (["create", "--syscall-allow", "@nosuch", "-u", "apache2.service", "nx16"],
     "'@nosuch' is not a group or call the sandbox denies"),
    (["create", "--cap-add", "cap_superpowers", "-u", "apache2.service", "nx17"],
     "'cap_superpowers' is not the name of a Linux capability"),
]


def assert_clean_error(proc: object, needle: str) -> None:
    rc, err = proc.returncode, proc.stderr  # type: ignore[attr-defined]
    assert rc == 2, err  # errors.EXIT_USAGE
    lines = err.strip().splitlines()
    assert lines[0].startswith("virt-sandbox-service: error: "), err
    assert needle in lines[0], err
    assert "Traceback" not in err
    assert all(line.startswith("virt-sandbox-service: ") for line in lines)


def run_without_libvirt(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The tool as on a host without libvirtd, and without root where the tests run
    unprivileged: as root, in a mount namespace of its own with an empty /run/libvirt, so
    that any connection fails; as anyone else, as it is."""
    cmd = [*CLI, *args]
    if os.geteuid() == 0:
        cmd = ["unshare", "-m", "sh", "-c", "if [ -d /run/libvirt ]; then mount -t tmpfs "
               'none /run/libvirt || exit 99; fi; exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})


def test_libvirt_is_out_of_reach_for_the_pure_cases(env: Env) -> None:
    proc = run_without_libvirt(env, "run", "--", "/bin/true")
    assert proc.returncode == 125 and "cannot connect to libvirt" in proc.stderr, proc.stderr


# Pure bad input: refused from the request alone, with neither root nor libvirt.
@pytest.mark.parametrize(("args", "needle"), BAD_CREATES,
                         ids=[f"{i}-{n[:24]}" for i, (_, n) in enumerate(BAD_CREATES)])
def test_bad_create_leaves_nothing(env: Env, args: list[str], needle: str) -> None:
    before = env.snapshot()
    assert_clean_error(run_without_libvirt(env, *args), needle)
    assert env.snapshot() == before


@pytest.mark.parametrize("cmd", ["start", "stop", "delete", "inspect", "execute", "limit",
                                 "connect", "reload", "upgrade"])
def test_unknown_sandbox(env: Env, cmd: str) -> None:
    assert_clean_error(run_without_libvirt(env, cmd, "nosuch"), "no sandbox named 'nosuch'")


def test_debug_shows_traceback(env: Env) -> None:
    proc = run_without_libvirt(env, "--debug", "start", "nosuch")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@ROOT_TIER
@LIBVIRT
def test_duplicate_name_is_refused(env: Env) -> None:
    name = unique_name("dup")
    env.run("create", "-u", "apache2.service", name, check=True)
    before = env.snapshot()
    assert_clean_error(env.run("create", "-u", "apache2.service", name),
                       f"a sandbox named '{name}' already exists")
    assert env.snapshot() == before


@ROOT_TIER
@LIBVIRT
def test_name_of_a_foreign_domain_is_refused(env: Env) -> None:
    import libvirt

    name = unique_name("foreign")
    conn = libvirt.open("lxc:///")
    dom = conn.defineXML(f"<domain type='lxc'><name>{name}</name><memory>65536</memory>"
                         "<os><type>exe</type><init>/bin/true</init></os></domain>")
    try:
        before = env.snapshot()
        assert_clean_error(env.run("create", "-u", "apache2.service", name),
                           f"a libvirt domain named '{name}' already exists")
        assert env.snapshot() == before
    finally:
        dom.undefine()


@ROOT_TIER
@LIBVIRT
@pytest.mark.parametrize("step", ["made ", "wrote ", "defined domain", "_sandbox.service"])
def test_failure_midway_rolls_back_exactly(env: Env, step: str) -> None:
    import os

    name = unique_name("fault")
    before = env.snapshot()
    os.environ["VSS_FAULT_AFTER"] = step
    try:
        proc = env.run("create", "-u", "apache2.service", name)
    finally:
        del os.environ["VSS_FAULT_AFTER"]
    assert proc.returncode == 1, proc.stderr  # errors.EXIT_FAILURE
    assert "injected fault" in proc.stderr
    after = env.snapshot()
    assert after["domains"] == before["domains"]
    new = set(after["files"]) - set(before["files"])  # type: ignore[arg-type]
    assert new <= {"config", "config/sandboxes", "state", "run", "units"}, new

