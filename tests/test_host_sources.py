"""The host paths sandboxes are given (hostsources.py): a sandbox's root must not be able to
redirect a mount source to another path of the host, and the host's own trees are not given.

The attack: a sandbox given /D read-write replaces /D/sub with `sub -> /`; a sandbox given
/D/sub (itself, or another) then has the host's root bound read-write at its next start,
because libvirt follows the path. Shown working against libvirt alone, then refused."""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

from virt_sandbox_service import hostsources
from virt_sandbox_service.config import Kind, Paths, SandboxConfig
from virt_sandbox_service.errors import HostError, UserError
from virt_sandbox_service.mounts import parse_mount, parse_mount_syntax
from virt_sandbox_service.runtime.enter import init_pid

from .conftest import Env, unique_name

PATHS = Paths(config_dir=Path("/c/cfg"), state_parent=Path("/c/state"),
              unit_dir=Path("/c/units"), run_dir=Path("/c/run"))


def box(name: str, *mounts: str, state: str | None = None) -> SandboxConfig:
    return SandboxConfig(name=name, kind=Kind.GENERIC, uri="lxc:///",
                         state_dir=f"/c/state/{name}" if state is None else state,
                         command=("/bin/true",),
                         mounts=tuple(parse_mount_syntax(m) for m in mounts))


@pytest.mark.parametrize("source", ["/", "/etc", "/var", "/var/lib", "/run", "/root", "/usr",
                                    "/usr/share/doc", "/proc/sys", "/sys/kernel", "/dev/shm",
                                    "/boot", "/etc/libvirt", "/var/lib/libvirt",
                                    "/etc/systemd"])
def test_the_hosts_own_trees_are_not_given(source: str) -> None:
    if not os.path.exists(source):
        pytest.skip(f"{source} is not on this host")
    with pytest.raises(UserError, match="mount source"):
        parse_mount(f"host-bind:/mnt={source}")


def test_a_directory_of_its_own_is_given_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    spec = parse_mount(f"host-bind:/srv={tmp_path}/link")
    assert spec.source == str(tmp_path / "real")  # what each start checks it still is
    # A link that leads into the host's trees is refused for where it leads.
    (tmp_path / "etc").symlink_to("/etc")
    with pytest.raises(UserError, match=r"\(that is /etc\)"):
        parse_mount(f"host-bind:/srv={tmp_path}/etc")


@pytest.mark.parametrize(("new", "others", "needle"), [
    # within one sandbox, in either order
    (box("a", "host-bind:/m1=/d", "host-bind:/m2=/d/sub"), [], "lies below /d"),
    (box("a", "host-bind:/m2=/d/sub", "host-bind:/m1=/d"), [], "lies below /d"),
    # an image below a writable directory: it could become a link to the host's disk
    (box("a", "host-bind:/m1=/d", "host-image:/m2=/d/x.img"), [], "lies below /d"),
    # across sandboxes, the new one given what another writes above, or below
    (box("a", "host-bind:/m=/d/sub"), [box("b", "host-bind:/m=/d")], "sandbox 'b' writes"),
    (box("a", "host-bind:/m=/d"), [box("b", "host-image:/m=/d/sub/x.img")],
     "holds /d/sub/x.img, which sandbox 'b' is given"),
    # a sandbox's state (its private /etc and /var are its own to write) and the tool's trees
    (box("a", "host-bind:/m=/c/state/b/var/www"), [box("b")], "the state of sandbox 'b'"),
    (box("a", "host-bind:/m=/srv"), [box("b", state="/srv/b")], "the state of sandbox 'b'"),
    (box("a", state="/srv/a"), [box("b", "host-bind:/m=/srv")], "the state of sandbox 'a'"),
    (box("a", "host-bind:/m=/c", state="/x/a"), [], "where this tool keeps its own files"),
    (box("a", "host-bind:/m=/c/cfg/sandboxes"), [], "where this tool keeps its own files"),
])
def test_nothing_a_sandbox_writes_leads_to_what_one_is_given(
        new: SandboxConfig, others: list[SandboxConfig], needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        hostsources.check_among(new, others, PATHS)


def test_shared_and_side_by_side_sources_are_fine() -> None:
    # The same directory to two sandboxes: a mount's root cannot be swapped from inside it.
    hostsources.check_among(box("a", "host-bind:/m=/d", "host-bind:/n=/e"),
                            [box("b", "host-bind:/m=/d"), box("c", "host-bind:/m=/dd")], PATHS)
    # A run has no state directory of its own.
    hostsources.check_among(box("r", "host-bind:/m=/d", state=""), [box("b")], PATHS)
    # Its own saved config is not another sandbox (an apply of the same sandbox again).
    hostsources.check_among(box("a", "host-bind:/m=/d"), [box("a", "host-bind:/m=/d")], PATHS)


def test_a_start_refuses_a_source_that_now_leads_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "disk.img").write_bytes(b"\0" * 1024)
    cfg = box("v", f"host-bind:/m={tmp_path}/sub", f"host-image:/i={tmp_path}/disk.img")
    hostsources.check_at_start(cfg)
    (tmp_path / "sub").rmdir()
    (tmp_path / "sub").symlink_to("/")
    with pytest.raises(HostError, match=f"{tmp_path}/sub now leads to /"):
        hostsources.check_at_start(cfg)
    (tmp_path / "sub").unlink()
    with pytest.raises(HostError, match="No such file"):
        hostsources.check_at_start(cfg)
    (tmp_path / "sub").mkdir()
    (tmp_path / "disk.img").unlink()
    (tmp_path / "disk.img").mkdir()
    with pytest.raises(HostError, match="no longer a regular file"):
        hostsources.check_at_start(cfg)


# --- a real sandbox ------------------------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """D/sub, given to a sandbox; and a host directory with a marker the sandbox must not
    reach."""
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    secret = tmp_path / "host-only"
    secret.mkdir()
    (secret / "marker").write_text("host\n")
    return d, secret


@pytest.mark.root
@pytest.mark.libvirt
def test_a_link_planted_above_a_source(env: Env, planted: tuple[Path, Path]) -> None:
    d, secret = planted
    name = unique_name("plant")
    env.run("create", "-m", f"host-bind:/mnt={d}/sub", name, "--", "/bin/sleep", "600",
            check=True)
    # No sandbox may be given what lies above it, nor a run.
    writer = env.run("create", "-m", f"host-bind:/mnt={d}", unique_name("writer"), "--",
                     "/bin/true")
    assert writer.returncode == 2 and f"holds {d}/sub" in writer.stderr, writer.stderr
    assert "Traceback" not in writer.stderr
    ran = env.run("run", "-m", f"host-bind:/mnt={d}", "--", "/bin/true")
    assert ran.returncode != 0 and f"holds {d}/sub" in ran.stderr, ran.stderr
    # Whatever could write D (here, the host) swaps sub for a link.
    (d / "sub").rmdir()
    (d / "sub").symlink_to(secret)
    # Without the check: libvirt starts the same domain and follows the link (start makes
    # the domain's run directory first).
    (env.base / "run" / name).mkdir(parents=True, exist_ok=True)
    conn = libvirt.open("lxc:///")
    dom = conn.lookupByName(name)
    dom.create()
    try:
        seen = Path(f"/proc/{init_pid(dom)}/root/mnt/marker")
        assert seen.read_text() == "host\n"
    finally:
        dom.destroy()
    # With it: start refuses, and nothing runs.
    proc = env.run("start", "--detach", name)
    assert proc.returncode != 0, proc.stdout
    assert f"{d}/sub now leads to {secret}" in proc.stderr, proc.stderr
    assert not dom.isActive()

