"""execute's stdio relay (runtime/stdiorelay.py), used where the caller's SELinux context has
an MLS range: the command's output and input pass whole, its exit status is its own, and a
process it leaves behind holding its output does not hold the caller."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

DRIVER = textwrap.dedent("""
    import os, sys
    from virt_sandbox_service.runtime.stdiorelay import Relay
    from virt_sandbox_service.runtime.lxcexec import _wait_status
    relay = Relay()
    pid = os.fork()
    if pid == 0:
        relay.child_side()
        os.execvp("sh", ["sh", "-c", sys.argv[1]])
    relay.parent_side()
    try:
        rc = _wait_status(pid)
    finally:
        relay.finish()
    sys.exit(rc)
""")


def relay(script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", DRIVER, script], input=stdin,
                          capture_output=True, timeout=60, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_output_input_and_status_pass_through() -> None:
    big = os.urandom(300_000).hex().encode()  # more than one chunk, more than a pipe holds
    r = relay("cat; echo to-stderr >&2; exit 7", big)
    assert r.returncode == 7, r.stderr
    assert r.stdout == big
    assert r.stderr == b"to-stderr\n"


def test_a_command_with_no_input_does_not_wait_for_it() -> None:
    r = relay("echo hello")
    assert (r.returncode, r.stdout) == (0, b"hello\n")


def test_a_background_process_holding_the_output_does_not_hold_the_caller() -> None:
    t0 = time.monotonic()
    r = relay("sleep 30 & echo started")
    assert r.returncode == 0 and r.stdout == b"started\n", r
    assert time.monotonic() - t0 < 20  # DRAIN, not the background sleep's 30 s
