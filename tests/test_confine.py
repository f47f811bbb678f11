"""The confinement's policy (confine.py): which calls and capabilities, given which options.
Pure; what it does to a real process is shown by tests/test_escapes.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from virt_sandbox_service import confine
from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.limits import confined_caps, init_caps, parse_syscall_allow

REQUIRED = ("mount", "umount2", "fsopen", "fsconfig", "fsmount", "move_mount", "open_tree",
            "mount_setattr", "pivot_root", "open_by_handle_at", "kexec_load",
            "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf",
            "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "setns")


def cfg(**kw: object) -> SandboxConfig:
    return SandboxConfig(name="s", kind=Kind.GENERIC, uri="lxc:///", state_dir="/s",
                         command=("/bin/true",), **kw)  # type: ignore[arg-type]


def test_the_default_filter_denies_what_the_issue_names() -> None:
    denied = confine.denied_calls(confine.CONFINED_CAPS, ())
    assert set(REQUIRED) <= set(denied)
    assert confine.restricts_namespaces(confine.CONFINED_CAPS, ())
    assert confine.restricts_sockets(confine.CONFINED_CAPS, ())
    assert "AF_VSOCK" in confine.FAMILIES and "AF_INET" not in confine.FAMILIES


def test_default_capabilities_are_a_daemons_not_an_admins() -> None:
    kept = set(confined_caps(cfg()))
    assert {"setuid", "setgid", "chown", "net_bind_service", "dac_override"} <= kept
    assert not kept & {"sys_admin", "dac_read_search", "sys_ptrace", "sys_module",
                       "sys_rawio", "net_admin", "mknod", "sys_time", "bpf", "perfmon"}


def test_a_capability_given_back_brings_its_calls() -> None:
    timed = cfg(caps_add=("sys_time",))
    assert "sys_time" in confined_caps(timed) and "sys_time" in init_caps(timed)
    denied = confine.denied_calls(confined_caps(timed), ())
    assert "clock_settime" not in denied and "adjtimex" not in denied
    assert "mount" in denied  # and nothing else
    # --cap-drop wins over the default set
    assert "chown" not in confined_caps(cfg(caps_drop=("chown",)))


def test_syscall_allow_by_group_or_call() -> None:
    # A bare name that is a group's is the group (ptrace: the @ptrace group).
    assert parse_syscall_allow(("keyring", "@mount", "ptrace", "kcmp")) == (
        "@keyring", "@mount", "@ptrace", "kcmp")
    allow = parse_syscall_allow(("@mount", "keyctl"))
    denied = confine.denied_calls(confine.CONFINED_CAPS, allow)
    assert "mount" not in denied and "fsopen" not in denied
    assert "keyctl" not in denied and "add_key" in denied
    assert not confine.restricts_sockets(confine.CONFINED_CAPS, ("@sockets",))


@pytest.mark.parametrize("bad", ["mkdir", "@nosuch", "", "vsock"])
def test_syscall_allow_refuses_what_is_not_denied(bad: str) -> None:
    with pytest.raises(UserError, match="is not a group or call the sandbox denies"):
        parse_syscall_allow((bad,))


def test_confine_script_refuses_bad_words_before_doing_anything() -> None:
    run = [sys.executable, "-I", "-S", confine.__file__]
    for args, text in ((["--bogus", "x", "--", "true"], "unknown option --bogus"),
                       (["--caps", "chown"], "no command after --")):
        proc = subprocess.run([*run, *args], capture_output=True, text=True, check=False)
        assert proc.returncode == 125 and text in proc.stderr
