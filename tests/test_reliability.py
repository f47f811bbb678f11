"""Issue 7: nothing lost, nothing left behind, under bad input, crashes, daemon faults and load.

(a) Bad input to every command and option: exit status 2 (run: 125), a first stderr line naming the
    problem, no traceback, and the host exactly as before (Env.snapshot: the tool's config,
    state, unit and run dirs and this env's domains). Adds to tests/test_bad_input.py.
(b) kill -9 of `delete --force` at each of its steps: `delete` again leaves nothing of the
    sandbox (files, domain, cgroups, processes); a sandbox beside it is untouched.
(c) libvirtd restarted under two running sandboxes: they keep serving, `list` and `stop` work
    once it is back. Restarts the SHARED daemon: runs only when selected (see below).
(d) Ctrl-C on `start --detach` and on `stop` midway: the sandbox stays whole and usable.
(e) Twenty apache2 sandboxes at once, each under `ab` on its own loopback: no failed request.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, ROOT, Env, need, unique_name

# The marker is not in pyproject.toml; pytest calls pytest_configure only in conftest files and
# plugins, never in a test module, so a hook here could not register it. Selecting with
# `-m daemon_restart` works for an unregistered marker; only its warning is silenced here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    DAEMON_RESTART = pytest.mark.daemon_restart

pytestmark = [pytest.mark.root, pytest.mark.libvirt]

PROG = "virt-sandbox-service"
MACHINE_CGROUP = Path("/sys/fs/cgroup/unified/machine")
HOST_UNIT_DIR = Path("/etc/systemd/system")
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")


# --- helpers ---------------------------------------------------------------------------------


def spawn(env: Env, *args: str, **extra: str) -> subprocess.Popen[str]:
    """The CLI in the background; `extra`: more environment (a test hook)."""
    return subprocess.Popen([*CLI, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT), **extra})


def finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def lxc() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    return libvirt.open("lxc:///")


def domain_active(name: str) -> bool | None:
    """True/False for a defined domain, None when there is none."""
    import libvirt

    conn = lxc()
    try:
        return bool(conn.lookupByName(name).isActive())
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def init_pid(name: str) -> int:
    """The sandbox's init on the host: the only child of its libvirt_lxc controller."""
    conn = lxc()
    try:
        ctl = conn.lookupByName(name).ID()
    finally:
        conn.close()
    return int(Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()[0])


def http_get(pid: int, timeout: float = 5) -> tuple[str, str]:
    """(status code, body) of http://127.0.0.1/ from inside the network namespace of `pid`."""
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "curl", "-s", "--max-time",
                        str(timeout), "-w", "\n%{http_code}", "http://127.0.0.1/"],
                       capture_output=True, text=True, timeout=timeout + 5)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def create_apache(env: Env, name: str, page: str) -> None:
    env.run("create", "-u", "apache2.service", name, check=True)
    (env.state(name) / "var" / "www" / "html" / "index.html").write_text(page)


def sandbox_cgroups(name: str) -> list[str]:
    """The cgroup2 directories a sandbox's init made (machine/lxc-PID-NAME.libvirt-lxc)."""
    if not MACHINE_CGROUP.is_dir():
        return []
    pattern = re.compile(rf"lxc-\d+-{re.escape(name)}\.libvirt-lxc")
    return sorted(p.name for p in MACHINE_CGROUP.iterdir() if pattern.fullmatch(p.name))


def processes_naming(name: str) -> list[int]:
    """PIDs whose argv has `name` as a whole argument (libvirt_lxc --name NAME, our CLI)."""
    me = os.getpid()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if name.encode() in argv:
            pids.append(int(d.name))
    return pids


def clear_cgroups(name: str) -> None:
    """Remove what a known product bug leaves (empty cgroups of a stopped sandbox of OUR test),
    so that one failure does not leak into the host."""
    from virt_sandbox_service.runtime.lxc import remove_cgroups

    remove_cgroups(name)


def snapshot(env: Env) -> dict[str, object]:
    """Env.snapshot, retried: conftest.domain_names lists every domain and then reads each
    one's XML, which raises when another test's domain vanishes in between."""
    import libvirt

    for _ in range(10):
        try:
            return env.snapshot()
        except libvirt.libvirtError:
            time.sleep(0.05)
    return env.snapshot()


def first_line(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[0] if lines else ""


# --- (a) bad input -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]
    needle: str  # must appear in the first stderr line
    arrange: str | None = None  # a per-case change made before the "before" snapshot
    bug: str | None = None  # a known product bug: strict xfail, so a fix shows up as XPASS
    status: int = 2  # bad input (run: 125, its own failures); a damaged sandbox is 1


def bad(*args: str, needle: str, arrange: str | None = None, bug: str | None = None,
        status: int = 2) -> Bad:
    return Bad(tuple(args), needle, arrange, bug, 125 if args[0] == "run" else status)


A = "apache2.service"
LONG = "x" * 300
NAME_CASES = ["", "../etc", "/", "wéb", LONG, "-x"]  # '-x' is passed after '--'
NAME_NEEDLES = ["sandbox name is empty", "must not contain '/' or '..'",
                "must not contain '/' or '..'", "characters that are not allowed",
                "300 characters long", "'-x' has characters that are not allowed"]

# Placeholders, filled in by the `world` fixture: {stopped} an apache2 sandbox (never started),
# {generic} a generic one, {masked} etc. units in /etc/systemd/system made for this module,
# {file} a regular file, {taken_state}/{taken_unit} names whose state dir or unit file exists
# although no sandbox has them, {corrupt}/{oddkey}/{badtype} names whose config files the
# arrangement writes.
BAD: list[Bad] = [
    # names given to create
    bad("create", "-u", A, "--", "-web", needle="'-web' has characters that are not allowed"),
    bad("create", "-u", A, ".", needle="must not contain '/' or '..'"),
    bad("create", "-u", A, "a..b", needle="must not contain '/' or '..'"),
    bad("create", "-u", A, "/", needle="must not contain '/' or '..'"),
    bad("create", "-u", A, "a b", needle="characters that are not allowed"),
    bad("create", "-u", A, "web+1", needle="characters that are not allowed"),
    bad("create", "-u", A, "_web", needle="characters that are not allowed"),
    bad("create", "-u", A, "a\nb", needle="characters that are not allowed"),
    bad("create", "-u", A, "y" * 65, needle="65 characters long (at most 64)"),
    bad("create", "-u", A, "{taken_state}", needle="already exists"),
    bad("create", "-u", A, "{taken_unit}", needle="{taken_unit}_sandbox.service already exists"),
    # units
    bad("create", "-u", "{masked}", "nx20", needle="is masked"),
    bad("create", "-u", "{masked_short}", "nx21", needle="is masked"),
    bad("create", "-u", "{empty_unit}", "nx22", needle="is masked"),
    bad("create", "-u", "{broken_unit}", "nx23", needle="does not lead to a readable file"),
    bad("create", "-u", "{garbage_unit}", "nx24", needle="expected Key=value"),
    bad("create", "-u", "{escape_unit}", "nx25", needle="'../../etc' is not a relative path"),
    bad("create", "-u", "/lib/systemd/system/apache2.service", "nx26",
        needle="is a path, not a unit name"),
    bad("create", "-u", "", "nx27", needle="is not a valid systemd unit name"),
    bad("create", "-u", A, "-u", "no-such-vss.service", "nx28",
        needle="'no-such-vss.service' is not installed"),
    bad("create", "-u", "apache2.socket", "nx29", needle="'apache2.socket' is not installed"),
    # sizes and limits
    bad("create", "--memory", "0", "-u", A, "nx30", needle="must be greater than zero"),
    bad("create", "--memory=-5M", "-u", A, "nx31", needle="'-5M' is not a size"),
    bad("create", "--memory", "1.5G", "-u", A, "nx32", needle="'1.5G' is not a size"),
    bad("create", "--memory", "", "-u", A, "nx33", needle="'' is not a size"),
    bad("create", "--memory", "12XB", "-u", A, "nx34", needle="'12XB' is not a size"),
    bad("create", "--cpu-weight", "abc", "-u", A, "nx35", needle="--cpu-weight"),
    bad("create", "--cpu-quota", "0", "-u", A, "nx36", needle="--cpu-quota"),
    bad("create", "--blkio-weight", "5", "-u", A, "nx37", needle="--blkio-weight"),
    bad("create", "--cap-drop", "CAP_BOGUS", "-u", A, "nx38", needle="CAP_BOGUS"),
    bad("create", "--tasks", "5", "-u", A, "nx39", needle="--tasks 5 is out of range (32.."),
    bad("create", "--tasks", "many", "-u", A, "nx39b", needle="--tasks 'many' is not a whole"),
    # security labels
    bad("create", "-s", "static", "-u", A, "nx40", needle="needs label="),
    bad("create", "-s", "dynamic,foo=bar", "-u", A, "nx41", needle="'foo=bar' is not a security"),
    bad("create", "-s", "static,label=system_u:system_r:svirt_lxc_net_t:s0:c5,c2", "-u", A,
        "nx42", needle="needs two categories"),
    bad("create", "-s", "static,label=system_u:system_r:svirt_lxc_net_t:s0:c1,c4096", "-u", A,
        "nx43", needle="needs two categories"),
    bad("create", "-s", "static,label=", "-u", A, "nx44", needle="'' is not an SELinux label"),
    bad("create", "-s", "", "-u", A, "nx45", needle="'' is not a valid security mode"),
    # URIs
    bad("create", "-c", "", "-u", A, "nx50", needle="URI '' is not a libvirt LXC or QEMU URI"),
    bad("create", "-c", "http://example.org/", "-u", A, "nx51", needle="not a libvirt LXC"),
    bad("create", "-c", "lxc", "-u", A, "nx52",
        needle="URI 'lxc' is not a libvirt LXC or QEMU URI"),
    bad("create", "-c", "lxc:///nonsense", "-u", A, "nx53", needle="lxc:///nonsense"),
    bad("create", "-c", "qemu:///nonsense", "-u", A, "nx54", needle="qemu:///nonsense"),
    bad("create", "-c", "qemu:///system", "--tasks", "64", "-u", A, "nx55",
        needle="--tasks is for LXC sandboxes"),
    # paths
    bad("create", "-p", "/dev/null", "-u", A, "nx60", needle="is not a directory"),
    bad("create", "-p", "{file}", "-u", A, "nx61", needle="is not a directory"),
    bad("create", "-p", "/var/tmp/../tmp", "-u", A, "nx62", needle="must not contain '..'"),
    bad("create", "--private", "/", "-u", A, "nx63", needle="--private / is not allowed"),
    bad("create", "--shared", "/", "-u", A, "nx64", needle="--shared / is not allowed"),
    bad("create", "--private", "/var/../etc", "-u", A, "nx65", needle="must not contain '..'"),
    bad("create", "--shared", "var/www", "-u", A, "nx66", needle="not an absolute path"),
    bad("create", "--private", "/var/www/html", "--shared", "/var/www", "-u", A, "nx67",
        needle="is inside --shared /var/www"),
    bad("create", "-P", "", "-u", A, "nx68", needle="package '' is not installed"),
    # generic sandboxes
    bad("create", "nx70", "--", needle="nothing to run"),
    bad("create", "nx71", "--", "", needle="the command is an empty word"),
    # the user of a generic sandbox (-U, -G, --username, --homedir)
    bad("create", "-U", "no-such-user-vss", "nx72", "--", "/bin/true",
        needle="no user 'no-such-user-vss' on the host"),
    bad("create", "-U", "4294967295", "nx73", "--", "/bin/true",
        needle="-U uid 4294967295 is out of range"),
    bad("create", "-u", A, "-U", "33", "nx74", needle="-U is for generic sandboxes"),
    bad("create", "-U", "5000", "-G", "no-such-group-vss", "nx75", "--", "/bin/true",
        needle="no group 'no-such-group-vss' on the host"),
    bad("create", "-U", "5000", "--homedir", "/var/../etc", "nx76", "--", "/bin/true",
        needle="must not contain '..'"),
    bad("create", "-U", "5000", "--homedir", "/no/such/home", "nx77", "--", "/bin/true",
        needle="does not exist on the host root"),
    bad("create", "-U", "5000", "--username", "a:b", "nx78", "--", "/bin/true",
        needle="--username 'a:b' is not a valid name"),
    bad("create", "--homedir", "/var/home/x", "nx79", "--", "/bin/true",
        needle="--homedir needs -U UID"),
    # -i SIZE: the private trees in an image
    bad("create", "-i", "lots", "nx130", "--", "/bin/true", needle="-i size 'lots' is not a size"),
    bad("create", "-i", "0", "nx131", "--", "/bin/true", needle="must be greater than zero"),
    bad("create", "-i", "1.5G", "nx132", "--", "/bin/true", needle="'1.5G' is not a size"),
    bad("create", "-i", "512K", "-c", "qemu:///system", "nx133", "--", "/bin/true",
        needle="-i size '512K' is too small for a file system"),
    bad("create", "-i", "64M", "-c", "qemu:///system", "--userns", "nx134", "--", "/bin/true",
        needle="--userns is for LXC sandboxes"),
    # mounts (-m TYPE:DST=SRC)
    bad("create", "-m", "bogus", "-u", A, "nx100", needle="'bogus' is not TYPE:DST=SRC"),
    bad("create", "-m", "nosuchtype:/a=/b", "-u", A, "nx101", needle="not a mount type"),
    bad("create", "-m", "host-bind:relative=/tmp", "-u", A, "nx102",
        needle="'relative' is not an absolute path"),
    bad("create", "-m", "host-bind:/mnt=/no/such/dir", "-u", A, "nx103",
        needle="/no/such/dir"),
    bad("create", "-m", "guest-bind:/a=relative", "-u", A, "nx104",
        needle="'relative' is not an absolute path"),
    bad("create", "-m", "host-bind:/=/tmp", "-u", A, "nx105", needle="would hide the whole root"),
    bad("create", "-m", "ram:/mnt=lots", "-u", A, "nx106", needle="'lots' is not a size"),
    bad("create", "-m", "ram:/mnt=0", "-u", A, "nx107", needle="must be greater than zero"),
    # networks (-N OPTS)
    bad("create", "-N", "bogus", "-u", A, "nx110", needle="is not KEY=VALUE"),
    bad("create", "-N", "", "-u", A, "nx111", needle="is not KEY=VALUE"),
    bad("create", "-N", "source=nosuchnet-vss", "-u", A, "nx112",
        needle="network 'nosuchnet-vss' does not exist"),
    bad("create", "-N", "source=default,address=999.1.1.1/24", "-u", A, "nx113",
        needle="is not IP/PREFIX"),
    bad("create", "-N", "source=default,address=10.0.0.5/33", "-u", A, "nx114",
        needle="is not IP/PREFIX"),
    bad("create", "-N", "source=default,mac=zz", "-u", A, "nx115",
        needle="'zz' in 'source=default,mac=zz' is not a unicast MAC"),
    bad("create", "-N", "source=default,route=x", "-u", A, "nx116",
        needle="is not NET/PREFIX%GATEWAY"),
    bad("create", "-N", "source=default,filter=nosuchfilter-vss", "-u", A, "nx117",
        needle="filter 'nosuchfilter-vss' does not exist"),
    bad("create", "-N", "source=default,port=80", "-u", A, "nx118", needle="port="),
    # clone
    bad("clone", "nosuch", "nx120", needle="no sandbox named 'nosuch'"),
    bad("clone", "{stopped}", "{generic}", needle="a sandbox named '{generic}' already exists"),
    bad("clone", "{stopped}", "", needle="sandbox name is empty"),
    bad("clone", "{stopped}", "../x", needle="must not contain '/' or '..'"),
    bad("clone", "{stopped}", "wéb", needle="characters that are not allowed"),
    bad("clone", "{stopped}", "--", "-x", needle="'-x' has characters that are not allowed"),
    bad("clone", "{stopped}", "y" * 65, needle="65 characters long"),
    bad("clone", "-p", "relative", "{stopped}", "nx121", needle="not an absolute path"),
    bad("clone", "-s", "bogus", "{stopped}", "nx122", needle="'bogus' is not a valid security"),
    # run (a transient sandbox)
    bad("run", needle="run needs a command after --"),
    bad("run", "--", needle="run needs a command after --"),
    bad("run", "--memory", "lots", "--", "/bin/true", needle="'lots' is not a size"),
    bad("run", "-c", "xen:///", "--", "/bin/true", needle="not a libvirt LXC or QEMU URI"),
    # limit
    bad("limit", "--memory", "0", "{stopped}", needle="must be greater than zero"),
    bad("limit", "--memory", "lots", "{stopped}", needle="'lots' is not a size"),
    bad("limit", "--cpu-weight", "1", "{stopped}", needle="--cpu-weight 1 is out of range"),
    bad("limit", "--cpu-quota", "999", "{stopped}", needle="--cpu-quota 999 is out of range"),
    bad("limit", "--blkio-weight", "1", "{stopped}", needle="--blkio-weight 1 is out of range"),
    bad("limit", "--tasks", "99999999", "{stopped}", needle="--tasks 99999999 is out of range"),
    bad("limit", "--memory", "1G", "nosuch", needle="no sandbox named 'nosuch'"),
    bad("limit", "--memory", "1G", "", needle="sandbox name is empty"),
    # upgrade, connect
    bad("upgrade", "nosuch", needle="no sandbox named 'nosuch'"),
    bad("upgrade", needle="give a sandbox NAME or --all"),
    bad("upgrade", "../x", needle="must not contain '/' or '..'"),
    bad("connect", "nosuch", needle="no sandbox named 'nosuch'"),
    bad("connect", "", needle="sandbox name is empty"),
    bad("connect", "wéb", needle="characters that are not allowed"),
    # the other commands, on sandboxes that exist but cannot do what is asked
    bad("execute", "{stopped}", "--", "true", needle="is not running"),
    bad("execute", "{stopped}", needle="execute needs a command"),
    bad("reload", "{stopped}", needle="is not running"),
    bad("reload", "-u", "nginx.service", "{stopped}", needle="nginx.service is not confined"),
    bad("reload", "{generic}", needle="runs a command, not units"),
    bad("reload", "nosuch", needle="no sandbox named 'nosuch'"),
    # broken config files (hand-edited, or from another version)
    bad("inspect", "{corrupt}", needle="not valid JSON", arrange="corrupt_config"),
    bad("start", "{oddkey}", needle="unknown key(s) zzz", arrange="unknown_key_config"),
    # known product bugs (see the reasons)
    bad("create", "-p", "{file}/sub", "-u", A, "nx80", needle="not a directory"),
    bad("create", "--private", "/proc", "-u", A, "nx81", needle="--private /proc"),
    bad("create", "--private", "/sys", "-u", A, "nx82", needle="--private /sys"),
    bad("create", "-u", A, "nx83", "--dry-run", needle="--dry-run"),
    bad("delete", "{stopped}", needle="not a directory", arrange="state_is_file"),
    bad("start", "--detach", "{stopped}", needle="{stopped_state}", arrange="state_is_file",
        status=1),
    bad("clone", "-p", "/dev/null", "{stopped}", "nx123", needle="not a directory"),
    bad("run", "--", "", needle="command"),
    bad("inspect", "{badtype}", needle="uri", arrange="uri_not_string_config"),
]
for _cmd in ("start", "stop", "delete", "inspect", "reload", "execute"):
    for _name, _needle in zip(NAME_CASES, NAME_NEEDLES, strict=True):
        if _cmd == "execute":  # `execute -- NAME CMD`: after '--' every word is positional
            BAD.append(Bad((_cmd, "--", _name, "true"), _needle))
        else:
            BAD.append(Bad((_cmd, *(("--", _name) if _name.startswith("-") else (_name,))),
                           _needle))

# Options that do not exist (yet): argparse's own usage error, exit 2. They are checked for
# "non-zero, no traceback, nothing changed" but not counted as the tool's clear errors.
ARGPARSE: list[tuple[str, ...]] = [
    ("create", "-m", "/no/such:/mnt", "-u", A, "nx90"),
    ("create", "-N", "network=nosuch", "-u", A, "nx91"),
    ("create", "-u", A, "-web"),
    ("create", "--memory", "-5M", "-u", A, "nx92"),
    ("start", "--timeout", "soon", "{stopped}"),
    ("stop", "--timeout", "abc", "{stopped}"),
    ("stop", "--timeout", "-5", "{stopped}"),
    ("list", "extra"),
    ("list", "--bogus"),
    ("execute",),
    ("inspect",),
    ("delete", "--force"),
    ("reload", "{stopped}", "-u"),
    ("doctor", "--bogus"),
    ("completion", "fish"),
    ("learn", "--seconds", "soon", "{stopped}"),
    ("apply", "--bogus"),
]


@dataclass
class World:
    env: Env
    subs: dict[str, str]

    def fill(self, text: str) -> str:
        for key, value in self.subs.items():
            text = text.replace("{" + key + "}", value)
        return text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One env for the whole table: two sandboxes that stay stopped, and broken host units."""
    base = tmp_path_factory.mktemp("reliability") / "vss"
    base.mkdir()
    env = Env(base)
    tag = secrets.token_hex(3)
    made: list[Path] = []
    sandboxes: list[str] = []
    try:
        units = {
            "masked": f"vss-test-masked-{tag}.service",
            "empty_unit": f"vss-test-empty-{tag}.service",
            "broken_unit": f"vss-test-broken-{tag}.service",
            "garbage_unit": f"vss-test-garbage-{tag}.service",
            "escape_unit": f"vss-test-escape-{tag}.service",
        }
        for key, unit in units.items():
            path = HOST_UNIT_DIR / unit
            made.append(path)
            if key == "masked":
                path.symlink_to("/dev/null")
            elif key == "broken_unit":
                path.symlink_to(f"/nonexistent/vss-test-{tag}.service")
            elif key == "empty_unit":
                path.write_text("")
            elif key == "garbage_unit":
                path.write_text("[Unit]\nDescription=test\nthis is not an assignment\n")
            else:
                path.write_text("[Service]\nExecStart=/bin/true\nStateDirectory=../../etc\n")
        stopped, generic = unique_name("bad"), unique_name("badg")
        sandboxes += [stopped, generic]
        env.run("create", "-u", A, stopped, check=True)
        env.run("create", generic, "--", "/bin/true", check=True)
        afile = base / "a-file"
        afile.write_text("not a directory\n")
        taken_state, taken_unit = unique_name("taken"), unique_name("tunit")
        (base / "state" / taken_state).mkdir(parents=True)
        (base / "units" / f"{taken_unit}_sandbox.service").write_text("[Unit]\n")
        subs = {
            **units, "masked_short": units["masked"].removesuffix(".service"),
            "stopped": stopped, "stopped_state": str(env.state(stopped)), "generic": generic,
            "file": str(afile), "taken_state": taken_state, "taken_unit": taken_unit,
            "corrupt": unique_name("corrupt"), "oddkey": unique_name("oddkey"),
            "badtype": unique_name("badtype"),
        }
        yield World(env, subs)
    finally:
        for name in sandboxes:
            env.run("delete", "--force", name)
        for path in made:
            path.unlink(missing_ok=True)


def arrange(world: World, what: str | None) -> Callable[[], None]:
    """Make a case's broken precondition; returns its undo."""
    env, subs = world.env, world.subs
    configs = env.base / "config" / "sandboxes"
    if what is None:
        return lambda: None
    if what == "corrupt_config":
        path = configs / f"{subs['corrupt']}.json"
        path.write_text("{not json\n")
        return lambda: path.unlink(missing_ok=True)
    if what in ("unknown_key_config", "uri_not_string_config"):
        data = json.loads((configs / f"{subs['stopped']}.json").read_text())
        key = "oddkey" if what == "unknown_key_config" else "badtype"
        data["name"] = subs[key]
        data["state_dir"] = str(env.state(subs[key]))
        if what == "unknown_key_config":
            data["zzz"] = 1
        else:
            data["uri"] = 5
        path = configs / f"{subs[key]}.json"
        path.write_text(json.dumps(data))
        return lambda: path.unlink(missing_ok=True)
    if what == "state_is_file":
        state = env.state(subs["stopped"])
        aside = state.with_name(state.name + ".aside")
        state.rename(aside)
        state.write_text("a file where the state directory was\n")

        def undo() -> None:
            if state.is_dir():
                shutil.rmtree(state)
            else:
                state.unlink(missing_ok=True)
            aside.rename(state)
            run = env.base / "run" / subs["stopped"]
            if run.is_dir():  # the known `start` bug leaves it
                shutil.rmtree(run)
            clear_cgroups(subs["stopped"])
        return undo
    raise AssertionError(what)


def _case_id(i: int, case: Bad) -> str:
    words = " ".join(a for a in case.args if a)[:40]
    return f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.{}=-]+', '_', words)}"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=f"BUG: {c.bug}"))
     if c.bug else c for c in BAD],
    ids=[_case_id(i, c) for i, c in enumerate(BAD)])
def test_bad_input_is_refused_and_changes_nothing(world: World, case: Bad) -> None:
    undo = arrange(world, case.arrange)
    try:
        before = snapshot(world.env)
        proc = world.env.run(*(world.fill(a) for a in case.args), timeout=60)
        after = snapshot(world.env)
    finally:
        undo()
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == case.status, f"exit {proc.returncode}: {err}{proc.stdout}"
    line = first_line(err)
    assert line.startswith(f"{PROG}: error: "), err
    assert world.fill(case.needle) in line, err
    # and a hint: what to write or do instead
    assert f"\n{PROG}: hint: " in err[err.index(line):], err
    assert after == before


@pytest.mark.parametrize("args", ARGPARSE, ids=[" ".join(a)[:40] for a in ARGPARSE])
def test_unknown_options_are_refused_and_change_nothing(world: World,
                                                         args: tuple[str, ...]) -> None:
    before = snapshot(world.env)
    proc = world.env.run(*(world.fill(a) for a in args), timeout=60)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    if "usage:" in proc.stderr:  # argparse (2; run's 125)
        assert proc.returncode == (125 if args[0] == "run" else 2), proc.stderr
        assert "usage:" in proc.stderr and ": error: " in proc.stderr, proc.stderr
    else:  # the option exists by now: then it must be the tool's own one-line error
        assert first_line(proc.stderr).startswith(f"{PROG}: error: "), proc.stderr
    assert snapshot(world.env) == before


def test_bad_input_table_covers_every_command() -> None:
    clear = [c for c in BAD if not c.bug]
    assert len(clear) >= 40, len(clear)
    commands = {c.args[0] for c in clear} | {a[0] for a in ARGPARSE}
    from virt_sandbox_service.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    every = set(sub.choices)  # type: ignore[arg-type]
    assert commands >= every, every - commands


# --- (b) kill -9 during delete -------------------------------------------------------------


@dataclass
class Victim:
    env: Env
    name: str
    dom: Any

    def alive(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except Exception:  # undefined: gone
            return False

    def defined(self) -> bool:
        return domain_active(self.name) is not None


KILL_POINTS: dict[str, Callable[[Victim], bool]] = {
    "at once (start-up)": lambda v: True,
    "stop requested": lambda v: (v.env.base / "run" / ".stopping" / v.name).exists(),
    "domain just ended": lambda v: not v.alive(),
    "unit file removed": lambda v: not (v.env.base / "units" / f"{v.name}_sandbox.service")
    .exists(),
    "domain undefined": lambda v: not v.defined(),
    "state tree half removed": lambda v: not (v.env.state(v.name) / "etc").exists(),
    "config removed": lambda v: not (v.env.base / "config" / "sandboxes" / f"{v.name}.json")
    .exists(),
    "after 0.3 s": lambda v: False,  # time based, below
}


@pytest.fixture(scope="module")
def bystander(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, str]]:
    base = tmp_path_factory.mktemp("bystander") / "vss"
    base.mkdir()
    env = Env(base)
    name = unique_name("keep")
    try:
        create_apache(env, name, f"<p>{name}</p>\n")
        env.run("start", "--detach", name, check=True)
        yield env, name
    finally:
        env.run("delete", "--force", name)
        clear_cgroups(name)


def assert_untouched(env: Env, name: str) -> None:
    assert domain_active(name) is True
    assert (env.state(name) / ".virt-sandbox-service").read_text() == f"{name}\n"
    assert (env.base / "config" / "sandboxes" / f"{name}.json").is_file()
    assert (env.base / "units" / f"{name}_sandbox.service").is_file()
    assert http_get(init_pid(name)) == ("200", f"<p>{name}</p>\n")


def leftovers_of(env: Env, name: str) -> dict[str, object]:
    files = [f for f in snapshot(env)["files"] if name in f]
    return {"files": files, "domain": domain_active(name), "cgroups": sandbox_cgroups(name),
            "processes": processes_naming(name)}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_during_delete_then_delete_again_cleans_up(bystander: tuple[Env, str],
                                                          point: str) -> None:
    env, other = bystander
    name = unique_name("dk")
    try:
        kill_delete_and_check(env, name, point, other)
    finally:  # whatever happened, this test's sandbox does not outlive it
        env.run("delete", "--force", name)
        clear_cgroups(name)
        shutil.rmtree(env.base / "run" / name, ignore_errors=True)


def kill_delete_and_check(env: Env, name: str, point: str, other: str) -> None:
    create_apache(env, name, "x\n")
    # A web site of many small files: removing the state tree takes long enough to be caught.
    pad = env.state(name) / "var" / "www" / "html" / "pad"
    pad.mkdir()
    for i in range(3000):
        (pad / f"{i}.html").write_text("x\n")
    env.run("start", "--detach", name, check=True)
    conn = lxc()
    victim = Victim(env, name, conn.lookupByName(name))
    landed = False
    try:
        proc = spawn(env, "delete", "--force", name)
        if point == "after 0.3 s":
            time.sleep(0.3)
        else:
            predicate = KILL_POINTS[point]
            while proc.poll() is None and not predicate(victim):
                pass
        if proc.poll() is None:
            proc.kill()
            landed = True
        proc.communicate(timeout=30)
        killed_state = leftovers_of(env, name)
        again = env.run("delete", "--force", name, timeout=90)
        if "no sandbox named" not in again.stderr:  # the kill came after the config went
            assert again.returncode == 0, again.stderr
        left = leftovers_of(env, name)
    finally:
        conn.close()
    domain = {None: "undefined", True: "running", False: "defined"}[killed_state["domain"]]
    print(f"\nkill -9 at '{point}': landed={landed}; the kill left "
          f"{len(killed_state['files'])} files, domain {domain}, "  # type: ignore[arg-type]
          f"cgroups {killed_state['cgroups']}")
    assert landed, f"delete finished before the kill point '{point}'"
    assert_untouched(env, other)
    # Nothing of it stays: no file (the run dir included), domain, process or cgroup.
    assert left == {"files": [], "domain": None, "cgroups": [], "processes": []}, left


def test_delete_after_the_sandbox_stopped_by_itself_leaves_no_cgroup(env: Env) -> None:
    name = unique_name("self")
    create_apache(env, name, "x\n")
    env.run("start", "--detach", name, check=True)
    conn = lxc()
    try:
        dom = conn.lookupByName(name)
        import libvirt

        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)  # as `poweroff` inside would
        deadline = time.monotonic() + 30
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        conn.close()
    env.run("delete", name, check=True)
    left = sandbox_cgroups(name)
    clear_cgroups(name)
    assert left == []


# --- (c) libvirtd restarted under running sandboxes ----------------------------------------


def restart_allowed(config: pytest.Config) -> bool:
    expr = str(config.getoption("markexpr") or "")
    return (os.environ.get("VSS_ALLOW_DAEMON_RESTART") == "1"
            or re.search(r"(?<!not )\bdaemon_restart\b", expr) is not None)


def _proc_state(pid: int) -> str | None:
    """The process state letter, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def libvirtd_pid() -> int | None:
    """The running libvirtd's PID: its pid file, checked against /proc; else `pidof` (read)."""
    candidates = []
    with contextlib.suppress(OSError, ValueError):
        candidates.append(int(LIBVIRTD_PIDFILE.read_text().strip()))
    r = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True)
    candidates += [int(p) for p in r.stdout.split()]
    for pid in candidates:
        with contextlib.suppress(OSError):
            if (Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd"
                    and _proc_state(pid) not in (None, "Z")):
                return pid
    return None


def libvirtd_answers() -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(LIBVIRT_SOCK))
    except OSError:
        return False
    finally:
        s.close()
    try:
        lxc().close()
        return True
    except Exception:
        return False


def stop_libvirtd(pid: int, timeout: float = 60) -> float:
    """SIGTERM to that one PID; returns once it has exited (a zombie counts: PID 1 here reaps
    slowly). Returns the seconds it took."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while _proc_state(pid) not in (None, "Z"):
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"libvirtd {pid} still runs {timeout:g} s after SIGTERM")
        time.sleep(0.05)
    return time.monotonic() - t0


def start_libvirtd(timeout: float = 60) -> float:
    """As scripts/setup.sh does (scripts/start-daemons.sh), then wait until it answers."""
    t0 = time.monotonic()
    subprocess.run([str(ROOT / "scripts" / "start-daemons.sh")], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=timeout)
    while not libvirtd_answers():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"libvirtd does not answer {timeout:g} s after start")
        time.sleep(0.05)
    return time.monotonic() - t0


def ensure_libvirtd() -> None:
    if libvirtd_pid() is None:
        start_libvirtd()
    deadline = time.monotonic() + 60
    while not libvirtd_answers() and time.monotonic() < deadline:
        time.sleep(0.1)


@DAEMON_RESTART
def test_libvirtd_restart_keeps_sandboxes_serving(env: Env, request: pytest.FixtureRequest,
                                                  ) -> None:
    if not restart_allowed(request.config):
        pytest.skip("restarts the shared libvirtd: run with -m daemon_restart "
                    "(or VSS_ALLOW_DAEMON_RESTART=1) when nobody else uses it")
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd manages libvirtd on this host; this test restarts the daemon "
                    "scripts/start-daemons.sh starts")
    old = libvirtd_pid()
    need(old is not None, "no libvirtd running (scripts/start-daemons.sh starts one)")
    assert old is not None
    names = [unique_name("lvd"), unique_name("lvd")]
    for n in names:
        create_apache(env, n, f"<p>{n}</p>\n")
        env.run("start", "--detach", n, check=True)
    inits = {n: init_pid(n) for n in names}
    for n in names:
        assert http_get(inits[n]) == ("200", f"<p>{n}</p>\n")
    try:
        down = stop_libvirtd(old)
        # With the daemon gone, the sandboxes go on (their controllers do not need it) ...
        for n in names:
            assert http_get(inits[n]) == ("200", f"<p>{n}</p>\n")
        # ... and the tool says clearly what is wrong.
        proc = env.run("list")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "cannot connect to libvirt" in first_line(proc.stderr), proc.stderr
        up = start_libvirtd()
    finally:
        ensure_libvirtd()
    print(f"\nlibvirtd {old} stopped in {down:.2f} s, new one answering after {up:.2f} s")
    new = libvirtd_pid()
    assert new is not None and new != old
    for n in names:
        assert init_pid(n) == inits[n]  # the same sandbox, not a restarted one
        assert http_get(inits[n]) == ("200", f"<p>{n}</p>\n")
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert [rows[n]["state"] for n in names] == ["running", "running"]
    proc = env.run("execute", names[0], "--", "curl", "-s", "--max-time", "5",
                   "http://localhost/")
    assert (proc.returncode, proc.stdout) == (0, f"<p>{names[0]}</p>\n"), proc.stderr
    for n in names:
        env.run("stop", n, check=True, timeout=60)
        assert domain_active(n) is False
        assert sandbox_cgroups(n) == []
    rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
    assert [rows[n]["state"] for n in names] == ["stopped", "stopped"]
    env.run("start", "--detach", names[0], check=True)
    assert http_get(init_pid(names[0]))[0] == "200"


# --- (d) Ctrl-C on start --detach and on stop ----------------------------------------------


def assert_whole_and_usable(env: Env, name: str) -> None:
    """Config, state and unit are intact; it starts, serves and stops again."""
    info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert info["name"] == name
    assert (env.state(name) / ".virt-sandbox-service").read_text() == f"{name}\n"
    assert (env.base / "units" / f"{name}_sandbox.service").is_file()
    env.run("start", "--detach", name, check=True)
    assert http_get(init_pid(name)) == ("200", f"<p>{name}</p>\n")
    env.run("stop", name, check=True)
    assert domain_active(name) is False
    assert sandbox_cgroups(name) == []


def wait_inactive(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if domain_active(name) is False:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("delay", [
    pytest.param(0.0, id="as-the-domain-starts"),
    pytest.param(0.25, id="while-its-systemd-boots"),
])
def test_ctrl_c_on_start_detach_leaves_the_sandbox_whole(env: Env, delay: float) -> None:
    name = unique_name("cis")
    create_apache(env, name, f"<p>{name}</p>\n")
    conn = lxc()
    try:
        dom = conn.lookupByName(name)
        # A start that became ready just as the signal came is not the case under test (it
        # dies of SIGINT while Python exits, having succeeded): stop, and try sooner.
        for attempt in range(4):
            proc = spawn(env, "start", "--detach", name)
            while not dom.isActive() and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(delay / 2**attempt)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            if "is ready" not in out:
                break
            env.run("stop", name, check=True)
        else:
            pytest.fail("start was ready before every interrupt; no interrupt landed")
    finally:
        conn.close()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted" in err and "Traceback" not in err, err
    # "What this command had done was undone": the sandbox is not left running unwatched.
    assert wait_inactive(name, 15), "the interrupted start left the sandbox running"
    assert_whole_and_usable(env, name)


@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["as-stop-is-requested", "mid-shutdown"])
def test_ctrl_c_on_stop_leaves_the_sandbox_whole(env: Env, delay: float) -> None:
    name = unique_name("cip")
    create_apache(env, name, f"<p>{name}</p>\n")
    env.run("start", "--detach", name, check=True)
    proc = spawn(env, "stop", name)
    marker = env.base / "run" / ".stopping" / name
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.002)
    time.sleep(delay)
    landed = proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert landed, "stop finished before the interrupt"
    assert proc.returncode == 130 and "Traceback" not in err, err
    again = env.run("stop", name, timeout=60)
    assert again.returncode == 0, again.stderr
    assert domain_active(name) is False
    assert sandbox_cgroups(name) == []
    assert_whole_and_usable(env, name)


def test_stop_asks_the_sandbox_before_it_loads_libvirt(env: Env) -> None:
    """stop's request goes first (runtime/poweroff.py): its services drain while the rest
    of stop loads. Held just after the request, stop has not mapped libvirt at all, the
    stop marker is written, and the sandbox goes down by itself; interrupted there, a second
    stop finds it ended and cleans up."""
    name = unique_name("ask")
    create_apache(env, name, f"<p>{name}</p>\n")
    env.run("start", "--detach", name, check=True)
    proc = spawn(env, "stop", name, VSS_PAUSE_AFTER="power-off request without libvirt")
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        assert "paused after 'power-off request without libvirt'" in line, line
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libvirt" not in maps, [m for m in maps.splitlines() if "libvirt" in m][:3]
        assert (env.base / "run" / ".stopping" / name).exists()
        assert wait_inactive(name, 15), "the sandbox did not go down on the request alone"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    again = env.run("stop", name, timeout=60)
    assert again.returncode == 0, again.stderr
    assert sandbox_cgroups(name) == []
    assert_whole_and_usable(env, name)


def _running_pausable_apache(env: Env, prefix: str) -> str:
    """A running apache2 sandbox, where libvirt can pause one (stop's drained end)."""
    from virt_sandbox_service import host

    need(host.v1_mount("freezer") is not None,
         "libvirt 9.0 pauses an LXC domain only through the v1 freezer hierarchy, which this "
         "host (pure cgroup v2) lacks: its stop waits for the init's exit")
    name = unique_name(prefix)
    create_apache(env, name, f"<p>{name}</p>\n")
    env.run("start", "--detach", name, check=True)
    return name


def test_stop_ends_a_drained_sandbox_at_once_and_leaves_nothing(env: Env) -> None:
    """Once the sandbox's systemd has stopped its services (journald too, with its last
    lines), stop pauses and destroys the domain: libvirt's way without its 200 ms round
    (runtime/lxcstop.Drain). The services were stopped by systemd, the domain's end is a
    destroy, and no cgroup of it is left in any hierarchy."""
    import libvirt

    name = _running_pausable_apache(env, "drn")
    conn = lxc()
    try:
        dom = conn.lookupByName(name)
        controller = dom.ID()
        env.run("stop", name, check=True)
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    finally:
        conn.close()
    journal = subprocess.run(["journalctl", "-D", str(env.state(name) / "var/log/journal"),
                              "--no-pager", "-o", "cat"], capture_output=True, text=True).stdout
    assert "Stopped apache2.service" in journal and "Journal stopped" in journal, journal[-800:]
    left = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/machine/lxc-{controller}-{name}*")]
    assert left == []
    assert_whole_and_usable(env, name)


def test_ctrl_c_between_stops_pause_and_destroy_resumes_the_sandbox(env: Env) -> None:
    """An interrupt after the drained domain's pause must not leave it frozen: it is resumed,
    and goes on to its end; a second stop finds it ended or ends it."""
    import libvirt

    name = _running_pausable_apache(env, "cpz")
    proc = spawn(env, "stop", name, VSS_PAUSE_AFTER="pause of the drained sandbox")
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "paused after 'pause of the drained sandbox'" in line, line
    conn = lxc()
    try:
        dom = conn.lookupByName(name)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert not dom.isActive() or dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED
    finally:
        conn.close()
    again = env.run("stop", name, timeout=60)
    assert again.returncode == 0, again.stderr
    assert domain_active(name) is False
    assert sandbox_cgroups(name) == []
    assert_whole_and_usable(env, name)


# --- (e) twenty sandboxes under load -------------------------------------------------------

LOAD_SANDBOXES = 20
LOAD_REQUESTS = 2000
LOAD_CONCURRENCY = 10


def parse_ab(out: str) -> dict[str, float]:
    def field(label: str, default: float | None = None) -> float:
        m = re.search(rf"^{re.escape(label)}:\s+([0-9.]+)", out, re.M)
        if m is None:
            if default is None:
                raise AssertionError(f"no '{label}' in ab output:\n{out}")
            return default
        return float(m.group(1))
    return {"complete": field("Complete requests"), "failed": field("Failed requests"),
            "non2xx": field("Non-2xx responses", 0.0), "rps": field("Requests per second"),
            "ms": field("Time per request")}


def test_twenty_sandboxes_serve_under_load(env: Env) -> None:
    need(shutil.which("ab") is not None, "needs ab (Debian: apache2-utils, scripts/setup.sh)")
    names = [unique_name(f"load{i:02d}-") for i in range(LOAD_SANDBOXES)]
    t0 = time.monotonic()
    try:
        results = finish([spawn(env, "create", "-u", A, n) for n in names], timeout=300)
        assert all(rc == 0 for rc, _ in results), [
            (n, rc, e) for n, (rc, e) in zip(names, results, strict=True) if rc]
        t_create = time.monotonic() - t0
        for n in names:
            (env.state(n) / "var" / "www" / "html" / "index.html").write_text(f"<p>{n}</p>\n")
        t1 = time.monotonic()
        results = finish([spawn(env, "start", "--detach", n) for n in names], timeout=300)
        assert all(rc == 0 for rc, _ in results), [
            (n, rc, e) for n, (rc, e) in zip(names, results, strict=True) if rc]
        t_start = time.monotonic() - t1
        inits = {n: init_pid(n) for n in names}
        for n in names:
            assert http_get(inits[n]) == ("200", f"<p>{n}</p>\n"), n
        t2 = time.monotonic()
        loads = {n: subprocess.Popen(
            ["nsenter", "-t", str(inits[n]), "-n", "ab", "-q", "-n", str(LOAD_REQUESTS),
             "-c", str(LOAD_CONCURRENCY), "http://127.0.0.1/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names}
        figures = {}
        for n, p in loads.items():
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"ab against {n} failed: {err}"
            figures[n] = parse_ab(out)
        t_load = time.monotonic() - t2
        rows = {r["name"]: r for r in json.loads(env.run("list", "--json", check=True).stdout)}
        assert all(rows[n]["state"] == "running" for n in names)
    finally:
        t3 = time.monotonic()
        finish([spawn(env, "delete", "--force", n) for n in names], timeout=300)
        t_delete = time.monotonic() - t3
        left_cgroups = [c for n in names for c in sandbox_cgroups(n)]
        for n in names:
            clear_cgroups(n)
    rps = sorted(f["rps"] for f in figures.values())
    print(f"\n{LOAD_SANDBOXES} apache2 sandboxes, ab -n {LOAD_REQUESTS} -c {LOAD_CONCURRENCY} "
          "each, all at once, on each sandbox's own loopback")
    print(f"create (parallel) {t_create:.1f} s, start --detach (parallel) {t_start:.1f} s, "
          f"load {t_load:.1f} s, delete --force (parallel) {t_delete:.1f} s")
    for n, f in figures.items():
        print(f"  {n}: {f['complete']:.0f} requests, {f['failed']:.0f} failed, "
              f"{f['rps']:.0f} req/s, {f['ms']:.2f} ms/request")
    print(f"req/s per sandbox: min {rps[0]:.0f}, median {rps[len(rps) // 2]:.0f}, "
          f"max {rps[-1]:.0f}; sum {sum(rps):.0f}")
    assert all(f["complete"] == LOAD_REQUESTS for f in figures.values()), figures
    assert all(f["failed"] == 0 and f["non2xx"] == 0 for f in figures.values()), figures
    assert not [n for n in names if domain_active(n) is not None]
    assert left_cgroups == []
