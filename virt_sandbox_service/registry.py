"""The registry: what the sandboxes on this host hold, and the lock that keeps it consistent.

A sandbox holds a name (its config file, state directory, unit and domain), an MCS label and,
with --userns, a range of host ids. They are allocated from every config there is, under one
lock (config_lock) that create, clone and delete hold while they reserve (write the config)
or release; upgrade and limit hold it too, and take the allocations from the config: they are
inputs of the plan, allocated once.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from . import host, labels
from .config import (
    IDMAP_COUNT,
    IDMAP_FIRST,
    Paths,
    SecurityMode,
    all_configs,
    driver_for_uri,
)
from .errors import HostError, UserError

# Where running domains may hold MCS labels: the LXC driver and qemu's system daemon.
LABEL_URIS = ("lxc:///", "qemu:///system")


@contextmanager
def config_lock(paths: Paths) -> Iterator[None]:
    """Serialises creates and deletes: name checks and label allocation see a stable set."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


DEFAULT_SECURITY: tuple[SecurityMode, str | None] = (SecurityMode.DYNAMIC, None)


def security_option(text: str | None) -> tuple[SecurityMode, str | None]:
    """-s as given, or its default (dynamic: a free MCS pair) where it is not."""
    return DEFAULT_SECURITY if text is None else parse_security(text)


def parse_security(text: str) -> tuple[SecurityMode, str | None]:
    """'-s dynamic', '-s static,label=u:r:t:s0:c1,c2' -> (mode, label)."""
    mode_text, _, rest = text.partition(",")
    mode = {"dynamic": SecurityMode.DYNAMIC, "static": SecurityMode.STATIC}.get(mode_text)
    if mode is None:
        raise UserError(f"'{mode_text}' is not a valid security mode (dynamic, static)",
                        "write -s dynamic or -s static,label=USER:ROLE:TYPE:LEVEL")
    label = None
    if rest:
        key, eq, value = rest.partition("=")
        if key != "label" or not eq:
            raise UserError(f"'{rest}' is not a security option", "the only one is label=LABEL")
        labels.parse_label(value)
        label = value
    if mode is SecurityMode.STATIC and label is None:
        raise UserError("-s static needs label=USER:ROLE:TYPE:LEVEL",
                        "e.g. -s static,label=system_u:system_r:svirt_lxc_net_t:s0:c10,c20")
    return mode, label


def choose_label(paths: Paths, uri: str,
                 security: tuple[SecurityMode, str | None]) -> str:
    """-s's label (parsed: parse_security), if it is free; else the next free MCS pair
    (caller holds the lock)."""
    _mode, label = security
    in_use = labels_in_use(paths)
    if label is not None:
        _, level = labels.parse_label(label)
        if level and label in in_use:
            raise UserError(f"label {label} is already used by another sandbox",
                            "choose another category pair, or -s dynamic")
        return label
    level = labels.allocate(in_use)
    return labels.process_label(driver_for_uri(uri), level)


def labels_in_use(paths: Paths) -> list[str]:
    """Every label a domain of this host holds or has reserved: each sandbox's config (running
    or not) and, under SELinux, each running domain's (a `run`'s transient pair, another VM's
    dynamic one). Two domains at one category pair may reach each other's files, so a new
    pair must avoid them all. Caller holds the config lock (a run holds it until its domain
    is up, so its pair is seen here)."""
    in_use = [c.security_label for c in all_configs(paths)]
    if host.selinux_enabled():
        in_use += running_labels(LABEL_URIS)
    return in_use


def running_labels(uris: tuple[str, ...]) -> list[str]:
    """The labels of the running domains at each of uris that libvirt answers for (a driver
    it lacks runs nothing)."""
    import libvirt

    from .apply import libvirt as lv

    found: list[str] = []
    for uri in uris:
        try:
            conn = lv.connect(uri, readonly=True)
        except HostError:
            continue
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    found.append(dom.securityLabel()[0])
                except libvirt.libvirtError:
                    continue  # gone since the listing
        finally:
            conn.close()
    return [label for label in found if label]


def choose_id_base(paths: Paths) -> int:
    """The first block of IDMAP_COUNT host ids no other sandbox maps (caller holds the lock)."""
    used = {c.id_base for c in all_configs(paths) if c.id_base is not None}
    base = IDMAP_FIRST
    while base in used:
        base += IDMAP_COUNT
    if base + IDMAP_COUNT > 2**32 - 2:
        raise UserError("no free user-namespace id range is left", "delete unused sandboxes")
    return base
