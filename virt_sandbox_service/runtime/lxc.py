"""Start, stop and enter LXC sandboxes.

`start` is what the generated unit's ExecStart runs: it starts the domain, waits until the
sandbox's systemd reports READY=1 on the notify socket (or a confined unit reports failure)
and then until its systemd says each confined unit is up (readiness.py), forwards readiness
to the host's systemd, copies the sandbox console to stdout (so it lands in the host journal
under the unit) and returns when the domain ends, with the right exit status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from .. import host, hostsources, progress
from ..apply import apparmor, kernelfs
from ..apply import labels as apply_labels
from ..apply.whiteout import make_whiteout
from ..config import Kind, Paths, SandboxConfig
from ..errors import HostError, UserError
from ..hostsecrets import hidden_secrets
from ..layout import (
    ETC_WORK,
    EVIDENCE_FILE,
    EXIT_STATUS_FILE,
    GO_FIFO,
    HOST_CHANNEL,
)
from ..units import EXIT_NOT_CONFIGURED
from .common import (
    EXIT_FILE,
    InnerFailure,
    Stopped,
    confirm_up,
    copy_console,
    exit_status,
    fail_start,
    run_dir,
    start_failure_hint,
)
from .common import domain as domain  # part of the Backend protocol
from .common import print_error as _print_error
from .common import raise_stopped as _raise_stopped
from .common import report_inner_failure as _report_inner_failure
from .enter import init_pid, v2_cgroup
from .lxccgroups import CGROUP_DRAIN_SECONDS as CGROUP_DRAIN_SECONDS
from .lxccgroups import copy_throttles_live as copy_throttles_live
from .lxccgroups import remove_cgroups as remove_cgroups
from .lxccgroups import set_tasks_live as set_tasks_live
from .lxcstop import POLL, _active, _force_stop, _graceful_stop, _stop_domain
from .notify import NotifyListener, notify_host_manager, status
from .poweroff import InitProcess, is_controller, mark_stopping, stop_marker

if TYPE_CHECKING:
    from ..limits import Jail

log = logging.getLogger(__name__)


def start(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths, *,
          detach: bool = False, timeout: float = 90, tty: bool = False) -> int:
    dom = domain(conn, cfg)
    if dom.isActive():
        raise UserError(f"sandbox '{cfg.name}' is already running",
                        f"stop it first: virt-sandbox-service stop {cfg.name}")
    check_state(cfg)
    hostsources.check_at_start(cfg)
    if cfg.etc_overlay:
        # The work directory is the overlay's scratch space, ours: made again if lost.
        os.makedirs(Path(cfg.state_dir) / ETC_WORK, 0o700, exist_ok=True)
        hide_new_secrets(cfg)
    remove_cgroups(cfg.name)
    rdir = run_dir(paths, cfg.name)
    rdir.mkdir(parents=True, exist_ok=True)
    apply_labels.label_channel(cfg, str(rdir))
    stop_marker(paths, cfg.name).unlink(missing_ok=True)
    (rdir / EXIT_FILE).unlink(missing_ok=True)
    go = rdir / os.path.basename(GO_FIFO)
    go.unlink(missing_ok=True)
    if cfg.kind is Kind.GENERIC and not detach:
        os.mkfifo(go, 0o600)  # the command waits for the console (plan.GO_FIFO)
    listener = NotifyListener(rdir / "notify")
    since = time.time()
    try:
        try:
            # Inside: a Ctrl-C that lands as libvirt returns must not leave it running.
            status(f"Starting sandbox {cfg.name}: its domain.")
            with progress.step(f"starting sandbox {cfg.name}"):
                _create(dom, cfg)
                # What start needs only once its domain runs loads while the sandbox boots.
                from . import readiness

                _hold_tasks_v2(dom, cfg)
                if cfg.kind is Kind.SERVICE:
                    readiness.prepare()  # while the sandbox boots
                    _wait_ready(dom, cfg, listener, timeout, since)
                if cfg.networks:
                    status(f"Starting sandbox {cfg.name}: waiting for its addresses.")
                    _wait_addresses(dom, cfg)
        except InnerFailure as e:
            _print_error(e)
            return EXIT_NOT_CONFIGURED
        except BaseException:
            # SIGTERM (systemctl stop while starting, TimeoutStartSec=), Ctrl-C or an error:
            # the domain must not stay up with nobody to watch it. The unit's ExecStop= does
            # not run for a start that never completed.
            _stop_domain(dom, cfg, 10)
            raise
        notify_host_manager(ready="1", status=f"Sandbox {cfg.name} is ready.")
        print(f"sandbox {cfg.name} is ready", flush=True)
        if detach:
            return 0
        return _foreground(conn, dom, cfg, paths, listener, since, tty)
    finally:
        listener.close()


IFA_F_TENTATIVE = 0x40  # linux/if_addr.h: IPv6 duplicate address detection still running
ADDRESS_WAIT = 10.0  # seconds; DAD takes about one second


def _wait_addresses(dom: libvirt.virDomain, cfg: SandboxConfig) -> None:
    """Ready means reachable: wait until the sandbox's static IPv6 addresses have passed
    duplicate address detection (until then they answer nothing)."""
    if not any(":" in a.ip for n in cfg.networks for a in n.addresses):
        return
    deadline = time.monotonic() + ADDRESS_WAIT
    while time.monotonic() < deadline:
        try:
            table = Path(f"/proc/{init_pid(dom)}/net/if_inet6").read_text()
        except OSError:
            return  # not visible from here (see sees_controller): nothing to wait on
        if not any(int(row.split()[4], 16) & IFA_F_TENTATIVE for row in table.splitlines()):
            return
        time.sleep(POLL)
    log.warning("%s: IPv6 addresses still tentative after %g s", cfg.name, ADDRESS_WAIT)


def check_state(cfg: SandboxConfig) -> None:
    """The private trees the domain mounts must be there, or libvirt fails obscurely."""
    if cfg.image_size is not None:  # -i: the trees are in the image (see image.py)
        if not os.path.isfile(os.path.join(cfg.state_dir, "private.img")):
            raise HostError(f"sandbox '{cfg.name}' lacks its image {cfg.state_dir}/private.img",
                            f"its state is damaged: virt-sandbox-service delete {cfg.name}, "
                            "then create it again")
        return
    for tree in ("etc", "var"):
        if not os.path.isdir(os.path.join(cfg.state_dir, tree)):
            raise HostError(f"sandbox '{cfg.name}' lacks its private {tree} "
                            f"({cfg.state_dir}/{tree})",
                            f"its state is damaged: virt-sandbox-service delete {cfg.name}, "
                            "then create it again")


def hide_new_secrets(cfg: SandboxConfig) -> list[str]:
    """Overlay /etc: the host's /etc is seen live, so a secret the host gained since the
    sandbox was made (a new package's 0600 credentials) gets its whiteout now, before the
    sandbox sees /etc. Paths its evidence makes its own are not secrets of the host's."""
    state = Path(cfg.state_dir)
    try:
        record = json.loads((state / EVIDENCE_FILE).read_text())
        allowed = [e["path"] for e in record.get("evidence", [])
                   if isinstance(e, dict) and str(e.get("path", "")).startswith("/etc")]
    except (OSError, ValueError) as e:
        raise HostError(f"cannot read {state / EVIDENCE_FILE}: {e}",
                        "its state is damaged: recreate the sandbox") from None
    made = []
    for secret in hidden_secrets(Path("/etc"), allowed):
        target = str(state / "etc" / os.path.relpath(secret.path, "/etc"))
        try:
            if make_whiteout(target, secret.path):
                made.append(secret.path)
        except OSError as e:
            raise HostError(f"cannot hide the host's {secret.path} from sandbox "
                            f"'{cfg.name}': {e.strerror}") from e
    if made:
        log.info("%s: hid the host's new secrets: %s", cfg.name, ", ".join(made))
    return made


def _create(dom: libvirt.virDomain, cfg: SandboxConfig) -> None:
    # The sandbox's own AppArmor profile, where libvirt applies AppArmor (see apparmor.py).
    apparmor.load_for(dom.XMLDesc(0))
    kernelfs.load()
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt could not start '{cfg.name}': {e.get_error_message()}",
                        "'virt-sandbox-service doctor' checks the host") from e


def _hold_tasks_v2(dom: libvirt.virDomain, cfg: SandboxConfig) -> None:
    """--tasks on a pure cgroup v2 host. libvirt (9.0) has no tasks limit and enables no
    pids controller below the domain's scope, so the limit goes on the scope itself, which
    holds every process of the sandbox. It is set as soon as the domain exists: before the
    sandbox's systemd has started any unit (on hybrid hosts the init does it, initscript.py)."""
    if not cfg.tasks or host.cgroup_layout().kind != "v2":
        return
    rel = v2_cgroup(init_pid(dom))
    root = Path("/sys/fs/cgroup")
    at = root / rel.lstrip("/")
    while at != root and not (at / "pids.max").exists():
        at = at.parent
    if at == root:
        raise HostError(f"no pids controller holds sandbox '{cfg.name}' ({rel})",
                        "create it without --tasks; 'virt-sandbox-service doctor' checks")
    from ..apply import systemd as sd

    sd.set_tasks_max(at, cfg.tasks)


def _wait_ready(dom: libvirt.virDomain, cfg: SandboxConfig, listener: NotifyListener,
                timeout: float, since: float) -> None:
    deadline = time.monotonic() + timeout
    failed: list[str] = []
    status(f"Starting sandbox {cfg.name}: waiting for its systemd to boot.")
    while time.monotonic() < deadline:
        msg = listener.receive(POLL)
        if msg is None:
            if not dom.isActive():
                raise HostError(f"sandbox '{cfg.name}' stopped while starting",
                                start_failure_hint(cfg))
            continue
        if "VSS_FAILED" in msg:
            failed.append(msg["VSS_FAILED"])
        if msg.get("READY") == "1":
            log.debug("%s: READY=1 after %.3f s", cfg.name, time.time() - since)
            break
    else:
        _force_stop(dom)
        raise HostError(f"sandbox '{cfg.name}' was not ready after {timeout:g} s",
                        start_failure_hint(cfg))
    if failed:
        fail_start(cfg, failed, since, lambda: _graceful_stop(dom, 10))
    status(f"Starting sandbox {cfg.name}: checking {', '.join(cfg.units)}.")
    _wait_units_up(dom, cfg, listener, deadline, since)


def _wait_units_up(dom: libvirt.virDomain, cfg: SandboxConfig, listener: NotifyListener,
                   deadline: float, since: float) -> None:
    """READY=1 says the sandbox's boot jobs are done, not that its units are up: ask its
    systemd until each confined unit is up or one is not (readiness.py)."""
    from . import readiness  # loaded by start once its domain runs

    def reports(seconds: float) -> list[str]:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            msg = listener.receive(left)
            if msg and "VSS_FAILED" in msg:
                return [msg["VSS_FAILED"]]
        return []

    confirm_up(cfg, lambda: readiness.unit_states(dom, cfg.units), reports, deadline,
               readiness.STEADY, active=lambda: _active(dom),
               stop=lambda: _graceful_stop(dom, 10), since=since, trusted="its READY=1")


def _foreground(conn: libvirt.virConnect, dom: libvirt.virDomain, cfg: SandboxConfig,
                paths: Paths, listener: NotifyListener, since: float, tty: bool = False) -> int:
    attached = threading.Event()
    terminal: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if tty:  # our terminal is the console's, both ways (runtime/console.py)
        from . import console

        pump, terminal = console.attach_lxc_console(conn, dom, init_pid(dom), attached)
    else:
        pump = threading.Thread(target=_copy_console, args=(conn, dom, attached), daemon=True)
    pump.start()
    fifo = run_dir(paths, cfg.name) / os.path.basename(GO_FIFO)
    go = _let_go(fifo, attached)
    old = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with terminal:
            return _watch(conn, dom, cfg, paths, listener, since)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        # The console's last lines (the sandbox's shutdown) are still on their way.
        pump.join(CONSOLE_DRAIN)
        if go is not None:
            os.close(go)
            fifo.unlink(missing_ok=True)  # a later start without a console must not wait


def _watch(conn: libvirt.virConnect, dom: libvirt.virDomain, cfg: SandboxConfig,
           paths: Paths, listener: NotifyListener, since: float) -> int:
    """Until the sandbox stops: its unit failures, a stop asked for, then its exit status."""
    try:
        while _active(dom):
            msg = listener.receive(POLL * 4)
            if msg and "VSS_FAILED" in msg:
                print(f"{msg['VSS_FAILED']} failed in the sandbox; stopping it", flush=True)
                _graceful_stop(dom, 30)
                _report_inner_failure(cfg, [msg["VSS_FAILED"]], since)
                return 1
    except Stopped:
        stop(conn, cfg, paths)
        return 0
    return _exit_status(cfg, paths)


def _let_go(fifo: Path, attached: threading.Event) -> int | None:
    """A generic sandbox's command runs once we copy its console: write its FIFO (kept open,
    so the line stays there until the init reads it). None where there is no FIFO."""
    attached.wait(CONSOLE_ATTACH)
    try:
        fd = os.open(fifo, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.write(fd, b"go\n")
    return fd


CONSOLE_ATTACH = 5.0  # seconds to wait for the console before letting the command run anyway


CONSOLE_DRAIN = 1.0  # seconds to wait for the console's end once the domain is gone
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_CRLF = re.compile(rb"\r+\n")


def _copy_console(conn: libvirt.virConnect, dom: libvirt.virDomain,
                  attached: threading.Event | None = None) -> None:
    """Copy the sandbox's console (its systemd's status lines, its init's output) to stdout.

    The LXC driver accepts no flags for openConsole (VIR_DOMAIN_CONSOLE_FORCE is refused with
    "unsupported flags"). The console is a tty: drop colour escapes and carriage returns.
    """
    copy_console(conn, dom, 0, lambda data: _CRLF.sub(b"\n", _ANSI.sub(b"", data)), attached)


def _exit_status(cfg: SandboxConfig, paths: Paths) -> int:
    remove_cgroups(cfg.name)
    return exit_status(cfg, paths)


def stop(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths,
         timeout: float = 30, asked: InitProcess | None = None) -> bool:
    """Stop the sandbox; returns False if it was not running. `asked`: its init, already
    asked to power off (poweroff.request), which this stop takes over."""
    dom = domain(conn, cfg)
    if not dom.isActive():
        if asked is not None:
            asked.close()
        remove_cgroups(cfg.name)
        return asked is not None  # it was running when asked, and ended since
    mark_stopping(paths, cfg.name)
    _stop_domain(dom, cfg, timeout, asked)
    remove_cgroups(cfg.name)
    return True


# --- execute (its machinery in lxcexec.py, loaded only by the commands that enter) ---------

NS_ORDER = ("user", "ipc", "uts", "net", "pid", "mnt")


def execute(dom: libvirt.virDomain, argv: list[str], env: dict[str, str], *,
            jail: Jail | None = None, namespaces: tuple[str, ...] = NS_ORDER,
            cgroup: bool = True) -> int:
    """Run argv inside the running sandbox; its stdio is ours, its exit status is returned
    (lxcexec.execute says how)."""
    from . import lxcexec

    return lxcexec.execute(dom, argv, env, jail=jail, namespaces=namespaces, cgroup=cgroup)


def sandbox_env(cfg: SandboxConfig) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "container": "lxc-libvirt",
        "HOSTNAME": cfg.name,
    }
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    return env


# The Backend protocol (runtime/__init__.py), and what other modules import.
__all__ = ["EXIT_STATUS_FILE", "HOST_CHANNEL", "domain", "execute", "reload", "sandbox_env",
           "start", "stop"]


def reload(dom: libvirt.virDomain, cfg: SandboxConfig, units: list[str]) -> int:
    """Reload the confined units with the sandbox's own systemctl."""
    from ..limits import jail

    if cfg.kind is not Kind.SERVICE:
        raise UserError(f"sandbox '{cfg.name}' runs a command, not units; nothing to reload",
                        f"restart it: virt-sandbox-service stop {cfg.name}, then start it")
    unknown = [u for u in units if u not in cfg.units]
    if unknown:
        raise UserError(f"{', '.join(unknown)} is not confined in sandbox '{cfg.name}'",
                        f"its units: {', '.join(cfg.units)}")
    argv = ["systemctl", "reload", *(units or cfg.units)]
    env = sandbox_env(cfg)
    if sees_controller(dom):
        return execute(dom, argv, env, jail=jail(cfg))
    # We run in a PID namespace beside libvirtd's (a systemd in a container drives the host's
    # libvirtd, as in the systemd test host): setns() into the sandbox's PID namespace works
    # only from an ancestor, and libvirt finds the sandbox's cgroup through /proc/<domain ID>,
    # which we cannot see. systemctl needs neither: it enters the sandbox's filesystem. Its
    # systemd refuses private-socket clients whose PID it cannot see, so go through the
    # sandbox's D-Bus daemon, which checks only the caller's UID.
    return execute(dom, argv, {**env, "SYSTEMCTL_FORCE_BUS": "1"}, jail=jail(cfg),
                   namespaces=tuple(ns for ns in NS_ORDER if ns != "pid"), cgroup=False)


def sees_controller(dom: libvirt.virDomain) -> bool:
    """Whether this process sees the domain's libvirt_lxc controller, i.e. runs in libvirtd's
    PID namespace or an ancestor of it (the domain ID is the controller's PID there)."""
    try:
        return is_controller(dom.ID(), dom.name())
    except libvirt.libvirtError:
        return False
