"""Whether a sandbox's confined units are really up, asked of the sandbox's own systemd.

The sandbox's systemd sends READY=1 once its boot jobs are done, and a job is done before a
unit is up for good: a unit with Restart= whose process died is in its auto-restart loop
(activating/auto-restart) and fails for good only later, and a Type=simple unit's start job
ends when its process is forked, so one that dies right after exec was "started" too. So after
READY=1 the host asks the sandbox's systemd (over D-Bus) each confined unit's state, and judges
it (judge, below):

- up: active (reloading counts), or a Type=oneshot that ended in success (RemainAfterExit
  units stay active/exited). A Type=simple/exec/idle unit counts as up only once its main
  process has run STEADY seconds: before that nothing tells a daemon that stays from one about
  to die of its configuration;
- failed: failed; inactive otherwise (not loaded, skipped, ended); or down again after a
  restart (auto-restart with NRestarts >= 1 and no job under way, or NRestarts >= 2 in any
  state, which a question between two restarts may see): its first restart attempt failed
  too, so it is failing, whether or not its start limit has been reached;
- pending: anything else, asked again RECHECK seconds later: a job under way on the unit (a
  restart raises NRestarts while still in auto-restart, then passes through inactive and
  activating), activating, auto-restart before a first restart, just started.

Each unit's state is one GetAll of all its properties (as `systemctl show` asks): one moment's
state, where a Get per property could straddle a restart.

Reaching the sandbox's systemd: its private socket /run/systemd/private accepts root only, and
only peers whose PID it can see (systemd's getpeercred refuses PID 0), so a child of ours joins
the sandbox's PID namespace (and mount namespace, so that the socket's path is resolved the
sandbox's way: nothing there can point it at a host socket) and asks from there. Where we run
beside libvirtd's PID namespace (a systemd test host), the PID namespace cannot be joined; the
child then asks through the sandbox's D-Bus daemon, which checks only the caller's UID. The child
runs no program: it uses pystemd, imported before the fork, closes every descriptor it inherited
but its answer pipe, and is not dumpable, so the sandbox's processes cannot ptrace it. One
round costs about 10-20 ms (two forks, setns, a D-Bus connection, ~4 ms a unit's GetAll); a
healthy forking or notify unit needs one round.

A KVM guest's `ready` file has the same flaw (vss-ready.service is ordered after the units'
start jobs): there the host asks the guest's systemctl through the guest agent (SHOW_SCRIPT,
parse_show), and under TCG, where a shell takes a second to start, STEADY_TCG applies.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import libvirt

from ..errors import HostError
from .enter import open_namespaces

log = logging.getLogger(__name__)

STEADY = 0.5  # s a Type=simple/exec/idle unit's main process must have run to count as up
STEADY_TCG = 3.0  # the same in a VM under TCG, where a shell takes a second to start
RECHECK = 0.1  # s between questions while a unit is not up yet
ASK_TIMEOUT = 5.0  # s for one round of questions; a systemd that does not answer is an error

PRIVATE_BUS = b"unix:path=/run/systemd/private"
SYSTEM_BUS = b"unix:path=/run/dbus/system_bus_socket"
SIMPLE_TYPES = ("simple", "exec", "idle")
PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL(None, use_errno=True)

# What judge() needs; services have them all, other units the first four.
PROPS = ("LoadState", "ActiveState", "SubState", "Job", "Type", "Result", "NRestarts",
         "ExecMainStartTimestampMonotonic")


class Verdict(Enum):
    UP = "up"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True)
class UnitState:
    name: str
    load: str
    active: str
    sub: str
    type: str = ""  # services only
    result: str = ""
    restarts: int = 0
    age: float | None = None  # s since the main process started (0 timestamp: None)
    job: bool = False  # systemd is carrying out a job on it (a start, a restart)

    def describe(self) -> str:
        text = f"{self.active}/{self.sub}"
        if self.load != "loaded":
            text = f"{self.load}, {text}"
        if self.result and self.result != "success":
            text += f", result {self.result}"
        if self.restarts:
            text += f", restarted {self.restarts} time{'s' if self.restarts > 1 else ''}"
        return text


def judge(s: UnitState, steady: float = STEADY) -> tuple[Verdict, float]:
    """The unit's verdict, and for PENDING how long until it is worth asking again."""
    if s.active == "failed" or s.restarts >= 2:  # restart 2 follows a failed restart 1
        return Verdict.FAILED, 0.0
    if s.job:  # in between: a restart passes through auto-restart, inactive, activating
        return Verdict.PENDING, RECHECK
    if s.active in ("active", "reloading"):
        if s.type in SIMPLE_TYPES and s.age is not None and s.age < steady:
            return Verdict.PENDING, steady - s.age
        return Verdict.UP, 0.0
    if s.active == "inactive":
        ended = s.type == "oneshot" and s.result == "success" and s.load == "loaded"
        return (Verdict.UP if ended else Verdict.FAILED), 0.0
    if s.sub == "auto-restart" and s.restarts >= 1:
        return Verdict.FAILED, 0.0  # down again after a restart (no job: not the restart)
    return Verdict.PENDING, RECHECK


class ReadinessUnknown(HostError):
    """The sandbox's systemd could not be asked."""


def wait_until_up(name: str, ask: Callable[[], list[UnitState]],
                  reports: Callable[[float], list[str]], deadline: float,
                  steady: float = STEADY) -> list[str]:
    """Ask (`ask`: the units' states) until every unit is up or one is not: returns the units
    that failed (each described on stderr), or [] when all are up. Between two questions,
    `reports(seconds)` waits up to that long for units the sandbox reported failed
    (VSS_FAILED), which end the wait at once. A unit still pending at `deadline` has failed.
    `steady` is judge's. Raises ReadinessUnknown (or HostError) where the sandbox's systemd
    cannot be asked."""
    began = time.monotonic()
    while True:
        verdicts = [(s, *judge(s, steady)) for s in ask()]
        log.debug("%s: %s", name, "; ".join(f"{s.name} {s.describe()}: {v.value}"
                                            for s, v, _ in verdicts))
        failed = [s for s, v, _ in verdicts if v is Verdict.FAILED]
        pending = [(s, wait) for s, v, wait in verdicts if v is Verdict.PENDING]
        if not failed and pending and time.monotonic() >= deadline:
            failed = [s for s, _ in pending]
        if failed:
            for s in failed:
                print(f"{s.name} is not up in sandbox {name}: {s.describe()}",
                      file=sys.stderr, flush=True)
            return [s.name for s in failed]
        if not pending:
            log.debug("%s: units up, asked in %.1f ms", name, (time.monotonic() - began) * 1e3)
            return []
        wait = min(max(min(w for _, w in pending), 0.01), RECHECK, deadline - time.monotonic())
        if reported := reports(max(wait, 0.0)):
            return reported


def prepare() -> None:
    """Load what asking needs (pystemd: ~6 ms); `start` calls this while the sandbox boots."""
    import pystemd.dbuslib  # noqa: F401


def unit_states(dom: libvirt.virDomain, units: tuple[str, ...] | list[str],
                timeout: float = ASK_TIMEOUT) -> list[UnitState]:
    """Ask the running LXC sandbox's systemd the state of `units` (see the module's doc)."""
    fds = open_namespaces(dom)
    try:
        by_type = {os.readlink(f"/proc/self/fd/{fd}").split(":")[0]: fd for fd in fds}
        if "pid" not in by_type or "mnt" not in by_type:
            raise ReadinessUnknown(f"libvirt gave no PID or mount namespace of '{dom.name()}'")
        prepare()  # before the fork: the child loads nothing

        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                _child(by_type, list(units), wfd)
            os.close(wfd)
            wfd = -1
            data = _read_all(rfd, pid, timeout, dom.name())
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
    finally:
        for fd in fds:
            os.close(fd)
    try:
        answer = json.loads(data)
        if "error" in answer:
            raise ReadinessUnknown(f"cannot ask the systemd of sandbox '{dom.name()}' its "
                                   f"units' state: {answer['error']}")
        return [UnitState(**u) for u in answer["units"]]
    except (ValueError, TypeError, KeyError) as e:
        raise ReadinessUnknown(f"unreadable answer about the units of '{dom.name()}': "
                               f"{e}") from None


def _read_all(fd: int, pid: int, timeout: float, name: str) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ReadinessUnknown(f"the systemd of sandbox '{name}' did not answer "
                                       f"within {timeout:g} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except BaseException:
        _kill(pid)
        raise
    finally:
        _reap(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _child(by_type: dict[str, int], units: list[str], wfd: int) -> None:
    """In the forked child: join the sandbox's namespaces, ask from a grandchild (a new PID
    namespace applies to children only), pass its answer on. Never returns."""
    try:
        # The sandbox's root must be ours, with --userns too (its systemd takes root only).
        user = by_type.get("user")
        if user is not None and _ns_id(os.fstat(user)) != _ns_id(os.stat("/proc/self/ns/user")):
            _setns(user, "user")
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        private = _libc.setns(by_type["pid"], 0) == 0  # EINVAL: not below us (test host)
        _setns(by_type["mnt"], "mnt")
        # The grandchild inherits nothing of ours but the namespaces and the answer pipe.
        os.closerange(3, wfd)
        os.closerange(wfd + 1, 1 << 20)
        pid = os.fork()
        if pid == 0:
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            signal.setitimer(signal.ITIMER_REAL, ASK_TIMEOUT + 1)  # SIGALRM ends it
            os.chdir("/")
            answer: dict[str, object] = {"units": _ask(units, private)}
            _write(wfd, answer)
            os._exit(0)
        _reap(pid)
        os._exit(0)
    except BaseException as e:  # never return into the parent's code in a forked child
        try:
            _write(wfd, {"error": str(e) or type(e).__name__})
        finally:
            os._exit(1)


def _ns_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def _write(fd: int, answer: dict[str, object]) -> None:
    data = json.dumps(answer).encode()
    while data:
        data = data[os.write(fd, data):]


def _ask(units: list[str], private: bool) -> list[dict[str, object]]:
    from pystemd.dbuslib import DBusAddress, apply_signature, path_encode

    out = []
    with DBusAddress(PRIVATE_BUS if private else SYSTEM_BUS, private) as bus:
        for unit in units:
            # All its properties in one answer (GetAll of every interface, as systemctl show
            # asks): one moment's state, where one Get each could straddle a restart.
            reply = bus.call_method(b"org.freedesktop.systemd1",
                                    path_encode(b"/org/freedesktop/systemd1/unit",
                                                unit.encode()),
                                    b"org.freedesktop.DBus.Properties", b"GetAll",
                                    apply_signature(b"s", [b""]))
            now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            got: dict[str, object] = {}
            for key, value in reply.body.items():
                name = key.decode()
                if name == "Job":  # (id, path); id 0: none
                    got[name] = value[0]
                elif name in PROPS:
                    got[name] = value.decode() if isinstance(value, bytes) else value
            out.append(dataclasses.asdict(_state(unit, got, now_us)))
    return out


def _state(unit: str, got: dict[str, object], now_us: int) -> UnitState:
    started = int(str(got.get("ExecMainStartTimestampMonotonic", 0)))
    return UnitState(name=unit, load=_word(got["LoadState"]), active=_word(got["ActiveState"]),
                     sub=_word(got["SubState"]), type=_word(got.get("Type", "")),
                     result=_word(got.get("Result", "")),
                     restarts=int(str(got.get("NRestarts", 0))),
                     age=(now_us - started) / 1e6 if started else None,
                     job=str(got.get("Job", "")) not in ("", "0"))


def _word(value: object) -> str:
    """A state word as the sandbox gave it, printable (it is printed on the host)."""
    return re.sub(r"[^\w.-]", "?", str(value))[:64]


# --- KVM: the guest's systemctl, through the guest agent ----------------------------------------

# The guest's uptime first (its clock, for the main processes' age), then one block per unit.
SHOW_SCRIPT = f'read -r up _ </proc/uptime && echo "$up" && ' \
              f'exec systemctl show -p {",".join(PROPS)} -- "$@"'


def parse_show(text: str, units: tuple[str, ...] | list[str]) -> list[UnitState]:
    """SHOW_SCRIPT's output: the uptime in seconds, then `systemctl show`'s blocks (KEY=VALUE
    lines, a blank line between units, in the order asked)."""
    first, _, rest = text.partition("\n")
    try:
        now_us = int(float(first) * 1e6)
    except ValueError:
        raise ReadinessUnknown(f"unreadable uptime from the guest: {first!r}") from None
    blocks = rest.strip("\n").split("\n\n")
    if len(blocks) != len(units):
        raise ReadinessUnknown(f"systemctl show gave {len(blocks)} answers for "
                               f"{len(units)} units")
    out = []
    for unit, block in zip(units, blocks, strict=True):
        got: dict[str, object] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in PROPS:
                got[key] = value
        if not {"LoadState", "ActiveState", "SubState"} <= got.keys():
            raise ReadinessUnknown(f"systemctl show said nothing of {unit}'s state")
        for key in ("NRestarts", "ExecMainStartTimestampMonotonic"):
            if not str(got.get(key, "0")).isdigit():
                got[key] = 0
        out.append(_state(unit, got, now_us))
    return out
