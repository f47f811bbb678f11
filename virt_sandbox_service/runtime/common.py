"""What the LXC and KVM runtimes share: errors, where a sandbox's runtime files live, the
domain lookup, and reporting a confined unit's failure."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import libvirt

from ..apply import libvirt as lv
from ..config import Driver, Kind, Paths, SandboxConfig
from ..errors import HostError, SandboxError
from ..util import run
from .poweroff import stop_marker

if TYPE_CHECKING:
    from ..unitfile import UnitFile
    from .readiness import UnitState


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while we wait in the foreground."""


class InnerFailure(HostError):
    """A confined unit failed while the sandbox started."""


def run_dir(paths: Paths, name: str) -> Path:
    return paths.run_dir / name


def journal_dir(cfg: SandboxConfig) -> str:
    return os.path.join(cfg.state_dir, "var", "log", "journal")


def domain(conn: libvirt.virConnect, cfg: SandboxConfig) -> libvirt.virDomain:
    dom = lv.lookup(conn, cfg.name)
    if dom is None:
        raise HostError(f"sandbox '{cfg.name}' has no libvirt domain",
                        f"recreate it: virt-sandbox-service delete {cfg.name}, then create")
    return dom


def print_error(e: HostError) -> None:
    """As the CLI prints errors; used where `start` returns a status instead of raising."""
    print(f"virt-sandbox-service: error: {e.message}", file=sys.stderr)
    if e.hint:
        print(f"virt-sandbox-service: hint: {e.hint}", file=sys.stderr)
    sys.stderr.flush()


def raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


def start_failure_hint(cfg: SandboxConfig) -> str:
    """Where a start failed before the sandbox said anything: the kernel limit its systemd
    most likely ran out of, if it is used up (hostlimits.py), else its journal."""
    from ..hostlimits import shortage_hint

    short = shortage_hint() if cfg.kind is Kind.SERVICE else None
    return f"{short}; {log_hint(cfg)}" if short else log_hint(cfg)


def log_hint(cfg: SandboxConfig, unit: str | None = None) -> str:
    """Where the user reads the sandbox's journal: its directory on the host, or (-i) from
    inside, the only place the image is mounted while the sandbox runs."""
    only = f" -u {unit}" if unit else ""
    if cfg.image_size is None:
        return f"{'its log: ' if unit else 'see '}journalctl -D {journal_dir(cfg)}{only}"
    return (f"its journal is in its image ({'printed above; ' if unit else ''}while it runs: "
            f"virt-sandbox-service execute {cfg.name} -- journalctl{only})")


def report_inner_failure(cfg: SandboxConfig, units: list[str], since: float) -> None:
    """Print the failed unit's own log lines, so they land in the host unit's journal.

    Only this start's lines: the sandbox's journal is persistent and every sandbox start
    shares the host kernel's boot ID, so `-b` cannot tell the starts apart. With -i the
    journal is in the image: call this once the sandbox has stopped (the image is then free
    to mount, see image.mounted); without, at any time.
    """
    if cfg.image_size is None:
        _print_unit_logs(journal_dir(cfg), units, since)
        return
    from .. import image

    try:
        with image.mounted(image.image_path(cfg.state_dir)) as root:
            _print_unit_logs(str(root / "var" / "log" / "journal"), units, since)
    except HostError as e:
        print(f"virt-sandbox-service: cannot read the sandbox's journal: {e.message}",
              file=sys.stderr)


def fail_start(cfg: SandboxConfig, failed: list[str], since: float,
               stop: Callable[[], None]) -> NoReturn:
    """Confined units failed while the sandbox started: stop it (`stop`, the backend's
    graceful stop), then print their log (after the stop: with -i the journal's image is only
    then free to mount), and fail the start."""
    stop()
    report_inner_failure(cfg, failed, since)
    why, hint = _lacking(cfg, failed, since)
    raise InnerFailure(f"{', '.join(failed)} failed in sandbox '{cfg.name}'{why}",
                       hint + log_hint(cfg, failed[0]))


def confirm_up(cfg: SandboxConfig, ask: Callable[[], list[UnitState]],
               reports: Callable[[float], list[str]], deadline: float, steady: float, *,
               active: Callable[[], bool], stop: Callable[[], None], since: float,
               trusted: str) -> None:
    """After the sandbox said it is ready: wait until its confined units are up
    (readiness.wait_until_up) or fail the start with the failed ones' log. Where its systemd
    cannot be asked, `trusted` (what its readiness is then taken from) is logged instead."""
    from . import readiness

    try:
        failed = readiness.wait_until_up(cfg.name, ask, reports, deadline, steady)
    except HostError as e:
        if not active():
            raise HostError(f"sandbox '{cfg.name}' stopped while starting",
                            start_failure_hint(cfg)) from None
        logging.getLogger(__name__).warning("%s; taking %s for its units being up",
                                            e.message, trusted)
        return
    if failed:
        fail_start(cfg, failed, since, stop)


def _lacking(cfg: SandboxConfig, failed: list[str], since: float) -> tuple[str, str]:
    """What the failed units need that the sandbox does not give (capneeds.py), if anything:
    the error's tail and the start of its hint. An address of the host's network shows only
    in the unit's log (this start's lines)."""
    from .. import capneeds, unitfile
    from ..limits import confined_caps

    units = _load_units(cfg, failed, unitfile.SYSTEM_UNIT_PATH)
    missing = capneeds.lacking(units, confined_caps(cfg))
    if missing:
        line, hint = capneeds.describe(missing)
        return f": {line}", f"{hint} (create it again with it); "
    devices = capneeds.lacking_devices(units, cfg.devices)
    if devices:
        line, hint = capneeds.describe_devices(devices)
        return f": {line}", f"{hint}; "
    missing = capneeds.missing_instance_paths(units, capneeds.instance_view(cfg))
    if missing:
        line, hint = capneeds.describe_missing_paths(missing)
        return f": {line}", f"{hint} (create it again with it); "
    unhonoured = _unhonoured(cfg, failed) if cfg.driver is Driver.LXC else []
    if unhonoured:
        line, hint = capneeds.describe_unhonoured(unhonoured, cfg.state_dir)
        return f": {line}", f"{hint}; "
    for name in failed if cfg.image_size is None else ():  # -i: the journal is in the image
        proc = run(["journalctl", "-D", journal_dir(cfg), "-u", name, f"--since=@{since:.6f}",
                    "-n", "30", "--no-pager", "-o", "cat"], check=False, timeout=10)
        log = proc.stdout.decode(errors="replace")
        found = (capneeds.host_network(name, log)
                 or capneeds.hidden_secret(name, log, capneeds.instance_locator(cfg),
                                           _hidden_paths(cfg)))
        if found:
            return f": {found[0]}", f"{found[1]}; "
    return "", ""


def _hidden_paths(cfg: SandboxConfig) -> list[str]:
    """What the sandbox's evidence hides from it (evidence.json's `hidden`): the host's
    secrets. Nothing where the record cannot be read (a failed start must still report)."""
    from ..layout import EVIDENCE_FILE

    try:
        record = json.loads((Path(cfg.state_dir) / EVIDENCE_FILE).read_text())
        return [str(e["path"]) for e in record.get("hidden", []) if isinstance(e, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _unhonoured(cfg: SandboxConfig, failed: list[str]) -> list[tuple[str, str]]:
    """capneeds.unhonoured of the failed units as the sandbox's systemd reads them: with the
    drop-ins of its own /etc (an admin's reset of such a setting, say) before the host's."""
    from .. import capneeds, unitfile

    own = Path(cfg.state_dir) / "etc" / "systemd" / "system"
    return capneeds.unhonoured(_load_units(cfg, failed, (own, *unitfile.SYSTEM_UNIT_PATH)))


def _load_units(cfg: SandboxConfig, names: list[str], search_path: Sequence[Path]
                ) -> list[UnitFile]:
    """The units that load from `search_path`; an unreadable one must not hide the failure."""
    from .. import unitfile

    units = []
    for name in names:
        try:
            units.append(unitfile.load_unit(name, search_path, hostname=cfg.name,
                                            machine_id=cfg.machine_id))
        except (SandboxError, OSError):
            continue
    return units


def copy_console(conn: libvirt.virConnect, dom: libvirt.virDomain, flags: int,
                 clean: Callable[[bytes], bytes],
                 attached: threading.Event | None = None) -> None:
    """Copy the sandbox's console to our stdout, `clean`ed, until the domain goes away;
    `attached` is set once the console is open (or could not be)."""
    try:
        stream = conn.newStream(0)
        lv.open_first_console(dom, stream, flags)
        if attached is not None:
            attached.set()
        while True:
            data = stream.recv(65536)
            if not isinstance(data, bytes) or not data:
                return
            sys.stdout.buffer.write(clean(data))
            sys.stdout.buffer.flush()
    except libvirt.libvirtError as e:
        logging.getLogger(__name__).debug("console of %s: %s", dom.name(), e)  # it went away
    finally:
        if attached is not None:
            attached.set()


def _print_unit_logs(journal: str, units: list[str], since: float) -> None:
    for unit in units:
        proc = run(["journalctl", "-D", journal, "-u", unit, f"--since=@{since:.6f}",
                    "-n", "30", "--no-pager", "-o", "short-monotonic"], check=False, timeout=10)
        sys.stderr.write(proc.stdout.decode(errors="replace"))
    sys.stderr.flush()


EXIT_FILE = "exit-status"  # a generic sandbox's command status, written by its init
# The run dir of a sandbox is its host channel: bound writable into the sandbox, so whatever
# is in it is the sandbox's to replace (a symlink to a host file, say). The host reads it only
# through read_channel, writes nothing there, and keeps its own marks outside it (the stop
# marker: poweroff.stop_marker).


def read_channel(path: Path, limit: int = 1 << 20) -> str | None:
    """A file the sandbox wrote in its host channel: only a regular file, never through a
    link, at most `limit` bytes; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit).decode(errors="replace")


def exit_status(cfg: SandboxConfig, paths: Paths) -> int:
    """What a foreground `start` returns once the domain has ended."""
    stopping = stop_marker(paths, cfg.name).exists()
    if cfg.kind is Kind.GENERIC:
        try:
            return int(read_channel(run_dir(paths, cfg.name) / EXIT_FILE) or "")
        except ValueError:
            return 0 if stopping else 1
    # The sandbox's systemd gives no exit status; an end nobody asked for is a failure, so
    # that Restart=on-failure brings the sandbox back.
    return 0 if stopping else 1


def print_display(dom: libvirt.virDomain) -> None:
    """Where a viewer connects to a sandbox with a display (run --graphics, a generic KVM
    sandbox created with it): the port is libvirt's choice, read from the live domain; on
    stderr, once the domain exists."""
    from ..graphics import display_uri

    where = display_uri(dom.XMLDesc(0))
    print(f"virt-sandbox-service: display: {where or 'none (libvirt gave it no port)'}",
          file=sys.stderr, flush=True)
