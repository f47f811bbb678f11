"""SELinux MCS labels: one unique category pair per sandbox, allocated under a lock.

Labels are allocated and recorded even on a host without SELinux, so a config moved to an
SELinux host keeps its isolation and `inspect` shows it; the domain carries a <seclabel> only
where the host's libvirt has the selinux security model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Driver
from .errors import UserError

CATEGORIES = 1024
LABEL_RE = re.compile(
    r"(?P<user>[a-z_][\w]*):(?P<role>[a-z_][\w]*):(?P<type>[a-z_][\w]*):"
    r"(?P<sens>s\d+)(?::c(?P<c1>\d+),c(?P<c2>\d+))?")
PROCESS_TYPE = {Driver.LXC: "svirt_lxc_net_t", Driver.KVM: "svirt_t"}
FILE_TYPE = {Driver.LXC: "svirt_sandbox_file_t", Driver.KVM: "svirt_image_t"}


@dataclass(frozen=True, order=True)
class Level:
    sensitivity: str
    c1: int
    c2: int

    def __str__(self) -> str:
        return f"{self.sensitivity}:c{self.c1},c{self.c2}"


def parse_label(text: str) -> tuple[str, Level | None]:
    """'user:role:type:s0:c1,c2' -> (text, Level). Errors name the label and the format."""
    m = LABEL_RE.fullmatch(text)
    hint = "write USER:ROLE:TYPE:LEVEL, e.g. system_u:system_r:svirt_lxc_net_t:s0:c12,c345"
    if not m:
        raise UserError(f"'{text}' is not an SELinux label", hint)
    if m.group("c1") is None:
        return text, None
    c1, c2 = int(m.group("c1")), int(m.group("c2"))
    if not (0 <= c1 < c2 < CATEGORIES):
        raise UserError(f"label '{text}' needs two categories c0..c{CATEGORIES - 1}, "
                        "the first smaller than the second", hint)
    return text, Level(m.group("sens"), c1, c2)


def process_label(driver: Driver, level: Level) -> str:
    return f"system_u:system_r:{PROCESS_TYPE[driver]}:{level}"


def file_label(driver: Driver, level: Level) -> str:
    return f"system_u:object_r:{FILE_TYPE[driver]}:{level}"


def allocate(in_use: Iterable[str], rng: random.Random | None = None) -> Level:
    """A category pair no live sandbox has. Caller holds the config lock."""
    used = set()
    for label in in_use:
        try:
            _, level = parse_label(label)
        except UserError:
            continue
        if level:
            used.add((level.c1, level.c2))
    rng = rng or random.SystemRandom()
    total = CATEGORIES * (CATEGORIES - 1) // 2
    if len(used) >= total:
        raise UserError("every MCS category pair is in use", "delete unused sandboxes")
    while True:
        c1, c2 = sorted(rng.sample(range(CATEGORIES), 2))
        if (c1, c2) not in used:
            return Level("s0", c1, c2)
