"""run -t: the command on a terminal of its own, driven from a real terminal emulator (tmux).

Each test starts a tmux server of its own (a private socket), with a shell in which it types
`run -t ...` as a user would, then reads the screen tmux shows. The terminal is tmux's, so
window size changes, raw mode and the restoring of the terminal afterwards are the real ones.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLI, ROOT, Env, domain_names, need

pytestmark = [pytest.mark.root, pytest.mark.libvirt]
WAIT = 90.0  # seconds: a busy shared host boots a run in ~0.3 s, but not always


class Tmux:
    """One tmux server and session; the shell in it has the tool's environment."""

    def __init__(self, base: Path, env: Env, rows: int = 30, cols: int = 100) -> None:
        self.sock = str(base / "tmux.sock")
        shell_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in
                             {**env.vars, "PYTHONPATH": str(ROOT), "PS1": "$ ",
                              "TERM": "screen"}.items())
        self.tmux("new-session", "-d", "-s", "t", "-x", str(cols), "-y", str(rows),
                  "-c", str(ROOT), f"env {shell_env} bash --norc --noprofile")
        self.mark = 0

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], check=True, text=True,
                              capture_output=True, timeout=30).stdout

    def type(self, text: str, enter: bool = True) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self.tmux("send-keys", "-t", "t", "Enter")

    def key(self, name: str) -> None:
        self.tmux("send-keys", "-t", "t", name)

    def screen(self, history: bool = True) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "t",
                         *(("-S", "-") if history else ()))

    def expect(self, pattern: str, history: bool = True) -> tuple[str, ...]:
        """Wait for `pattern` in the pane (after what earlier expects matched)."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + WAIT
        while True:
            text = self.screen(history)
            m = regex.search(text, self.mark if history else 0)
            if m:
                if history:
                    self.mark = m.end()
                return m.groups()
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen; the pane:\n{text}")
            time.sleep(0.2)

    def run_t(self, command: str) -> None:
        """Type a run -t of `command`, remembering the terminal's settings to compare."""
        cli = " ".join(map(shlex.quote, CLI))
        self.type(f"S0=$(stty -g); {cli} run -t -- {command}; echo RC=$?; "
                  '[ "$(stty -g)" = "$S0" ] && echo TERMINAL-RESTORED')

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True,
                       timeout=30)


@pytest.fixture
def term(env: Env, tmp_path: Path) -> Iterator[Tmux]:
    need(shutil.which("tmux") is not None, "needs tmux (scripts/setup.sh installs it)")
    t = Tmux(tmp_path, env)
    t.expect(r"^\$ ")
    yield t
    t.close()
    assert running(env) == []


def running(env: Env) -> list[str]:
    """The domains of this test's sandboxes and runs that still run."""
    import libvirt

    conn = libvirt.open("lxc:///")
    try:
        return [n for n in domain_names(under=env.base) + [
            d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            if d.name().startswith("vss-run-") and str(env.base) in d.XMLDesc(0)]
            if conn.lookupByName(n).isActive()]
    finally:
        conn.close()


def finished(t: Tmux) -> int:
    (rc,) = t.expect(r"RC=(\d+)$")
    t.expect(r"^TERMINAL-RESTORED$")
    return int(rc)


def test_a_terminal_of_the_sandboxs_own_with_our_size(term: Tmux) -> None:
    # The tty is a name inside the sandbox (its own devpts: not the host's tmux pty, which
    # the sandbox cannot name), it is the controlling terminal (/dev/tty opens), and its size
    # is tmux's window.
    term.run_t("/bin/sh -c 'tty; test -e \"$(tty)\" && echo NAMED; "
               "echo OPENS >/dev/tty; stty size; ls /dev/pts | wc -l; exit 3'")
    (name,) = term.expect(r"^(/dev/pts/\d+)\r?$")
    term.expect(r"^NAMED$")
    term.expect(r"^OPENS$")
    term.expect(r"^30 100$")
    (count,) = term.expect(r"^(\d+)$")
    assert int(count) <= 4, f"the sandbox's devpts holds {count} entries: the host's?"
    assert finished(term) == 3
    assert name.startswith("/dev/pts/")


def test_window_size_changes_reach_the_command(term: Tmux) -> None:
    term.run_t("/bin/bash --norc -c 'trap \"echo WINCH \\$(stty size)\" WINCH; echo READY; "
               "while :; do sleep 0.1; done'")
    term.expect(r"^READY$")
    term.tmux("resize-window", "-t", "t", "-x", "70", "-y", "20")
    term.expect(r"^WINCH 20 70$")
    term.key("C-c")
    assert finished(term) == 130


def test_ctrl_c_reaches_the_command_not_the_tool(term: Tmux) -> None:
    term.run_t("/bin/sh -c 'trap \"echo GOT-INT; exit 5\" INT; echo READY; "
               "while :; do sleep 0.1; done'")
    term.expect(r"^READY$")
    term.key("C-c")
    term.expect(r"GOT-INT$")
    assert finished(term) == 5
    assert "interrupted" not in term.screen()


def test_job_control_ctrl_z_and_fg(term: Tmux) -> None:
    term.run_t("/bin/bash --norc --noprofile -i")
    term.expect(r"bash-[\d.]+# $")
    term.type("sleep 300")
    time.sleep(1)
    term.key("C-z")
    term.expect(r"Stopped\s+sleep 300")
    term.type("jobs -l; fg")
    term.expect(r"^sleep 300\r?$")
    time.sleep(0.5)
    term.key("C-c")
    term.type("echo AFTER-FG $?")
    term.expect(r"^AFTER-FG 130$")
    term.type("exit 7")
    assert finished(term) == 7


def test_a_full_screen_program(term: Tmux) -> None:
    # top draws over the whole window (cursor addressing, the alternate screen), and sees
    # only the sandbox's processes; q ends it and the shell's screen comes back.
    need(shutil.which("top") is not None, "needs top (procps)")
    term.run_t("/usr/bin/top -d 1")
    (tasks,) = term.expect(r"^Tasks:\s+(\d+) total", history=False)
    assert int(tasks) <= 6, tasks  # the run's own PID namespace
    term.expect(r"^\s+PID USER\s+PR", history=False)
    assert "run -t" not in term.screen(history=False)  # top cleared the window to draw
    term.type("q", enter=False)
    assert finished(term) == 0
    assert "Tasks:" not in term.screen(history=False)  # the alternate screen is gone


def test_run_t_needs_a_terminal(env: Env) -> None:
    before = env.snapshot()
    proc = subprocess.run([*CLI, "run", "-t", "--", "/bin/true"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 125, proc
    lines = proc.stderr.splitlines()
    assert lines == ["virt-sandbox-service: error: run -t needs a terminal: standard input "
                     "is not one",
                     "virt-sandbox-service: hint: drop -t (the command then gets our stdin, "
                     "stdout and stderr as they are)"], proc.stderr
    assert env.snapshot() == before


@pytest.mark.kvm
def test_kvm_run_t_a_terminal_in_the_guest(term: Tmux) -> None:
    # The guest's own pty (script(1) on the host root it sees), at our size when it starts;
    # Ctrl-C travels as a byte down the stdin port and reaches the command's trap.
    from .test_run import reachable

    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    cli = " ".join(map(shlex.quote, CLI))
    term.type(f"S0=$(stty -g); {cli} run -t -c qemu:///system -- /bin/sh -c 'tty; stty size; "
              'trap "echo GOT-INT; exit 5" INT; echo READY; while :; do sleep 0.1; done\'; '
              'echo RC=$?; [ "$(stty -g)" = "$S0" ] && echo TERMINAL-RESTORED')
    term.expect(r"/dev/pts/\d+\r?$")
    term.expect(r"^30 100\r?$")
    term.expect(r"^READY\r?$")
    term.key("C-c")
    term.expect(r"GOT-INT\r?$")
    assert finished(term) == 5


def test_start_t_gives_a_generic_sandbox_our_terminal(env: Env, term: Tmux) -> None:
    # The command's terminal is the sandbox's console (a pty of its own devpts), of which it
    # is the controlling process: job control, Ctrl-C, our size and its changes, its status.
    env.run("create", "sttest", "--", "/bin/bash", "--norc", "--noprofile", "-i", check=True)
    cli = " ".join(map(shlex.quote, CLI))
    term.type(f"S0=$(stty -g); {cli} start -t sttest; echo RC=$?; "
              '[ "$(stty -g)" = "$S0" ] && echo TERMINAL-RESTORED')
    term.expect(r"bash-[\d.]+# $")
    term.type("tty; stty size")
    term.expect(r"^/dev/pts/\d+\r?$")
    term.expect(r"^30 100\r?$")
    term.type("sleep 300")
    time.sleep(1)
    term.key("C-z")
    term.expect(r"Stopped\s+sleep 300")
    term.type("fg")
    term.expect(r"^sleep 300\r?$")
    time.sleep(0.5)
    term.key("C-c")
    term.type("echo AFTER-FG $?")
    term.expect(r"^AFTER-FG 130\r?$")
    term.tmux("resize-window", "-t", "t", "-x", "70", "-y", "20")
    time.sleep(0.5)
    term.type("stty size; exit 4")
    term.expect(r"^20 70\r?$")
    assert finished(term) == 4
    assert "no job control" not in term.screen()


def test_start_t_is_refused_before_anything(env: Env) -> None:
    env.run("create", "stgen", "--", "/bin/true", check=True)
    proc = env.run("start", "-t", "--detach", "stgen")
    assert proc.returncode == 2 and "start -t stays in the foreground" in proc.stderr
    proc = env.run("start", "-t", "stgen")  # stdin is not a terminal here
    assert proc.returncode == 2 and "start -t needs a terminal" in proc.stderr
    kvm = env.run("create", "-c", "qemu:///system", "--dry-run", "stkvm", "--", "/bin/true")
    if kvm.returncode == 0:  # a KVM sandbox: its console is the guest's (connect)
        env.run("create", "-c", "qemu:///system", "stkvm", "--", "/bin/true", check=True)
        proc = env.run("start", "-t", "stkvm")
        assert proc.returncode == 2 and "start -t is for generic LXC sandboxes" in proc.stderr
    assert running(env) == []
