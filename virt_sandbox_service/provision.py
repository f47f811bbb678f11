"""What a create and a clone both do to the host: check that the new sandbox's name is free,
reserve it (its config), make its state and register it (domain, units). Kept apart from
create.py so that a clone loads none of what only a create needs (evidence gathering, the
packages' set-up, the host checks): that was ~20 ms of every clone (issue 16)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import libvirt

from .apply import files
from .apply import labels as file_labels
from .apply import libvirt as lv
from .apply import systemd as sd
from .apply.txn import Transaction
from .config import Paths
from .errors import UserError
from .network import OUR_FILTER, NetSpec, filter_xml
from .plantypes import Plan
from .units import unit_name


def check_free(name: str, networks: Sequence[NetSpec], paths: Paths, state_dir: Path,
               conn: libvirt.virConnect | None) -> None:
    """Nothing of a new sandbox's is there yet: config, state, unit, domain; and the networks
    it joins exist."""
    if paths.config_file(name).exists():
        raise UserError(f"a sandbox named '{name}' already exists",
                        "choose another name, or delete it first")
    if os.path.lexists(state_dir):
        raise UserError(f"state directory {state_dir} already exists",
                        "choose another name or -p PATH")
    if os.path.lexists(paths.unit_dir / unit_name(name)):
        raise UserError(f"unit {unit_name(name)} already exists in {paths.unit_dir}",
                        "remove it or choose another name")
    if conn is not None:
        lv.check_name_free(conn, name)
        check_networks(conn, networks)


def check_networks(conn: libvirt.virConnect, networks: Sequence[NetSpec]) -> None:
    """Each -N's libvirt network exists, and its filter unless it is ours (made on use)."""
    for net in networks:
        lv.check_network(conn, net.source)
        if net.filter and net.filter != OUR_FILTER:
            lv.check_nwfilter(conn, net.filter)


def ensure_our_filter(conn: libvirt.virConnect, networks: Sequence[NetSpec]) -> None:
    if any(n.filter == OUR_FILTER for n in networks):
        lv.ensure_nwfilter(conn, OUR_FILTER, filter_xml())


def tool_path() -> str:
    """The absolute path generated units run: this tool's own command (as it was called, so a
    link such as set-up's /usr/local/bin one stays a link), never another installation's. Run
    as `python -m virt_sandbox_service.cli` (the tests), the command set-up linked."""
    own = os.path.abspath(sys.argv[0])
    if os.path.basename(own) == "virt-sandbox-service":
        return own
    linked = "/usr/local/bin/virt-sandbox-service"
    if os.path.exists(linked):
        return linked
    return shutil.which("virt-sandbox-service") or own


def reserve(p: Plan, txn: Transaction) -> None:
    """Write the config: it reserves the name and the label (caller holds the lock), and it is
    what `delete` needs to clean up after a create that was killed with no chance to roll back."""
    cfg_path = Path(p.config_path)
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    files.write_file(cfg_path, p.config.to_json(), 0o644)
    txn.did(f"wrote {cfg_path}", cfg_path.unlink)


def apply_plan(p: Plan, conn: libvirt.virConnect, txn: Transaction) -> None:
    """Everything after the reservation; runs without the lock, so creates overlap."""
    apply_state(p, conn, txn)
    register(p, conn, txn)


def apply_state(p: Plan, conn: libvirt.virConnect, txn: Transaction) -> None:
    """The sandbox's private trees (and the network filter it uses): what a fresh instance's
    set-up (fresh_instance) needs before it runs."""
    ensure_our_filter(conn, p.config.networks)
    files.create_state_dir(p, txn)
    file_labels.label_private_trees(p.config)  # where SELinux is enabled


def register(p: Plan, conn: libvirt.virConnect, txn: Transaction) -> None:
    """The domain, the host's units and systemd's reload of them: nothing a fresh instance's
    set-up reads, so a create does this while that set-up runs."""
    lv.define(conn, p.domain_xml, txn)
    for path, text in p.unit_files:
        sd.install_unit(Path(path), text, txn)
    sd.daemon_reload()
