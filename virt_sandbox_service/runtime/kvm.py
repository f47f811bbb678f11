"""Start, stop and enter KVM sandboxes (micro-VMs booting the host's kernel and root).

The guest cannot reach the host's notify socket (an AF_UNIX socket does not cross a VM), so
the guest init (initrd/init) reports through the run directory the host shares into the guest
at /run/sandbox-host over virtio-9p: a unit that runs once the confined units have started
writes `ready` (READY=1, after a VSS_FAILED=UNIT line per failed unit), a confined unit that
fails later appends to `failed`, and a generic sandbox's init writes `exit-status`. We poll
for them: a file check every 50 ms costs nothing next to a TCG boot. `ready` only says the
units' start jobs are done (one in its auto-restart loop has passed its own), so `start` then
asks the guest's systemctl through the agent until each confined unit is up (readiness.py).

`execute`, `reload` and a clean `stop` go through the QEMU guest agent (qemu-ga of the host's
own root, started by the guest init on the org.qemu.guest_agent.0 channel): `guest-exec`
returns the command's exit status and its stdout and stderr apart. Its limits, documented:
output comes back when the command ends (not streamed), at most 16 MiB per stream, and
standard input is read to its end and sent before the command starts (not when it is a
terminal). Shutdown: systemd has no logind to act on an ACPI power button in a sandbox, so a
clean stop asks the agent (guest-shutdown: systemd powers off), then destroys the domain
after the timeout.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import libvirt

from .. import hostsources, progress
from ..apply.libvirt import is_active as _active
from ..config import Kind, Paths, SandboxConfig
from ..errors import HostError, UserError
from ..limits import Jail
from ..units import EXIT_NOT_CONFIGURED
from . import readiness
from .common import (
    EXIT_FILE,
    InnerFailure,
    Stopped,
    confirm_up,
    copy_console,
    exit_status,
    fail_start,
    log_hint,
    print_display,
    read_channel,
    run_dir,
)
from .common import domain as domain  # part of the Backend protocol
from .common import print_error as _print_error
from .common import raise_stopped as _raise_stopped
from .common import report_inner_failure as _report_inner_failure
from .notify import notify_host_manager, status
from .poweroff import InitProcess, mark_stopping, stop_marker

log = logging.getLogger(__name__)
POLL = 0.05
READY_FILE = "ready"
FAILED_FILE = "failed"
AGENT_WAIT = 30.0  # seconds to wait for the guest agent to come up (TCG boots slowly)
CONSOLE_DRAIN = 1.0
STDIN_WAIT = 0.2


# --- start -------------------------------------------------------------------------------------


def start(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths, *,
          detach: bool = False, timeout: float = 90, tty: bool = False) -> int:
    from .. import initrd

    dom = domain(conn, cfg)
    if dom.isActive():
        raise UserError(f"sandbox '{cfg.name}' is already running",
                        f"stop it first: virt-sandbox-service stop {cfg.name}")
    hostsources.check_at_start(cfg)
    initrd.ensure()  # the domain boots the cached files: (re)build them if stale
    rdir = run_dir(paths, cfg.name)
    rdir.mkdir(parents=True, exist_ok=True)
    stop_marker(paths, cfg.name).unlink(missing_ok=True)
    for leftover in (READY_FILE, ".ready", FAILED_FILE, EXIT_FILE):
        (rdir / leftover).unlink(missing_ok=True)
    since = time.time()
    status(f"Starting sandbox {cfg.name}: booting its VM.")
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt could not start '{cfg.name}': {e.get_error_message()}",
                        "'virt-sandbox-service doctor' checks the host") from e
    if cfg.graphics is not None:
        print_display(dom)
    try:
        if cfg.kind is Kind.SERVICE:
            with progress.step(f"booting sandbox {cfg.name}"):
                _wait_ready(dom, cfg, rdir, timeout, since)
    except InnerFailure as e:
        _print_error(e)
        return EXIT_NOT_CONFIGURED
    except BaseException:
        _stop_domain(dom, cfg, 10)  # nobody would watch it
        raise
    notify_host_manager(ready="1", status=f"Sandbox {cfg.name} is ready.")
    print(f"sandbox {cfg.name} is ready", flush=True)
    if detach:
        return 0
    return _foreground(conn, dom, cfg, paths, since)


def _wait_ready(dom: libvirt.virDomain, cfg: SandboxConfig, rdir: Path, timeout: float,
                since: float) -> None:
    deadline = time.monotonic() + timeout
    status(f"Starting sandbox {cfg.name}: waiting for its systemd to boot.")
    while (text := read_channel(rdir / READY_FILE)) is None:
        if not _active(dom):
            raise HostError(f"sandbox '{cfg.name}' stopped while starting",
                            log_hint(cfg))
        if time.monotonic() > deadline:
            _force_stop(dom)
            raise HostError(f"sandbox '{cfg.name}' was not ready after {timeout:g} s",
                            log_hint(cfg))
        time.sleep(POLL)
    failed = [line.split("=", 1)[1] for line in text.splitlines()
              if line.startswith("VSS_FAILED=")]
    if failed:
        fail_start(cfg, failed, since, lambda: _graceful_stop(dom, 10))
    status(f"Starting sandbox {cfg.name}: checking {', '.join(cfg.units)}.")
    _wait_units_up(dom, cfg, rdir, deadline, since)


def _wait_units_up(dom: libvirt.virDomain, cfg: SandboxConfig, rdir: Path, deadline: float,
                   since: float) -> None:
    """`ready` says the confined units' start jobs are done, not that the units are up (one
    in its auto-restart loop has passed its start job): ask the guest's systemd until each is
    up or one is not (readiness.py), through the guest agent."""

    def reports(seconds: float) -> list[str]:
        time.sleep(seconds)
        text = read_channel(rdir / FAILED_FILE) or ""
        return [line.split("=", 1)[1] for line in text.splitlines() if "=" in line]

    confirm_up(cfg, lambda: _guest_unit_states(dom, cfg.units), reports, deadline,
               readiness.STEADY_TCG if _under_tcg(dom) else readiness.STEADY,
               active=lambda: _active(dom), stop=lambda: _graceful_stop(dom, 10), since=since,
               trusted="the guest's readiness")


def _under_tcg(dom: libvirt.virDomain) -> bool:
    """Whether the guest is emulated (<domain type='qemu'>), not run by KVM."""
    try:
        return "<domain type='qemu'" in dom.XMLDesc(0)
    except libvirt.libvirtError:
        return True


AGENT_ASK = 10.0  # s for the guest's systemctl to answer (TCG is slow)


def _guest_unit_states(dom: libvirt.virDomain,
                       units: tuple[str, ...]) -> list[readiness.UnitState]:
    pid = agent(dom, "guest-exec", {"path": "/bin/sh", "capture-output": True,
                                    "arg": ["-c", readiness.SHOW_SCRIPT, "sh", *units]},
                wait=AGENT_ASK)["pid"]
    deadline = time.monotonic() + AGENT_ASK
    while not (status := agent(dom, "guest-exec-status", {"pid": pid}, wait=AGENT_ASK)).get(
            "exited"):
        if time.monotonic() > deadline:
            raise readiness.ReadinessUnknown(f"the guest's systemctl did not answer within "
                                             f"{AGENT_ASK:g} s")
        time.sleep(0.02)
    out = base64.b64decode(str(status.get("out-data", ""))).decode(errors="replace")
    if status.get("exitcode") != 0:
        err = base64.b64decode(str(status.get("err-data", ""))).decode(errors="replace")
        raise readiness.ReadinessUnknown(f"the guest's systemctl show failed: {err.strip()}")
    return readiness.parse_show(out, units)


def _foreground(conn: libvirt.virConnect, dom: libvirt.virDomain, cfg: SandboxConfig,
                paths: Paths, since: float) -> int:
    pump = threading.Thread(target=_copy_console, args=(conn, dom), daemon=True)
    pump.start()
    failed = run_dir(paths, cfg.name) / FAILED_FILE
    old = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while _active(dom):
            if (text := read_channel(failed)) is not None:
                units = [line.split("=", 1)[1] for line in text.splitlines() if "=" in line]
                print(f"{', '.join(units)} failed in the sandbox; stopping it", flush=True)
                _graceful_stop(dom, 30)
                _report_inner_failure(cfg, units, since)
                return 1
            time.sleep(POLL * 4)
    except Stopped:
        stop(conn, cfg, paths)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        pump.join(CONSOLE_DRAIN)
    return exit_status(cfg, paths)


def _copy_console(conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
    """The guest's serial console (kernel messages, a generic command's output) to stdout."""
    copy_console(conn, dom, libvirt.VIR_DOMAIN_CONSOLE_FORCE,
                 lambda data: data.replace(b"\r\n", b"\n"))


# --- stop --------------------------------------------------------------------------------------


def stop(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths,
         timeout: float = 30, asked: InitProcess | None = None) -> bool:
    """Stop the sandbox; returns False if it was not running. `asked` is None: a VM's init
    is not the host's to signal (poweroff.request is LXC only)."""
    if asked is not None:
        asked.close()
    dom = domain(conn, cfg)
    if not _active(dom):
        return False
    mark_stopping(paths, cfg.name)
    _stop_domain(dom, cfg, timeout)
    return True


def _stop_domain(dom: libvirt.virDomain, cfg: SandboxConfig, timeout: float) -> None:
    if cfg.kind is Kind.SERVICE:
        _graceful_stop(dom, timeout)
    else:
        if cfg.image_size is not None:
            _freeze_image(dom)
        _force_stop(dom)


FREEZE_WAIT = 10.0


def _freeze_image(dom: libvirt.virDomain) -> None:
    """-i, generic sandbox: it is destroyed (its command has no clean way to end), so first
    freeze the image's file system through the agent, which writes it out and checkpoints its
    journal as an unmount would: the host then reads the image as the guest left it
    (image.mounted replays no journal). Best effort: where it fails, the next writable mount
    (start, clone, upgrade) replays the journal."""
    try:
        pid = agent(dom, "guest-exec", {"path": "fsfreeze", "arg": ["--freeze", "/var"]},
                    wait=FREEZE_WAIT)["pid"]
        deadline = time.monotonic() + FREEZE_WAIT
        while time.monotonic() < deadline:
            if agent(dom, "guest-exec-status", {"pid": pid}).get("exited"):
                return
            time.sleep(POLL)
    except HostError as e:
        log.debug("freezing the image of %s: %s", dom.name(), e)


def _graceful_stop(dom: libvirt.virDomain, timeout: float) -> None:
    """Ask the guest's systemd to power off (through the agent); destroy after `timeout`.

    Not the agent's guest-shutdown: it runs `shutdown +0`, which asks logind to schedule the
    power-off, and a sandbox has no logind. `systemctl poweroff` talks to systemd directly.
    """
    try:
        agent(dom, "guest-exec", {"path": "systemctl", "arg": ["poweroff", "--no-block"]},
              wait=min(timeout, AGENT_WAIT))
    except HostError as e:
        log.debug("clean power-off of %s: %s", dom.name(), e)
        timeout = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _active(dom):
            return
        time.sleep(POLL)
    _force_stop(dom)


def _force_stop(dom: libvirt.virDomain) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        if _active(dom):
            raise HostError(f"cannot stop {dom.name()}: {e.get_error_message()}") from e


# --- execute (guest agent) ---------------------------------------------------------------------


def agent(dom: libvirt.virDomain, command: str, arguments: dict[str, object],
          wait: float = AGENT_WAIT) -> dict[str, object]:
    """One guest agent command; waits up to `wait` s for the agent to be connected."""
    import libvirt_qemu

    deadline = time.monotonic() + wait
    request = json.dumps({"execute": command, "arguments": arguments})
    while True:
        try:
            reply = json.loads(libvirt_qemu.qemuAgentCommand(dom, request, 30, 0))
            return dict(reply.get("return", {}))
        except libvirt.libvirtError as e:
            code = e.get_error_code()
            if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                raise HostError(f"the guest agent of '{dom.name()}' does not answer",
                                "install qemu-guest-agent on the host (the guest runs the "
                                "host's own), then restart the sandbox") from e
            raise AgentError(e.get_error_message() or "the guest agent failed") from e


class AgentError(HostError):
    pass


def execute(dom: libvirt.virDomain, argv: list[str], env: dict[str, str], *,
            jail: Jail | None = None) -> int:
    """Run argv in the guest; print its stdout and stderr apart; return its exit status.
    `jail` is for LXC: a VM's own kernel is the boundary of what runs in it."""
    if not _active(dom):
        raise UserError(f"sandbox '{dom.name()}' is not running",
                        f"start it: virt-sandbox-service start {dom.name()}")
    args: dict[str, object] = {"path": argv[0], "arg": argv[1:], "capture-output": True,
                               "env": [f"{k}={v}" for k, v in env.items()]}
    data = _stdin_data()
    if data:
        args["input-data"] = base64.b64encode(data).decode()
    try:
        pid = agent(dom, "guest-exec", args)["pid"]
    except AgentError as e:
        print(f"virt-sandbox-service: {argv[0]}: {e.message}", file=sys.stderr)
        return 127 if "No such file" in e.message else 126
    delay = 0.01
    while True:
        status = agent(dom, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    for key, fd in (("out-data", 1), ("err-data", 2)):
        text = status.get(key)
        if isinstance(text, str):
            sys.stdout.flush()
            os.write(fd, base64.b64decode(text))
    if "signal" in status:
        return 128 + int(str(status["signal"]))
    return int(str(status.get("exitcode", 1)))


def _stdin_data() -> bytes:
    """Our stdin, read to its end: a file, or a pipe with data within STDIN_WAIT seconds
    (an idle pipe that stays open is not waited for). Never a terminal."""
    import select
    import stat

    with contextlib.suppress(OSError):
        mode = os.fstat(0).st_mode
        if os.isatty(0) or not (stat.S_ISREG(mode) or select.select([0], [], [], STDIN_WAIT)[0]):
            return b""
        out = bytearray()
        while chunk := os.read(0, 1 << 16):
            out += chunk
        return bytes(out)
    return b""


def sandbox_env(cfg: SandboxConfig) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "HOSTNAME": cfg.name}
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    return env


def reload(dom: libvirt.virDomain, cfg: SandboxConfig, units: list[str]) -> int:
    unknown = [u for u in units if u not in cfg.units]
    if unknown:
        raise UserError(f"{', '.join(unknown)} is not confined in sandbox '{cfg.name}'",
                        f"its units: {', '.join(cfg.units)}")
    return execute(dom, ["systemctl", "reload", *(units or cfg.units)], sandbox_env(cfg))
