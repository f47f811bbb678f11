"""SELinux MCS labels: one unique category pair per sandbox, allocated under a lock.

Labels are allocated and recorded even on a host without SELinux, so a config moved to an
SELinux host keeps its isolation and `inspect` shows it; the domain carries a <seclabel> only
where the host's libvirt has the selinux security model.

The types are those policy/virt_sandbox_service.te declares (Debian's own policy has no LXC guest
domain); `file_contexts` gives the labels of a sandbox's private paths, the types of
policy/virt_sandbox_service.fc plus the sandbox's category pair.
"""

from __future__ import annotations

import posixpath
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Driver, SandboxConfig
from .errors import UserError
from .layout import ETC_WORK

CATEGORIES = 1024
LABEL_RE = re.compile(
    r"(?P<user>[a-z_][\w]*):(?P<role>[a-z_][\w]*):(?P<type>[a-z_][\w]*):"
    r"(?P<sens>s\d+)(?::c(?P<c1>\d+),c(?P<c2>\d+))?")
PROCESS_TYPE = {Driver.LXC: "svirt_lxc_net_t", Driver.KVM: "svirt_t"}
FILE_TYPE = {Driver.LXC: "svirt_sandbox_file_t", Driver.KVM: "svirt_image_t"}
# The state directory and the tool's records in it (evidence, marker): host-only, no categories.
STATE_TYPE = "virt_sandbox_service_var_lib_t"
# Under a sandbox's state directory, what is bound into it (plan.py: its /etc, its /var, other
# private paths, the empty directories of -m host-bind:DST=).
PRIVATE_TREES = ("etc", "var", "paths", "mounts")
# What create and clone label with the sandbox's file context where SELinux is enabled: the
# private trees, the home of -U (bound on the user's home), and the overlay /etc's work
# directory (the sandbox's init mounts the overlay, so it must be able to use it).
LABELLED_TREES = (*PRIVATE_TREES, "home", ETC_WORK)


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


def file_contexts(state_dir: str, level: Level,
                  run_dir: str | None = None) -> list[tuple[str, str]]:
    """(path, context) for an LXC sandbox's state directory, private trees and host channel.

    Each context applies to its path and everything below it; apply the list in order, a later
    entry being more specific. The types are those policy/virt_sandbox_service.fc gives the same
    paths under /var/lib/virt-sandbox-service and /run/virt-sandbox-service, so a restorecon
    (which, without -F, changes only the type) keeps what this labels. The private trees and the
    run dir also carry the sandbox's category pair, which no .fc pattern can know: only this
    sandbox (and the host) may use them. The state directory itself stays at the bare
    sensitivity: it holds the tool's records and is never mounted into a sandbox.
    """
    out = [(state_dir, f"system_u:object_r:{STATE_TYPE}:{level.sensitivity}")]
    private = file_label(Driver.LXC, level)
    out += [(posixpath.join(state_dir, tree), private) for tree in PRIVATE_TREES]
    if run_dir is not None:
        out.append((run_dir, private))
    return out


def context_entry(text: str, key: str) -> str | None:
    """One entry of a contexts file such as contexts/lxc_contexts, whose lines read
    `file = "system_u:object_r:container_file_t:s0"`; None where it has none."""
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.strip() == key:
            return value.strip().strip('"') or None
    return None


def first_context(text: str) -> str | None:
    """The context of a one-line contexts file (contexts/virtual_image_context)."""
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    return lines[0] if lines else None


def context_type(context: str | None) -> str | None:
    """The type field of `user:role:type:level`."""
    parts = (context or "").split(":")
    return parts[2] if len(parts) >= 4 and parts[2] else None


def sandbox_file_type(driver: Driver, contexts_text: str) -> str:
    """The type of a sandbox's files: the platform's (for LXC the `file` entry of
    lxc_contexts, the type libvirt also gives the sandbox's tmpfs; for KVM the
    virtual_image_context), else this tool's policy module's (FILE_TYPE)."""
    found = context_type(context_entry(contexts_text, "file") if driver is Driver.LXC
                         else first_context(contexts_text))
    return found or FILE_TYPE[driver]


def file_context(security_label: str, file_type: str) -> str | None:
    """The file context matching a sandbox's process label: same level (the MCS pair)."""
    if LABEL_RE.fullmatch(security_label) is None:
        return None
    level = security_label.split(":", 3)[3]
    return f"system_u:object_r:{file_type}:{level}"


def tree_contexts(config: SandboxConfig, contexts_text: str) -> list[tuple[str, str]]:
    """(tree, context) for each tree of the sandbox's state directory that is bound into
    it; each context applies to the tree and everything below it. Empty for a label that
    carries no level."""
    context = file_context(config.security_label,
                           sandbox_file_type(config.driver, contexts_text))
    if context is None:
        return []
    return [(posixpath.join(config.state_dir, tree), context) for tree in LABELLED_TREES]
