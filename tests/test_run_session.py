"""run by a normal user: -c qemu:///session works through the user's own libvirt daemon; what
each other URI needs is said in one line, before anything is tried.

A throw-away user (made here, removed after) runs the tool with Debian's own python3 (the
venv's interpreter may live in root's home, which no other user can enter) and the checkout
on PYTHONPATH, as an unprivileged user with the tool installed would. The session run boots
one micro-VM (under TCG here, about 3 s with the user's boot files built first) whose output
two tests read; libvirt starts the user's session daemon (`libvirtd --timeout=120`, and its
virtlogd) for it, and the fixture ends those by PID before the user goes.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import CLI, ROOT, need

pytestmark = [pytest.mark.root]
SYSTEM_PYTHON = "/usr/bin/python3"
# What a user's shell would not carry over from root's: each would point the run elsewhere.
ROOTS_VARS = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "VSS_CACHE_DIR",
              "VSS_KVM_KERNEL")
PROBE = ("id -u; id -g; id -G; grep -c ^processor /proc/cpuinfo; "
         "grep -m1 '^model name' /proc/cpuinfo; echo err >&2; exit 3")


def _need_system_python() -> None:
    need(os.path.exists("/usr/sbin/useradd"), "needs useradd (passwd)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt, lxml, jinja2"],
                           capture_output=True)
    need(probe.returncode == 0, "needs Debian's python3-libvirt, -lxml, -jinja2 "
                                "(scripts/setup.sh)")


@pytest.fixture
def user() -> Iterator[str]:
    """A user without a home directory (useradd -M)."""
    _need_system_python()
    name = f"vssu{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=True)


def as_user(user: str, *args: str) -> list[str]:
    """The tool's command line for `user`, with none of root's own directories."""
    unset = [w for v in ROOTS_VARS for w in ("-u", v)]
    return ["runuser", "-u", user, "--", "env", *unset, f"PYTHONPATH={ROOT}",
            "PYTHONDONTWRITEBYTECODE=1", SYSTEM_PYTHON, "-m", "virt_sandbox_service.cli", *args]


def run_as(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_user(user, *args), capture_output=True, text=True, timeout=180,
                          cwd="/", stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("uri", "message"), [
    ("lxc:///", "run -c lxc:/// needs root: libvirt's LXC driver starts containers only "
                "for root"),
    ("qemu:///system", "run -c qemu:///system needs root: qemu:///system is the root-only "
                       "system daemon"),
])
def test_a_normal_user_is_told_what_each_uri_needs(user: str, uri: str, message: str) -> None:
    proc = run_as(user, "run", "-c", uri, "--", "/bin/date")
    assert proc.returncode == 125, proc
    assert proc.stderr.splitlines() == [f"virt-sandbox-service: error: {message}",
                                        "virt-sandbox-service: hint: run it as root (sudo)"]
    assert proc.stdout == ""


def test_a_session_run_without_a_home_says_so_before_anything(user: str) -> None:
    proc = run_as(user, "run", "-c", "qemu:///session", "--", "/bin/date")
    assert proc.returncode == 125, proc
    assert proc.stderr.splitlines()[0] == (
        "virt-sandbox-service: error: run -c qemu:///session needs your home directory: "
        f"/home/{user} does not exist")
    assert f"mkhomedir_helper {user}" in proc.stderr.splitlines()[1]
    assert subprocess.run(["pgrep", "-u", user], capture_output=True).returncode == 1


# --- a real session run --------------------------------------------------------------------


def _end_session_daemons(name: str) -> None:
    """The session libvirtd and virtlogd that libvirt started for this throw-away user: every
    process of that uid is ours. SIGTERM by PID, then wait for all of its processes (the
    powered-off qemu's zombie too) to be gone, so that userdel finds the user unused."""
    for daemon in ("libvirtd", "virtlogd"):
        found = subprocess.run(["pgrep", "-u", name, "-x", daemon], capture_output=True,
                               text=True).stdout.split()
        for pid in found:
            os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + 20
    while subprocess.run(["pgrep", "-u", name], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, subprocess.run(
            ["pgrep", "-a", "-u", name], capture_output=True, text=True).stdout
        time.sleep(0.2)


@dataclass
class SessionRun:
    user: str
    proc: subprocess.CompletedProcess[str]
    seconds: float
    leftovers: list[str]


@pytest.fixture(scope="module")
def session_run() -> Iterator[SessionRun]:
    """One session run by a user with a home and a supplementary group (users)."""
    _need_system_python()
    need(os.path.exists("/usr/sbin/libvirtd"), "needs libvirtd (libvirt-daemon)")
    name = f"vssh{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-G", "users", "-s", "/bin/sh", name], check=True)
    try:
        t0 = time.monotonic()
        proc = run_as(name, "run", "-c", "qemu:///session", "--", "/bin/sh", "-c", PROBE)
        seconds = time.monotonic() - t0
        run_dir = Path(f"/home/{name}/.cache/virt-sandbox-service/run")
        yield SessionRun(name, proc, seconds, sorted(os.listdir(run_dir))
                         if run_dir.is_dir() else ["<no run dir>"])
    finally:
        try:
            _end_session_daemons(name)
        finally:
            subprocess.run(["userdel", "-r", name], check=True, capture_output=True)


@pytest.mark.kvm
def test_a_normal_users_session_run_runs_as_that_user(session_run: SessionRun) -> None:
    import grp
    import pwd

    proc = session_run.proc
    assert proc.returncode == 3, proc
    assert proc.stderr == "err\n"
    entry = pwd.getpwnam(session_run.user)
    uid, gid, groups = proc.stdout.splitlines()[:3]
    assert (int(uid), int(gid)) == (entry.pw_uid, entry.pw_gid)
    assert set(map(int, groups.split())) == {entry.pw_gid, grp.getgrnam("users").gr_gid}
    assert session_run.leftovers == []  # its channels and console log are gone
    print(f"session run as {session_run.user}: {session_run.seconds:.1f} s")


@pytest.mark.kvm
def test_a_session_runs_proc_is_the_guests(session_run: SessionRun) -> None:
    """/proc/cpuinfo is the guest kernel's: one vCPU, and under TCG qemu's CPU model."""
    from virt_sandbox_service.host import kvm_choice

    lines = session_run.proc.stdout.splitlines()
    assert lines[3] == "1", session_run.proc
    host_model = next(x for x in Path("/proc/cpuinfo").read_text().splitlines()
                      if x.startswith("model name"))
    if not kvm_choice()[0]:  # TCG (this machine): the model qemu emulates
        assert "QEMU" in lines[4] and lines[4] != host_model, lines[4]


@pytest.mark.kvm
def test_root_on_qemu_session_gets_a_system_run() -> None:
    """libvirt serves root's qemu:///session from the system daemon: root's run is a
    qemu:///system run (root inside), not a refusal."""
    from .test_run import reachable

    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    proc = subprocess.run([*CLI, "run", "-c", "qemu:///session", "--", "/bin/sh", "-c",
                           "id -u; echo e >&2; exit 5"], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (5, "0\n", "e\n"), proc


@pytest.mark.kvm
def test_a_session_runs_window_is_on_the_screenshot() -> None:
    """run --graphics vnc by a normal user: the user's own qemu shows the display on
    loopback; in the guest the host's X server runs (root there) and the user's green xterm
    on it, found by its pixels through the screenshot API of the user's daemon (root reaches
    it at its socket). An interrupted run takes its domain down."""
    import libvirt

    from .test_graphics import GREEN_XTERM, find_run_domain, wait_for_window

    _need_system_python()
    need(os.access("/usr/bin/xterm", os.X_OK), "needs xterm (scripts/setup.sh installs it)")
    name = f"vssg{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    conn = None
    proc: subprocess.Popen[str] | None = None
    try:
        start = time.monotonic()
        proc = subprocess.Popen(as_user(name, "run", "--graphics", "vnc", "-c",
                                        "qemu:///session", "--", *GREEN_XTERM),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/")
        sock = Path(f"/home/{name}/.cache/libvirt/libvirt-sock")
        while not sock.exists():  # the user's daemon, started by the run's connection
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        conn = libvirt.open(f"qemu+unix:///session?socket={sock}")
        dom = find_run_domain(conn, set(), proc)
        assert isinstance(dom, libvirt.virDomain)
        assert 'address="127.0.0.1"' in dom.XMLDesc(0).replace("'", '"')
        wait_for_window(dom, start, lambda: proc is not None and proc.poll() is None,
                        f"run: {proc.poll()}")
        # To the tool itself: runuser would pass it on but end by the signal too.
        (tool,) = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(tool), signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.startswith("virt-sandbox-service: display: vnc://127.0.0.1:"), err
        deadline = time.monotonic() + 20
        while conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            assert time.monotonic() < deadline, "the run's domain was left running"
            time.sleep(0.1)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if conn is not None:
            conn.close()
        try:
            _end_session_daemons(name)
        finally:
            subprocess.run(["userdel", "-r", name], check=True, capture_output=True)
