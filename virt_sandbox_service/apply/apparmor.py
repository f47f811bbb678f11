"""Loading and removing a sandbox's AppArmor profile (the text is apparmor.py's).

The profile is compiled from its text on standard input (`apparmor_parser` is the only way to
turn a profile into what the kernel loads; there is no binding), so nothing is written on disk:
a reboot forgets it, and every start loads it again. Where AppArmor is not active, or the
domain carries no label of ours, this does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator

from .. import apparmor, host
from ..errors import HostError
from ..util import run

log = logging.getLogger(__name__)

PARSER = ("/sbin/apparmor_parser", "/usr/sbin/apparmor_parser")


def _parser() -> str:
    for p in PARSER:
        if shutil.which(p):
            return p
    raise HostError("AppArmor is active and libvirt applies it, but apparmor_parser is missing",
                    "install it: apt-get install apparmor")


def load_for(domain_xml: str) -> tuple[str, ...]:
    """Load (or replace) the profiles the domain needs; their names (none without AppArmor)."""
    if not host.apparmor_enabled():  # first: reading the XML loads lxml (start's time)
        return ()
    names = apparmor.profiles_of(domain_xml)
    if not names:
        return ()
    for name in names:
        log.debug("loading the AppArmor profile %s", name)
        r = run([_parser(), "--replace", "--quiet"], check=False,
                input=apparmor.profile_text(name).encode())
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip().splitlines()
            raise HostError(f"cannot load the sandbox's AppArmor profile {name}"
                            + (f": {err[-1]}" if err else ""),
                            "'virt-sandbox-service doctor' checks the host")
    return names


def unload(names: tuple[str, ...]) -> None:
    """Remove loaded profiles; nothing for those not loaded (or where AppArmor is off)."""
    if not names or not host.apparmor_enabled():
        return
    for name in names:
        if is_loaded(name):
            run([_parser(), "--remove", "--quiet"], check=False,
                input=apparmor.profile_text(name).encode())


def unload_machine(machine_id: str) -> None:
    if machine_id:
        unload((apparmor.profile_name(machine_id),))


def is_loaded(name: str) -> bool:
    try:
        with open("/sys/kernel/security/apparmor/profiles") as f:
            return any(line.split(" (")[0] == name for line in f)
    except OSError:
        return False


@contextlib.contextmanager
def loaded(domain_xml: str) -> Iterator[tuple[str, ...]]:
    """For a transient domain: its profile loaded while it runs, and afterwards removed unless
    it was loaded before (a sandbox's own)."""
    before = {n for n in apparmor.profiles_of(domain_xml) if is_loaded(n)}
    names = load_for(domain_xml)
    try:
        yield names
    finally:
        unload(tuple(n for n in names if n not in before))
