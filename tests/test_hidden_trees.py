"""The host's private trees (host.private_trees): hidden from every persistent sandbox by an
empty tmpfs (plan.hidden_trees), since a sandbox's root is the host's root where no LSM or
user namespace holds it back. What is shown again, and what is not hidden. Pure: a fake
root in tmp_path, and plans built from hand-made facts. The attack itself, and the same
attack working without the hiding, is tests/test_escapes.py's."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from virt_sandbox_service.host import PRIVATE_MAX, HostFacts, private_trees
from virt_sandbox_service.pathevidence import Access
from virt_sandbox_service.plan import HIDDEN_KIB, plan
from virt_sandbox_service.planner import Inputs, transient

from .test_golden import APACHE_EVIDENCE, FACTS, HIDDEN, config, ev


def test_the_homes_and_what_others_cannot_search_below_the_root(tmp_path: Path) -> None:
    for name, mode in (("home", 0o755), ("root", 0o700), ("lost+found", 0o700),
                       ("srv", 0o755), ("data", 0o750), ("opt", 0o711), ("etc", 0o700),
                       ("var", 0o700), ("tmp", 0o1777)):
        (tmp_path / name).mkdir()
        os.chmod(tmp_path / name, mode)
    (tmp_path / "secret-link").symlink_to(tmp_path / "root")
    (tmp_path / "file").write_text("")
    os.chmod(tmp_path / "file", 0o600)
    # /opt (0711) is searchable by others; /etc and /var are the sandbox's own trees.
    assert private_trees(str(tmp_path)) == ("/data", "/home", "/lost+found", "/root")
    assert private_trees(str(tmp_path / "nonexistent")) == ()
    # A home that is a link (/home -> /var/home) is judged where it points: not hidden.
    (tmp_path / "home").rmdir()
    (tmp_path / "home").symlink_to(tmp_path / "srv")
    assert private_trees(str(tmp_path)) == ("/data", "/lost+found", "/root")


def test_closed_directories_deeper_down_up_to_three_levels(tmp_path: Path) -> None:
    """/srv/site/keys (0700) is as private as /data; /usr's closed directories are its
    packages' (polkit's rules); nothing is looked for inside a hidden one, nor past three
    levels, nor through a link; the shallowest first, at most PRIVATE_MAX of them."""
    for path, mode in (("srv", 0o755), ("srv/site", 0o755), ("srv/site/keys", 0o700),
                       ("srv/site/keys/inner", 0o700), ("srv/a", 0o755), ("srv/a/b", 0o755),
                       ("srv/a/b/c", 0o755), ("srv/a/b/c/d", 0o700), ("opt", 0o755),
                       ("opt/app", 0o750), ("usr", 0o755), ("usr/share", 0o755),
                       ("usr/share/rules.d", 0o700), ("var", 0o755), ("var/x", 0o700)):
        (tmp_path / path).mkdir()
        os.chmod(tmp_path / path, mode)
    (tmp_path / "srv" / "link").symlink_to(tmp_path / "srv" / "site" / "keys")
    assert private_trees(str(tmp_path)) == ("/opt/app", "/srv/site/keys")
    (tmp_path / "srv" / "z").mkdir()
    for i in range(PRIVATE_MAX + 3):
        (tmp_path / "srv" / "z" / f"n{i:03}").mkdir(mode=0o700)
    trees = private_trees(str(tmp_path))
    assert len(trees) == PRIVATE_MAX and "/opt/app" in trees and "/srv/site/keys" in trees


def facts(*trees: str) -> HostFacts:
    return dataclasses.replace(FACTS, private_trees=trees)


def test_each_private_tree_is_an_empty_tmpfs_after_the_sandboxs_own() -> None:
    p = plan(config(), facts("/home", "/root"), APACHE_EVIDENCE, HIDDEN, "", "/r")
    targets = [m.target for m in p.mounts]
    hidden = [m for m in p.mounts if m.target in ("/home", "/root")]
    assert [(m.tmpfs_kib, m.source) for m in hidden] == [(HIDDEN_KIB, "")] * 2
    assert targets.index("/home") > targets.index("/dev/shm")
    assert "chmod 0755 /home /root || exit 125" in p.init[2]  # not libvirt's 1777


def test_what_the_evidence_or_the_admin_shares_is_shown_again() -> None:
    wd = ev("/root/app", Access.SHARED, reason="WorkingDirectory= in x.service "
            "(the host's, read-only)")
    admin = ev("/home/www", Access.SHARED, reason="--shared")
    p = plan(config(), facts("/home", "/root"), (*APACHE_EVIDENCE, wd, admin), HIDDEN, "",
             "/r")
    order = [(m.target, m.source, m.readonly, m.tmpfs_kib) for m in p.mounts]
    assert order.index(("/root", "", False, HIDDEN_KIB)) < order.index(
        ("/root/app", "/root/app", True, 0))
    assert order.index(("/home", "", False, HIDDEN_KIB)) < order.index(
        ("/home/www", "/home/www", True, 0))
    # Shared whole (or with what holds it): not hidden.
    whole = ev("/root", Access.SHARED, reason="--shared")
    p = plan(config(), facts("/home", "/root"), (*APACHE_EVIDENCE, whole), HIDDEN, "", "/r")
    assert [m.target for m in p.mounts if m.tmpfs_kib == HIDDEN_KIB] == ["/home"]


def test_what_the_sandbox_has_a_copy_of_is_its_own_not_hidden() -> None:
    """--private /data (a closed tree): the sandbox's copy is there, not the host's, so no
    tmpfs covers it. A private path below a hidden tree goes on top of the tmpfs."""
    data = ev("/data", Access.PRIVATE, reason="--private")
    key = ev("/srv/site/keys/app", Access.PRIVATE, reason="--private")
    p = plan(config(), facts("/data", "/root", "/srv/site/keys"),
             (*APACHE_EVIDENCE, data, key), HIDDEN, "", "/r")
    order = [(m.target, m.tmpfs_kib) for m in p.mounts]
    assert [t for t, kib in order if kib == HIDDEN_KIB] == ["/root", "/srv/site/keys"]
    assert ("/data", 0) in order
    assert order.index(("/srv/site/keys", HIDDEN_KIB)) < order.index(("/srv/site/keys/app", 0))


def test_a_home_of_the_instances_own_goes_on_top() -> None:
    cfg = config(kind=config().kind, uid=5000, gid=5000, username="alice",
                 homedir="/home/alice")
    p = plan(cfg, facts("/home"), APACHE_EVIDENCE, HIDDEN, "", "/r")
    targets = [m.target for m in p.mounts]
    assert targets.index("/home") < targets.index("/home/alice")


def test_a_one_shot_run_sees_the_host_root_as_it_is() -> None:
    """run is the host's root read-only, as `podman run --rootfs /` is (README: run)."""
    p = transient(config(), facts("/home", "/root"),
                  Inputs(run_dir="/r", init=("/bin/true",), init_env=()))
    assert not [m for m in p.mounts if m.target in ("/home", "/root")]
