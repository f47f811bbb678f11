"""Exit statuses: the man page's EXIT STATUS lists exactly the codes the tool chooses
(errors.EXIT_STATUS), and each of them is produced, by the parser or by the code, in a test
named in COVERED. Pure cases need neither root nor libvirt; the others are marked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from virt_sandbox_service import cli, errors, units, upgrade
from virt_sandbox_service.runtime import oneshot

from .conftest import CLI, ROOT, Env, unique_name

MAN = ROOT / "man" / "virt-sandbox-service.1"

# Each documented status, and the tests below that make the tool exit with it.
COVERED = {
    0: ["test_success_is_0"],
    1: ["test_host_failure_is_1"],
    2: ["test_usage_error_is_2", "test_bad_input_is_2"],
    3: ["test_drift_is_3_and_a_failed_unit_is_6"],
    6: ["test_drift_is_3_and_a_failed_unit_is_6"],
    125: ["test_run_usage_and_bad_input_are_125"],
    126: ["test_run_command_not_executable_is_126_not_found_127"],
    127: ["test_run_command_not_executable_is_126_not_found_127"],
    130: ["test_interrupted_run_is_130", "test_ctrl_c_in_a_generated_method_is_still_130"],
}


def documented() -> dict[int, str]:
    text = MAN.read_text()
    section = text.split(".SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    items = re.findall(r"^\.TP\n\.B (\d+)\n(.*?)(?=^\.TP|^\.PP|\Z)", section, re.M | re.S)
    return {int(code): body for code, body in items}


def test_man_page_lists_exactly_the_codes_the_tool_chooses() -> None:
    assert set(documented()) == set(errors.EXIT_STATUS)


def test_every_documented_code_has_a_test() -> None:
    here = globals()
    assert set(COVERED) == set(documented())
    missing = [t for tests in COVERED.values() for t in tests if t not in here]
    assert not missing, missing


def test_the_modules_use_the_documented_codes() -> None:
    assert upgrade.CHECK_DRIFT == errors.EXIT_DRIFT
    assert units.EXIT_NOT_CONFIGURED == errors.EXIT_NOT_CONFIGURED
    assert units.EXIT_INTERRUPTED == errors.EXIT_INTERRUPTED
    assert oneshot.EXIT_SETUP_FAILED == errors.EXIT_RUN_FAILED
    assert errors.UserError("x").exit_status == errors.EXIT_USAGE
    assert errors.HostError("x").exit_status == errors.EXIT_FAILURE


def run_cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    proc = env.run(*args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_success_is_0(env: Env) -> None:
    assert run_cli(env, "completion", "bash").returncode == 0
    assert run_cli(env, "create", "--help").returncode == 0


@pytest.mark.parametrize("args", [[], ["create"], ["nosuch"], ["start"], ["stop", "--timeout",
                                  "soon", "x"], ["create", "--etc", "tmpfs", "x"]])
def test_usage_error_is_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == errors.EXIT_USAGE


@pytest.mark.parametrize("args", [
    ["create", "-u", "apache2.service", "a/b"],
    ["create", "nx1"],
    ["create", "--memory", "lots", "-u", "apache2.service", "nx2"],
    ["create", "nx3", "--dry-run"],
    ["execute", "nx4"],
    ["upgrade"],
])
def test_bad_input_is_2(env: Env, args: list[str]) -> None:
    proc = run_cli(env, *args)
    assert proc.returncode == errors.EXIT_USAGE, proc.stderr
    assert proc.stderr.startswith("virt-sandbox-service: error: "), proc.stderr


@pytest.mark.parametrize("args", [
    ["run", "--bogus", "--", "/bin/true"],
    ["run", "--memory", "lots", "--", "/bin/true"],
    ["run", "--"],
    ["run", "--", ""],
    ["run", "-c", "xen:///", "--", "/bin/true"],
])
def test_run_usage_and_bad_input_are_125(env: Env, args: list[str]) -> None:
    proc = run_cli(env, *args)
    assert proc.returncode == errors.EXIT_RUN_FAILED, proc.stderr
    assert "virt-sandbox-service: error: " in proc.stderr


@pytest.mark.root
@pytest.mark.libvirt
def test_host_failure_is_1(env: Env) -> None:
    """A step on the host fails midway (an injected fault after the domain is defined)."""
    os.environ["VSS_FAULT_AFTER"] = "defined domain"
    try:
        proc = run_cli(env, "create", "-u", "apache2.service", unique_name("fail"))
    finally:
        del os.environ["VSS_FAULT_AFTER"]
    assert proc.returncode == errors.EXIT_FAILURE, proc.stderr
    assert "injected fault" in proc.stderr


@pytest.mark.root
@pytest.mark.libvirt
def test_run_command_not_executable_is_126_not_found_127(env: Env) -> None:
    assert run_cli(env, "run", "--", "/etc/hostname").returncode == errors.EXIT_CANNOT_EXECUTE
    assert run_cli(env, "run", "--", "/no/such/cmd").returncode == errors.EXIT_NOT_FOUND
    # ... and the command's own 125-127 come back as they are
    for code in (125, 126, 127):
        proc = run_cli(env, "run", "--", "/bin/sh", "-c", f"exit {code}")
        assert proc.returncode == code, proc.stderr


@pytest.mark.root
@pytest.mark.libvirt
def test_interrupted_run_is_130(env: Env) -> None:
    proc = subprocess.Popen([*CLI, "run", "--", "/bin/sleep", "30"], cwd=ROOT, text=True,
                            env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert "interrupted" in err


@pytest.mark.root
@pytest.mark.libvirt
def test_drift_is_3_and_a_failed_unit_is_6(env: Env) -> None:
    name = unique_name("rc")
    env.run("create", "-u", "apache2.service", name, check=True)
    etc = Path(env.state(name)) / "etc" / "apache2"
    with open(etc / "ports.conf", "a") as f:
        f.write("Listen 8080\n")  # an admin's edit: drift
    assert run_cli(env, "upgrade", "--check", name).returncode == errors.EXIT_DRIFT
    with open(etc / "apache2.conf", "a") as f:
        f.write("NotADirective on\n")
    proc = run_cli(env, "start", "--detach", name)
    assert proc.returncode == errors.EXIT_NOT_CONFIGURED, proc.stderr
    assert "NotADirective" in proc.stderr


def test_ctrl_c_in_a_generated_method_is_still_130(tmp_path: Path) -> None:
    """A Ctrl-C that lands while a module builds its dataclasses (exec() of a string, as
    `stop` loads config.py after its request) is handled like any other: status 130, not a
    death by SIGINT (CPython 3.11 marks it unhandled; `python -m` then kills itself)."""
    (tmp_path / "vss_ki.py").write_text(
        "import sys\n"
        "from virt_sandbox_service import cli\n"
        "def interrupted(args, paths):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "cli.cmd_list = interrupted\n"
        "sys.exit(cli.main(['list']))\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    proc = subprocess.run([CLI[0], "-m", "vss_ki"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == "virt-sandbox-service: interrupted"
