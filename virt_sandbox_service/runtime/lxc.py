"""Start, stop and enter LXC sandboxes.

`start` is what the generated unit's ExecStart runs: it starts the domain, waits until the
sandbox's systemd reports READY=1 on the notify socket (or a confined unit reports failure),
forwards readiness to the host's systemd, copies the sandbox console to stdout (so it lands in
the host journal under the unit) and returns when the domain ends, with the right exit status.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import libvirt

from .. import host
from ..apply import libvirt as lv
from ..config import Kind, Paths, SandboxConfig
from ..errors import HostError, UserError
from ..plan import EXIT_STATUS_FILE, HOST_CHANNEL
from ..util import run
from .notify import NotifyListener, notify_host_manager

log = logging.getLogger(__name__)
POLL = 0.05  # seconds between domain state checks: cheap, and well under any human wait
STOP_MARKER = "stopping"


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while we wait in the foreground."""


def run_dir(paths: Paths, name: str) -> Path:
    return paths.run_dir / name


def domain(conn: libvirt.virConnect, cfg: SandboxConfig) -> libvirt.virDomain:
    dom = lv.lookup(conn, cfg.name)
    if dom is None:
        raise HostError(f"sandbox '{cfg.name}' has no libvirt domain",
                        f"recreate it: virt-sandbox-service delete {cfg.name}, then create")
    return dom


def start(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths, *,
          detach: bool = False, timeout: float = 90) -> int:
    dom = domain(conn, cfg)
    if dom.isActive():
        raise UserError(f"sandbox '{cfg.name}' is already running",
                        f"stop it first: virt-sandbox-service stop {cfg.name}")
    remove_cgroups(cfg.name)
    rdir = run_dir(paths, cfg.name)
    rdir.mkdir(parents=True, exist_ok=True)
    for leftover in (STOP_MARKER, "exit-status"):
        (rdir / leftover).unlink(missing_ok=True)
    listener = NotifyListener(rdir / "notify")
    try:
        _create(dom, cfg)
        if cfg.kind is Kind.SERVICE:
            _wait_ready(dom, cfg, listener, timeout)
        notify_host_manager(ready="1", status=f"Sandbox {cfg.name} is ready.")
        print(f"sandbox {cfg.name} is ready", flush=True)
        if detach:
            return 0
        return _foreground(conn, dom, cfg, paths, listener)
    finally:
        listener.close()


def _create(dom: libvirt.virDomain, cfg: SandboxConfig) -> None:
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt could not start '{cfg.name}': {e.get_error_message()}",
                        "'virt-sandbox-service doctor' checks the host") from e


def _wait_ready(dom: libvirt.virDomain, cfg: SandboxConfig, listener: NotifyListener,
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    failed: list[str] = []
    while time.monotonic() < deadline:
        msg = listener.receive(POLL)
        if msg is None:
            if not dom.isActive():
                raise HostError(f"sandbox '{cfg.name}' stopped while starting",
                                f"see journalctl -D {journal_dir(cfg)}")
            continue
        if "VSS_FAILED" in msg:
            failed.append(msg["VSS_FAILED"])
        if msg.get("READY") == "1":
            break
    else:
        _force_stop(dom)
        raise HostError(f"sandbox '{cfg.name}' was not ready after {timeout:g} s",
                        f"see journalctl -D {journal_dir(cfg)}")
    if failed:
        _report_inner_failure(cfg, failed)
        _graceful_stop(dom, 10)
        raise HostError(f"{', '.join(failed)} failed in sandbox '{cfg.name}'",
                        f"its log: journalctl -D {journal_dir(cfg)} -u {failed[0]}")


def journal_dir(cfg: SandboxConfig) -> str:
    return os.path.join(cfg.state_dir, "var", "log", "journal")


def _report_inner_failure(cfg: SandboxConfig, units: list[str]) -> None:
    """Print the failed unit's own log lines, so they land in the host unit's journal."""
    for unit in units:
        proc = run(["journalctl", "-D", journal_dir(cfg), "-u", unit, "-n", "30",
                    "--no-pager", "-o", "short-monotonic"], check=False, timeout=10)
        sys.stderr.write(proc.stdout.decode(errors="replace"))
    sys.stderr.flush()


def _foreground(conn: libvirt.virConnect, dom: libvirt.virDomain, cfg: SandboxConfig,
                paths: Paths, listener: NotifyListener) -> int:
    pump = threading.Thread(target=_copy_console, args=(conn, dom), daemon=True)
    pump.start()
    old = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while dom.isActive():
            msg = listener.receive(POLL * 4)
            if msg and "VSS_FAILED" in msg:
                print(f"{msg['VSS_FAILED']} failed in the sandbox; stopping it", flush=True)
                _report_inner_failure(cfg, [msg["VSS_FAILED"]])
                _graceful_stop(dom, 30)
                return 1
    except Stopped:
        stop(conn, cfg, paths)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return _exit_status(cfg, paths)


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


def _copy_console(conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
    try:
        stream = conn.newStream(0)
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        while True:
            data = stream.recv(65536)
            if not isinstance(data, bytes) or not data:
                return
            sys.stdout.buffer.write(data.replace(b"\r\n", b"\n"))
            sys.stdout.buffer.flush()
    except libvirt.libvirtError:
        return  # the domain went away


def _exit_status(cfg: SandboxConfig, paths: Paths) -> int:
    rdir = run_dir(paths, cfg.name)
    stopping = (rdir / STOP_MARKER).exists()
    remove_cgroups(cfg.name)
    if cfg.kind is Kind.GENERIC:
        try:
            return int((rdir / "exit-status").read_text().strip())
        except (OSError, ValueError):
            return 0 if stopping else 1
    # The sandbox's systemd gives no exit status; an end nobody asked for is a failure, so
    # that Restart=on-failure brings the sandbox back.
    return 0 if stopping else 1


def stop(conn: libvirt.virConnect, cfg: SandboxConfig, paths: Paths,
         timeout: float = 30) -> bool:
    """Stop the sandbox; returns False if it was not running."""
    dom = domain(conn, cfg)
    if not dom.isActive():
        remove_cgroups(cfg.name)
        return False
    rdir = run_dir(paths, cfg.name)
    if rdir.is_dir():
        (rdir / STOP_MARKER).write_text("stop requested\n")
    if cfg.kind is Kind.SERVICE:
        _graceful_stop(dom, timeout)
    else:
        _force_stop(dom)
    remove_cgroups(cfg.name)
    return True


def _graceful_stop(dom: libvirt.virDomain, timeout: float) -> None:
    """Ask the sandbox's systemd to power off (initctl); it ignores SIGTERM. Then destroy."""
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
    except libvirt.libvirtError as e:
        log.debug("initctl shutdown of %s: %s", dom.name(), e)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _active(dom):
            return
        time.sleep(POLL)
    _force_stop(dom)


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False


def _force_stop(dom: libvirt.virDomain) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        if _active(dom):
            raise HostError(f"cannot stop {dom.name()}: {e.get_error_message()}") from e


def remove_cgroups(name: str) -> None:
    """Remove the empty cgroup2 directories a stopped sandbox's systemd left behind.

    Only directories our sandbox init made (machine/lxc-PID-NAME.libvirt-lxc, see plan.py) are
    touched, and only when empty: rmdir fails on a cgroup that still has processes.
    """
    layout = host.cgroup_layout()
    if layout.kind != "hybrid" or layout.unified_mount is None:
        return
    pattern = re.compile(rf"lxc-\d+-{re.escape(name)}\.libvirt-lxc")
    machine = layout.unified_mount / "machine"
    if not machine.is_dir():
        return
    for top in machine.iterdir():
        if pattern.fullmatch(top.name):
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError as e:
                    log.debug("cgroup %s stays: %s", dirpath, e)


# --- execute ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
NS_ORDER = ("user", "ipc", "uts", "net", "pid", "mnt")


def execute(dom: libvirt.virDomain, argv: list[str], env: dict[str, str]) -> int:
    """Run argv inside the running sandbox; its stdio is ours, its exit status is returned."""
    import libvirt_lxc

    if not dom.isActive():
        raise UserError(f"sandbox '{dom.name()}' is not running",
                        f"start it: virt-sandbox-service start {dom.name()}")
    fds = libvirt_lxc.lxcOpenNamespace(dom, 0)
    pid = os.fork()
    if pid == 0:
        _child_enter_and_run(dom, fds, argv, env)
    for fd in fds:
        os.close(fd)
    return _wait_status(pid)


def _child_enter_and_run(dom: libvirt.virDomain, fds: list[int], argv: list[str],
                         env: dict[str, str]) -> None:
    try:
        import libvirt_lxc

        libvirt_lxc.lxcEnterCGroup(dom, 0)
        by_type = {os.readlink(f"/proc/self/fd/{fd}").split(":")[0]: fd for fd in fds}
        for ns in NS_ORDER:
            if ns in by_type and _libc.setns(by_type[ns], 0) != 0:
                err = ctypes.get_errno()
                if ns != "user":  # EINVAL: it is already ours (no user namespace in use)
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        # A new pid namespace applies to children only: fork once more.
        pid = os.fork()
        if pid == 0:
            os.chdir("/")
            try:
                os.execvpe(argv[0], argv, env)
            except OSError as e:
                print(f"virt-sandbox-service: {argv[0]}: {e.strerror}", file=sys.stderr)
                os._exit(127 if isinstance(e, FileNotFoundError) else 126)
        os._exit(_wait_status(pid))
    except BaseException as e:  # never return into the parent's code in a forked child
        print(f"virt-sandbox-service: cannot enter the sandbox: {e}", file=sys.stderr)
        os._exit(125)


def _wait_status(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


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


__all__ = ["EXIT_STATUS_FILE", "HOST_CHANNEL", "execute", "start", "stop"]


def reload(dom: libvirt.virDomain, cfg: SandboxConfig, units: list[str]) -> int:
    """Reload the confined units with the sandbox's own systemctl."""
    if cfg.kind is not Kind.SERVICE:
        raise UserError(f"sandbox '{cfg.name}' runs a command, not units; nothing to reload")
    unknown = [u for u in units if u not in cfg.units]
    if unknown:
        raise UserError(f"{', '.join(unknown)} is not confined in sandbox '{cfg.name}'",
                        f"its units: {', '.join(cfg.units)}")
    return execute(dom, ["systemctl", "reload", *(units or cfg.units)], sandbox_env(cfg))
