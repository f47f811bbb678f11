"""The unit of evidence: one claim about one path, and the vocabulary the gatherers share
(evidence.py merges the claims; servicedata.py and the unit and package gatherers make them).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from .errors import UserError
from .pathevidence import Access, _norm, under
from .unitfile import UnitFile


@dataclass(frozen=True)
class _Claim:
    """One piece of evidence about one path; gather() merges the claims per path."""

    path: str
    access: Access
    is_dir: bool | None  # None: ask the host
    reason: str
    weight: int  # the strongest claim decides the access


# Evidence ranks below the administrator's word; among evidence, persistent beats volatile.
_WEIGHT = {Access.SHARED: 0, Access.TMPFS: 1, Access.PRIVATE: 2}
_PRIVATE_OVERRIDE = 3
_SHARED_OVERRIDE = 4

_TMPFS_ROOTS = ("/run", "/tmp")
# Package manager state and the host's programs are never a service's data.
_NOT_SERVICE_DATA = ("/var/lib/dpkg", "/var/lib/rpm", "/var/lib/apt", "/var/cache/apt")
NOT_SERVICE_DATA = _NOT_SERVICE_DATA  # learn leaves it out of what it observed too


def _evidence(path: str, access: Access, is_dir: bool | None, reason: str) -> _Claim:
    path = _norm(path)
    if any(under(path, top) for top in _TMPFS_ROOTS):
        access = Access.TMPFS
    return _Claim(path, access, is_dir, reason, _WEIGHT[access])


# The section holding the exec directives, per unit type.
_EXEC_SECTION = {"service": "Service", "socket": "Socket", "mount": "Mount", "swap": "Swap"}


def _words(unit: UnitFile, section: str, key: str) -> list[str]:
    words: list[str] = []
    for value in unit.values(section, key):
        try:
            words += shlex.split(value)
        except ValueError:
            raise UserError(f"{key}= in {unit.name} has unbalanced quotes: {value}",
                            "fix the unit file or add a drop-in that resets it") from None
    return words


def _is_service_data(path: str) -> bool:
    if path in ("/var", "/etc", "/run"):
        return False  # the trees themselves are private by construction
    if not any(under(path, top) for top in ("/var", "/etc", "/run")):
        return False  # the host root is shared read-only anyway
    return not any(under(path, top) for top in _NOT_SERVICE_DATA)


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("1", "yes", "true", "on")
