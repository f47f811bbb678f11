"""Escapes: what a root inside a sandbox tries, refused in every way a sandbox runs, and each
shown to work outside, on the same host, where nothing but a plain private namespace is in the
way (so that a refusal inside is the sandbox's doing, not the kernel's or the probe's).

tests/escape_probe.py makes the attempts, one line each; it runs with the host's python from the
host root, which every sandbox sees read-only.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import escape_probe
from .conftest import Env, need, tool_env, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]

def _visible_probe() -> Path:
    """The probe where every sandbox sees it: the host root is shared, but /tmp, /var, /etc,
    /run are the sandbox's own (a checkout may be there, as CI's clone may be)."""
    src = Path(__file__).resolve().parent / "escape_probe.py"
    if not any(str(src).startswith(t + "/") for t in ("/tmp", "/var", "/etc", "/run", "/dev")):
        return src
    dst = Path("/usr/local/lib/vss-tests/escape_probe.py")  # (not /root: hidden there)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


PROBE = _visible_probe()
PROBE_ARGV = ["/usr/bin/python3", "-I", "-S", str(PROBE)]
ATTEMPTS = tuple(escape_probe.ATTEMPTS)
VERDICTS = ("allowed", "denied", "absent", "error")
MIN_PAIRS = 30  # attempts that must work outside and be refused inside
# What this machine refuses even to its own root with every capability, so that the attempt
# shows nothing outside: reading the raw disk of the root file system (EPERM here).
HOST_MAY_REFUSE = {"read-raw-disk"}
# What a root without any capability may still do outside: inside, only the seccomp filter (or
# a read-only mount) stops these.
UNPRIVILEGED = {"open-core-pattern-write", "open-sysfs-write", "unshare-user",
                "keyctl-join-session", "add-key", "request-key", "io-uring-setup",
                "set-mempolicy", "socket-vsock",
                # On a standard host (the test host VM) root owns both files, so DAC lets it
                # in without capabilities; inside, /proc's read-only mount and a /dev with no
                # disks stop them.
                "open-sysrq-trigger-write", "read-raw-disk"}
CAP_SYS_ADMIN = 21

# The outside: a private mount, PID, UTS and IPC namespace of the host's, shaped like a
# sandbox's where the probe attacks a mount (a read-only bind of the root, read-only binds of
# /proc/sys and /sys, an overlay over an "etc"), all on scratch directories. The shell stays
# PID 1 (the `exit` keeps it from exec'ing the probe): the target of the PID 1 attempts.
SHAPE = r"""
set -e
S=$1; shift
mkdir "$S/root" "$S/procsys" "$S/sys" "$S/etc" "$S/etc-up" "$S/etc-work" "$S/scratch"
mount --bind / "$S/root"; mount -o remount,bind,ro "$S/root"
mount --bind /proc/sys "$S/procsys"; mount -o remount,bind,ro "$S/procsys"
mount --bind /sys "$S/sys"; mount -o remount,bind,ro "$S/sys"
mount -t overlay -o "lowerdir=/etc,upperdir=$S/etc-up,workdir=$S/etc-work" etc "$S/etc"
set +e
"$@" --root-ro "$S/root" --proc-sys "$S/procsys" --sys "$S/sys" --etc "$S/etc" \
    --scratch "$S/scratch"
exit $?
"""
UNSHARE = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--uts", "--ipc"]
NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]

UNIT = """\
[Unit]
Description=virt-sandbox-service escape probe (tests/test_escapes.py)

[Service]
Type=oneshot
RemainAfterExit=yes
StateDirectory={name}
ExecStart=/bin/sh -c '{probe} --in-sandbox > /var/lib/{name}/out 2>&1'

[Install]
WantedBy=multi-user.target
"""

Results = dict[str, tuple[str, str]]


def parse(out: str) -> Results:
    """NAME -> (verdict, detail) from the probe's lines; whatever else is printed is skipped."""
    results: Results = {}
    for line in out.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2 and parts[0] in ATTEMPTS and parts[1] in VERDICTS:
            results[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else "")
    return results


def complete(out: str, where: str) -> Results:
    results = parse(out)
    missing = [n for n in ATTEMPTS if n not in results]
    assert not missing and "\nSUMMARY " in "\n" + out, \
        f"{where}: the probe did not finish (no line for {missing}):\n{out}"
    return results


def shown(results: Results, names: list[str]) -> str:
    return "\n".join(f"  {n} {' '.join(results[n])}".rstrip() for n in names)


def outside(scratch: Path, *args: str, prefix: tuple[str, ...] = ()) -> str:
    scratch.mkdir()
    proc = subprocess.run([*UNSHARE, "/bin/sh", "-c", SHAPE, "shape", str(scratch), *prefix,
                           *PROBE_ARGV, *args], capture_output=True, text=True, timeout=60)
    assert "SUMMARY " in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def free(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """The probe outside, as root with every capability and no filter."""
    return complete(outside(tmp_path_factory.mktemp("outside") / "s"), "outside")


@pytest.fixture(scope="module")
def menv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One tool environment for the module: its sandboxes serve several tests."""
    yield from tool_env(tmp_path_factory.mktemp("escapes") / "vss")


@pytest.fixture(scope="module")
def probe_unit() -> Iterator[str]:
    """A host unit whose service is the probe, writing into its StateDirectory."""
    assert re.fullmatch(r"[\w/.-]+", str(PROBE)), f"{PROBE}: no quoting in the unit for this"
    name = unique_name("vss-escape-probe-")
    path = Path("/etc/systemd/system") / f"{name}.service"
    path.write_text(UNIT.format(name=name, probe=" ".join(PROBE_ARGV)))
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def probe_box(menv: Env, probe_unit: str) -> str:
    """A unit sandbox confining the probe's unit, running (its probe ran at boot)."""
    name = unique_name("escu")
    menv.run("create", "-u", f"{probe_unit}.service", name, check=True)
    menv.run("start", "--detach", name, check=True)
    return name


@pytest.fixture(scope="module")
def web(menv: Env) -> str:
    name = unique_name("escw")
    menv.run("create", "-u", "apache2.service", name, check=True)
    menv.run("start", "--detach", name, check=True)
    return name


def unit_output(env: Env, box: str, unit: str) -> str:
    out = env.state(box) / "var" / "lib" / unit / "out"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = out.read_text() if out.exists() else ""
        if "SUMMARY " in text:
            return text
        time.sleep(0.2)
    return out.read_text() if out.exists() else f"(no {out})"


def inside(context: str, env: Env, request: pytest.FixtureRequest) -> str:
    probe = [*PROBE_ARGV, "--in-sandbox"]
    if context == "generic":  # the sandbox's command; start in the foreground relays stdout
        name = unique_name("escg")
        env.run("create", name, "--", *probe, check=True)
        proc = env.run("start", name, timeout=60)
        env.run("delete", "--force", name)
        return proc.stdout + proc.stderr
    if context == "run":
        proc = env.run("run", "--", *probe, timeout=60)
        return proc.stdout + proc.stderr
    box = request.getfixturevalue("probe_box")
    if context == "unit":  # the confined unit's service, under the sandbox's systemd
        return unit_output(env, box, request.getfixturevalue("probe_unit"))
    proc = env.run("execute", box, "--", *probe, timeout=60)  # entering a running sandbox
    return proc.stdout + proc.stderr


def test_outside_the_attempts_work_and_need_privilege(free: Results, tmp_path: Path) -> None:
    """The calibration: with every capability and no filter (the unshare's shape) each attempt
    works, or has nothing to work on here; without any capability, all but a few fail. So the
    probe's "allowed" (some of which are an errno past the permission check, like EINVAL for
    a bad reboot magic) means what it says."""
    refused = [n for n, (v, _) in free.items() if v != "allowed" and v != "absent"
               and n not in HOST_MAY_REFUSE]
    assert not refused, "refused outside, where nothing should stop them:\n" \
        + shown(free, refused)
    works = [n for n, (v, _) in free.items() if v == "allowed"]
    assert len(works) >= MIN_PAIRS, shown(free, list(free))
    bare = complete(outside(tmp_path / "s", prefix=tuple(NO_CAPS)), "outside, no capabilities")
    unexpected = [n for n in works if bare[n][0] != "denied" and n not in UNPRIVILEGED]
    assert not unexpected, "work outside without any capability:\n" + shown(bare, unexpected)


@pytest.mark.parametrize("context", ["generic", "run", "unit", "execute"])
def test_every_attempt_is_refused_inside(context: str, free: Results, menv: Env,
                                         request: pytest.FixtureRequest) -> None:
    out = inside(context, menv, request)
    results = complete(out, context)
    escaped = [n for n, (v, _) in results.items() if v in ("allowed", "error")]
    assert not escaped, f"{context}: NOT refused inside the sandbox:\n" \
        + shown(results, escaped)
    # Each attempt that works outside is refused inside: not merely absent, which would
    # prove nothing.
    works = [n for n, (v, _) in free.items() if v == "allowed"]
    slipped = [f"  {n}: outside {' '.join(free[n])}, inside {' '.join(results[n])}"
               for n in works if results[n][0] != "denied"]
    assert not slipped, f"{context}: works outside, not refused inside:\n" + "\n".join(slipped)
    assert len(works) >= MIN_PAIRS


def test_another_sandboxs_files_are_out_of_reach(menv: Env, probe_box: str, web: str,
                                                 tmp_path: Path) -> None:
    """A file in sandbox b's private /var, reached from sandbox a neither by a file handle
    (open_by_handle_at needs no path: outside, the same handle reads it) nor by any path."""
    secret = menv.state(web) / "var" / "lib" / "apache2" / unique_name("secret-of-b-")
    secret.write_text("b's secret\n")
    handle = escape_probe.handle_of(str(secret))
    out = parse(outside(tmp_path / "s", "--handle", handle, "open-by-handle-given"))
    assert out["open-by-handle-given"] == ("allowed", "read-11-bytes"), out
    proc = menv.run("execute", probe_box, "--", *PROBE_ARGV, "--in-sandbox", "--handle",
                    handle, "open-by-handle-given")
    assert parse(proc.stdout).get("open-by-handle-given", ("",))[0] == "denied", \
        proc.stdout + proc.stderr
    script = (f"cat {shlex.quote(str(secret))} 2>&1; "
              f"find / -xdev -name {secret.name} 2>/dev/null | wc -l; "
              f"ls {shlex.quote(str(menv.base))}/state 2>&1")
    lines = menv.run("execute", probe_box, "--", "/bin/sh", "-c", script).stdout.splitlines()
    assert "No such file or directory" in lines[0], lines
    assert lines[1] == "0", lines
    assert "No such file or directory" in lines[2], lines


# Run inside: read a file and connect to a unix socket at the paths given.
READ_AND_CONNECT = ("cat \"$1\"; ls \"$3\"; /usr/bin/python3 -c 'import socket, sys; "
                    "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                    "print(\"connected\")' \"$2\"")


def test_the_hosts_private_trees_are_out_of_reach(menv: Env, web: str) -> None:
    """The host's /root and /home hold what no sandbox may read (root's shell history, ssh
    keys, a user's files) or reach (a unix socket there: a read-only mount does not stop a
    connect). Where no LSM or user namespace holds it back, a sandbox's root is the host's
    root, so only their hiding (plan.hidden_trees) keeps them out: in a sandbox given the
    same directory with --shared, everything else alike, the same attempts work."""
    private = Path("/root") / unique_name(".vss-private-")
    private.mkdir(mode=0o700)
    home = Path("/home") / unique_name("vss-user-")
    home.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX)
    try:
        (private / "secret").write_text("root's secret\n")
        (private / "secret").chmod(0o600)
        (home / "mail").write_text("a user's mail\n")
        server.bind(str(private / "admin.sock"))
        server.listen(4)
        argv = ("/bin/sh", "-c", READ_AND_CONNECT, "sh", str(private / "secret"),
                str(private / "admin.sock"), str(home))
        hidden = menv.run("execute", web, "--", *argv)
        out = hidden.stdout + hidden.stderr
        assert "root's secret" not in out and "connected" not in out, out
        assert "mail" not in hidden.stdout, out
        assert out.count("No such file or directory") >= 3, out
        shared = unique_name("escs")
        menv.run("create", "--shared", str(private), "--shared", str(home), shared, "--",
                 *argv, check=True)
        seen = menv.run("start", shared, timeout=60)
        menv.run("delete", "--force", shared)
        assert "root's secret" in seen.stdout and "connected" in seen.stdout, \
            seen.stdout + seen.stderr
        assert "mail" in seen.stdout, seen.stdout
    finally:
        server.close()
        shutil.rmtree(private)
        shutil.rmtree(home)


def test_a_closed_directory_deeper_down_is_out_of_reach(menv: Env) -> None:
    """An administrator's 0700 directory below a world-searchable one (/srv/SITE/keys, two
    levels down here) holds a secret and a listening socket: a sandbox made after it exists
    reads and reaches neither (host.private_trees looks PRIVATE_DEPTH levels down); the same
    sandbox given it with --shared does both."""
    need(Path("/srv").is_dir(), "Debian's base system has /srv")
    site = Path("/srv") / unique_name("vss-site-")
    keys = site / "keys"
    keys.mkdir(parents=True)
    keys.chmod(0o700)
    server = socket.socket(socket.AF_UNIX)
    try:
        (keys / "secret").write_text("the site's key\n")
        (keys / "secret").chmod(0o600)
        server.bind(str(keys / "admin.sock"))
        server.listen(4)
        argv = ("/bin/sh", "-c", READ_AND_CONNECT, "sh", str(keys / "secret"),
                str(keys / "admin.sock"), str(site))
        seen = {}
        for how in ((), ("--shared", str(keys))):
            name = unique_name("escd")
            menv.run("create", *how, name, "--", *argv, check=True)
            ran = menv.run("start", name, timeout=60)
            menv.run("delete", "--force", name)
            seen[how] = ran.stdout + ran.stderr
        hidden, shown = seen[()], seen[("--shared", str(keys))]
        assert "the site's key" not in hidden and "connected" not in hidden, hidden
        assert "keys" in hidden, hidden  # the directory above it is the host's, as it is
        assert "the site's key" in shown and "connected" in shown, shown
    finally:
        server.close()
        shutil.rmtree(site)


def cap_line(text: str, field: str) -> int:
    match = re.search(rf"^{field}:\s*([0-9a-f]+)$", text, re.M)
    assert match, f"no {field} in:\n{text}"
    return int(match.group(1), 16)


def service_caps(env: Env, box: str, unit: str) -> str:
    """/proc/PID/status of the confined service's main process."""
    pid = f"$(systemctl show -p MainPID --value {unit})"
    script = f"grep -E '^(CapBnd|CapEff|Seccomp):' /proc/{pid}/status"
    return env.run("execute", box, "--", "/bin/sh", "-c", script, check=True).stdout


# What a unit the sandbox's systemd starts for us runs: its capabilities, then the remount.
ESCAPE = "grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status; " \
         "mount -o remount,rw / && echo ESCAPED"


def test_the_confined_service_itself(menv: Env, web: str) -> None:
    status = service_caps(menv, web, "apache2")
    assert not cap_line(status, "CapBnd") >> CAP_SYS_ADMIN & 1, status
    assert cap_line(status, "Seccomp") == 2, status


def test_transient_units_get_no_more_than_the_service(menv: Env, web: str) -> None:
    """systemd-run talks to the sandbox's own systemd over its private socket; that systemd
    runs confined, so what it starts is too, even when asked for CAP_SYS_ADMIN."""
    service = cap_line(service_caps(menv, web, "apache2"), "CapBnd")
    run = ["systemd-run", "--wait", "--pipe", "--quiet"]
    asking = ["-p", "AmbientCapabilities=CAP_SYS_ADMIN",
              "-p", "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_READ_SEARCH"]
    for extra in ([], asking):
        proc = menv.run("execute", web, "--", *run, *extra, "/bin/sh", "-c", ESCAPE)
        out = proc.stdout + proc.stderr
        assert "ESCAPED" not in out, out
        assert "CapBnd" in out, out  # the unit ran
        assert cap_line(out, "CapBnd") & ~service == 0, out
        assert cap_line(out, "Seccomp") == 2, out
        assert "mount: /: permission denied" in out, out


def test_a_unit_file_written_inside_gets_no_more(menv: Env, web: str) -> None:
    """A unit file written into the sandbox: /etc/systemd/system is read-only; one written
    where the sandbox can write unit files (/run/systemd/system, its tmpfs) and loaded by a
    daemon-reload runs as confined as everything else, whatever it asks for."""
    unit = unique_name("vss-planted-")
    lines = ["[Service]", "Type=oneshot",
             "AmbientCapabilities=CAP_SYS_ADMIN CAP_DAC_READ_SEARCH CAP_SYS_MODULE",
             f"ExecStart=/bin/sh /run/{unit}.sh"]
    printf = "printf '%s\\n' " + " ".join(shlex.quote(x) for x in lines)
    script = (f"{printf} > /etc/systemd/system/{unit}.service; echo etc=$?; "
              f"if [ -f /etc/systemd/system/{unit}.service ]; then d=/etc; else d=/run; "
              f"mkdir -p /run/systemd/system && {printf} > /run/systemd/system/{unit}.service;"
              " fi; "
              f"printf '%s\\n' 'exec >/run/{unit}.out 2>&1' {shlex.quote(ESCAPE)} 'exit 0' "
              f"> /run/{unit}.sh; "
              f"systemctl daemon-reload && systemctl start {unit}.service; echo start=$?; "
              f"echo loaded-from=$d; cat /run/{unit}.out")
    proc = menv.run("execute", web, "--", "/bin/sh", "-c", script, timeout=60)
    out = proc.stdout + proc.stderr
    assert "start=0" in out, out
    assert "CapBnd" in out, out  # the planted unit ran
    assert "ESCAPED" not in out, out
    assert not cap_line(out, "CapBnd") >> CAP_SYS_ADMIN & 1, out
    assert cap_line(out, "Seccomp") == 2, out
    assert "Read-only file system" in out and "etc=0" not in out, out


def test_the_host_channel_does_not_carry_the_hosts_writes_elsewhere(menv: Env,
                                                                     tmp_path: Path) -> None:
    """/run/sandbox-host is the host's run directory for the sandbox, writable from inside;
    what the host's tool writes there must land there, not where a link the sandbox made
    points: here a host file the sandbox cannot reach itself."""
    victim = tmp_path / "victim"
    victim.write_text("the host's own\n")
    name = unique_name("escs")
    plant = f"ln -s {shlex.quote(str(victim))} /run/sandbox-host/stopping; exec sleep 120"
    menv.run("create", name, "--", "/bin/sh", "-c", plant, check=True)
    menv.run("start", "--detach", name, check=True)
    marker = menv.base / "run" / name / "stopping"
    deadline = time.monotonic() + 10
    while not marker.is_symlink() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.is_symlink(), "the sandbox's command did not plant its link"
    assert menv.run("execute", name, "--", "test", "-e", str(victim)).returncode != 0
    menv.run("stop", name, check=True)
    assert victim.read_text() == "the host's own\n", \
        f"the host's stop wrote through the sandbox's link into {victim}: {victim.read_text()!r}"


# A library whose constructor records the capabilities and the filter of whatever process
# loads it, built inside a sandbox by its confined root with the soname of libseccomp, and an
# ld.so.cache in the sandbox's own /etc that lists it first.
PLANTED_C = r"""
#include <stdio.h>
#include <string.h>
__attribute__((constructor)) static void record(void)
{
    FILE *in = fopen("/proc/self/status", "r"), *out = fopen("/var/tmp/planted/loaded", "a");
    char line[256];
    if (!in || !out)
        return;
    while (fgets(line, sizeof line, in))
        if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "Seccomp:", 8))
            fputs(line, out);
    fclose(in);
    fclose(out);
}
"""
PLANT = f"""set -e
mkdir -p /var/tmp/planted
cd /var/tmp/planted
printf '%s\\n' {shlex.quote(PLANTED_C)} > planted.c
gcc -shared -fPIC -Wl,-soname,libseccomp.so.2 -o libseccomp.so.2 planted.c
echo /var/tmp/planted > ld.conf
set +e
ldconfig -X -C /var/tmp/planted/ld.so.cache -f ld.conf && echo own-cache=0
ldconfig -X -C /etc/ld.so.cache -f ld.conf 2>/dev/null
echo cache=$?
echo /var/tmp/planted/libseccomp.so.2 > /etc/ld.so.preload 2>/dev/null
echo preload=$?
ldconfig -p -C /etc/ld.so.cache | grep -c /var/tmp/planted
"""


@pytest.fixture
def planted(menv: Env) -> str:
    """A generic sandbox whose root (confined, through execute) has built the library and
    tried to plant it in its own /etc: in the loader's cache and in its preload list. Both
    are the host's files there, read-only: the plant is refused."""
    need(shutil.which("gcc") is not None, "needs gcc on the host root (to build the library)")
    name = unique_name("escl")
    menv.run("create", name, "--", "/bin/sh", "-c", "exec sleep 300", check=True)
    menv.run("start", "--detach", name, check=True)
    proc = menv.run("execute", name, "--", "/bin/sh", "-c", PLANT)
    lines = proc.stdout.splitlines()
    assert (menv.state(name) / "var/tmp/planted/libseccomp.so.2").exists(), proc.stderr
    # The same cache, written where the sandbox may write, works: only /etc's is refused.
    assert "own-cache=0" in lines, proc.stdout + proc.stderr
    assert "cache=0" not in lines and "preload=0" not in lines, proc.stdout
    assert lines[-1] == "0", proc.stdout  # the cache lists no planted library
    return name


def sandbox_runs(name: str, comm: str) -> bool:
    """Whether a process named `comm` runs in the sandbox (by its libvirt cgroup)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == comm \
                    and f"-{name}.libvirt-lxc" in (proc / "cgroup").read_text():
                return True
        except OSError:
            continue
    return False


def unconfined_loads(env: Env, name: str) -> list[str]:
    """Each process that loaded the planted library unconfined: with CAP_SYS_ADMIN, or with
    no seccomp filter."""
    log = env.state(name) / "var" / "tmp" / "planted" / "loaded"
    text = log.read_text() if log.exists() else ""
    pairs = re.findall(r"CapEff:\s*([0-9a-f]+)\nSeccomp:\s*(\d+)", text)
    return [f"CapEff {c} Seccomp {f}" for c, f in pairs
            if int(c, 16) >> CAP_SYS_ADMIN & 1 or f != "2"]


def test_a_library_planted_inside_is_not_loaded_by_execute(menv: Env, planted: str) -> None:
    menv.run("execute", planted, "--", "/bin/true")
    escaped = unconfined_loads(menv, planted)
    assert not escaped, "the planted library ran unconfined in execute's child:\n" \
        + "\n".join(escaped)


def test_a_library_planted_inside_is_not_loaded_by_the_next_start(menv: Env,
                                                                   planted: str) -> None:
    menv.run("stop", planted, check=True)
    menv.run("start", "--detach", planted)
    # A generic sandbox is "ready" once its init runs: wait until the init has got as far as
    # the command (sleep) or has ended (it does, when the planted library breaks confine.py).
    log = menv.state(planted) / "var" / "tmp" / "planted" / "loaded"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (log.exists() and log.stat().st_size) \
            and not sandbox_runs(planted, "sleep"):
        time.sleep(0.1)
    escaped = unconfined_loads(menv, planted)
    assert not escaped, "the planted library ran unconfined in the sandbox's init:\n" \
        + "\n".join(escaped)
