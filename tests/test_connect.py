"""connect: a login shell on a real terminal in a running sandbox.

The caller's terminal is a pty made here (no pexpect): the CLI runs as the session leader with
the pty's slave as its controlling terminal, exactly as in an interactive login, so window
size changes (TIOCSWINSZ on our master) reach it as SIGWINCH.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.runtime.connect import choose_login, parse_root_entry

from .conftest import CLI, ROOT, Env, unique_name
from .test_run import PYTHON_IGNORED

root_libvirt = [pytest.mark.root, pytest.mark.libvirt]


class Terminal:
    """The outer terminal: a pty whose slave is the CLI's controlling terminal."""

    def __init__(self, master: int, pid: int) -> None:
        self.master = master
        self.pid = pid
        self.out = b""
        self.status: int | None = None

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 15) -> tuple[str, ...]:
        """Wait for `pattern` in the output after the last match; return its groups."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern.encode())
        while True:
            m = regex.search(self.out)
            if m:
                self.out = self.out[m.end():]
                return tuple(g.decode(errors="replace") for g in m.groups())
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} not seen in {self.out!r}")

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the CLI and everything it started closed the terminal
            return False
        self.out += data
        return bool(data)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"connect did not end; output: {self.out!r}")


@contextmanager
def terminal(env: Env, *args: str, rows: int = 24, cols: int = 80) -> Iterator[Terminal]:
    master, slave = os.openpty()
    # The size is set before the CLI starts, so it is what connect reads.
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    environ = {**os.environ, **env.vars, "PYTHONPATH": str(ROOT), "TERM": "xterm"}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.chdir(ROOT)
            os.execve(CLI[0], [*CLI, *args], environ)
        finally:
            os._exit(126)
    os.close(slave)
    term = Terminal(master, pid)
    try:
        yield term
    finally:
        os.close(master)  # hangs up the CLI if the test failed midway
        deadline = time.monotonic() + 2
        while term.status is None and not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def start_apache(env: Env) -> str:
    name = unique_name("cn")
    env.run("create", "-u", "apache2.service", name, check=True)
    env.run("start", "--detach", name, check=True)
    return name


def state_of(env: Env, name: str) -> str:
    rows = json.loads(env.run("list", "--json", check=True).stdout)
    return str(next(r["state"] for r in rows if r["name"] == name))


@pytest.mark.root
@pytest.mark.libvirt
def test_connect_is_a_terminal_with_job_control_and_window_size(env: Env) -> None:
    name = start_apache(env)
    with terminal(env, "connect", name, rows=30, cols=100) as t:
        t.expect(r"Escape character is \^\]")
        t.send("echo PID:$$:; hostname; tty; stty size\r")
        pid, hostname, tty, size = t.expect(
            r"PID:(\d+):\r\n([^\r\n]*)\r\n([^\r\n]*)\r\n(\d+ \d+)\r\n")
        assert hostname == name
        assert re.fullmatch(r"/dev/pts/\d+", tty), tty
        assert size == "30 100"
        # A size change of the outer terminal reaches the shell's (SIGWINCH forwarded).
        t.resize(41, 123)
        time.sleep(0.3)
        t.send("stty size\r")
        assert t.expect(r"[\r\n](\d+ \d+)\r\n") == ("41 123",)
        # Signals at their default in what the shell runs (test_run: SIGNALS_SCRIPT).
        t.send("yes | head -1; grep -E '^SigIgn' /proc/self/status\r")
        _yes, mask = t.expect(r"[\r\n](y)\r\nSigIgn:\t([0-9a-f]+)\r\n")
        assert not int(mask, 16) & PYTHON_IGNORED, mask
        # Job control: the pty is the shell's controlling terminal, Ctrl-Z stops the job.
        t.send("sleep 60\r")
        time.sleep(0.5)
        t.send("\x1a")
        t.expect(r"Stopped\s+sleep 60")
        t.send("kill -KILL %1\r")
        # bash reports the job's end once its SIGCHLD handler has reaped it, which may come
        # a prompt or two later (before, the host's /root/.bashrc, hidden now, ran a prompt
        # hook whose commands made it reap at once): ask `jobs` until it does.
        for _ in range(10):
            time.sleep(0.3)
            t.send("jobs\r")
            if re.search(rb"Killed\s+sleep 60", t.out) or not t._read(0.5):
                break
        if not re.search(rb"Killed\s+sleep 60", t.out):
            t.send("ps -o pid,stat,args\r")
            time.sleep(0.5)
            t._read(0.5)
        t.expect(r"Killed\s+sleep 60")
        t.send("exit 7\r")
        assert t.wait() == 7  # the shell's own exit status
    assert int(pid) > 1
    assert state_of(env, name) == "running"
    # The shell is gone from the sandbox, nothing else was touched.
    proc = env.run("execute", name, "--", "systemctl", "is-active", "apache2.service")
    assert proc.stdout.strip() == "active"


@pytest.mark.root
@pytest.mark.libvirt
def test_ctrl_bracket_detaches_and_the_sandbox_keeps_running(env: Env) -> None:
    name = start_apache(env)
    with terminal(env, "connect", name) as t:
        t.expect(r"Escape character")
        t.send("echo PID:$$:\r")
        (shell_pid,) = t.expect(r"PID:(\d+):")
        t.send("\x1d")
        t.expect(rf"Detached from sandbox {name}")
        assert t.wait() == 0
    assert state_of(env, name) == "running"
    # The detached shell was hung up, not left behind in the sandbox.
    gone = env.run("execute", name, "--", "sh", "-c", f"sleep 0.5; test ! -e /proc/{shell_pid}")
    assert gone.returncode == 0


@pytest.mark.root
@pytest.mark.libvirt
def test_connect_refuses_a_stopped_sandbox(env: Env) -> None:
    name = unique_name("cn")
    env.run("create", "-u", "apache2.service", name, check=True)
    with terminal(env, "connect", name) as t:
        t.expect(rf"error: sandbox '{name}' is not running")
        assert t.wait() == 2


def write_config(env: Env, name: str, uri: str) -> None:
    cfg = SandboxConfig(name=name, kind=Kind.SERVICE, uri=uri,
                        state_dir=str(env.state(name)), units=("apache2.service",))
    sandboxes = env.base / "config" / "sandboxes"
    sandboxes.mkdir(parents=True, exist_ok=True)
    (sandboxes / f"{name}.json").write_text(cfg.to_json())


def test_connect_needs_a_terminal(env: Env) -> None:
    write_config(env, "ct1", "lxc:///")
    proc = env.run("connect", "ct1")  # stdin is not a terminal here
    assert proc.returncode == 2
    assert "connect needs a terminal" in proc.stderr and "execute ct1 --" in proc.stderr
    (env.base / "config" / "sandboxes" / "ct1.json").unlink()


def test_login_shell_comes_from_the_sandbox_passwd() -> None:
    passwd = "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\nroot:x:0:0:root:/root:/bin/zsh\n"
    assert parse_root_entry(passwd) == ("/bin/zsh", "/root")
    login = choose_login(passwd, lambda p: p == "/bin/zsh")
    assert (login.shell, login.home, login.note) == ("/bin/zsh", "/root", "")
    missing = choose_login(passwd, lambda p: False)
    assert missing.shell == "/bin/sh" and "'/bin/zsh' is not executable" in missing.note
    assert choose_login("", lambda p: True).shell == "/bin/sh"
    assert choose_login(None, lambda p: True).note
    # A second uid-0 entry (toor) does not win over root.
    assert parse_root_entry("toor:x:0:0::/:/bin/csh\nroot:x:0:0::/root:/bin/bash\n") == \
        ("/bin/bash", "/root")
