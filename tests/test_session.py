"""run -c qemu:///session, the pure parts: where a user's run keeps its files, and what is
refused before anything is tried (runtime/session.py). The real runs: test_run_session.py."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from virt_sandbox_service.config import Driver, Paths
from virt_sandbox_service.errors import HostError, UserError
from virt_sandbox_service.limits import LimitArgs
from virt_sandbox_service.network import parse_network
from virt_sandbox_service.runtime import session
from virt_sandbox_service.runtime.oneshot import check_privilege


def test_dirs_follow_xdg_as_libvirt_does() -> None:
    d = session.user_dirs({"XDG_RUNTIME_DIR": "/run/user/1000"}, "/home/alice")
    assert d.config == Path("/home/alice/.config")
    assert d.cache == Path("/home/alice/.cache")
    assert d.boot_dir == Path("/home/alice/.cache/virt-sandbox-service/kvm")
    assert d.run_dir == Path("/run/user/1000/virt-sandbox-service")
    assert d.state_parent == Path("/home/alice/.cache/virt-sandbox-service/state")


def test_without_a_runtime_dir_the_channels_go_to_the_cache() -> None:
    d = session.user_dirs({"XDG_CACHE_HOME": "/srv/c", "XDG_RUNTIME_DIR": "relative"},
                          "/home/alice")
    assert d.runtime is None
    assert d.run_dir == Path("/srv/c/virt-sandbox-service/run")
    assert d.boot_dir == Path("/srv/c/virt-sandbox-service/kvm")
    assert [v for v, _ in d.bases()] == ["XDG_CONFIG_HOME", "XDG_CACHE_HOME"]


def test_vss_cache_dir_overrides_the_boot_cache_only() -> None:
    d = session.user_dirs({"VSS_CACHE_DIR": "/var/tmp/boot"}, "/home/alice")
    assert d.boot_dir == Path("/var/tmp/boot/kvm")
    assert d.run_dir == Path("/home/alice/.cache/virt-sandbox-service/run")


def test_a_missing_home_is_named_with_the_fix(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "nohome"
    monkeypatch.setattr(os, "access", lambda p, m: False)  # as /home is to a normal user
    with pytest.raises(UserError) as e:
        session.check_writable("XDG_CACHE_HOME", home / ".cache", str(home), "alice")
    assert e.value.message == ("run -c qemu:///session needs your home directory: "
                               f"{home} does not exist")
    assert "mkhomedir_helper alice" in (e.value.hint or "")


def test_a_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(UserError, match=rf"cannot write {afile} \(XDG_RUNTIME_DIR\)"):
        session.check_writable("XDG_RUNTIME_DIR", afile / "x", str(tmp_path))
    session.check_writable("XDG_CACHE_HOME", tmp_path / "a" / "b", str(tmp_path))  # makeable


@pytest.mark.parametrize(("limits", "option"), [
    (LimitArgs(cpu_weight="100"), "--cpu-weight"),
    (LimitArgs(memory="256M", cpuset="0"), "--cpuset"),
    (LimitArgs(device_read_bps=("/dev/vda:1M",)), "--device-read-bps"),
])
def test_cgroup_limits_are_refused(limits: LimitArgs, option: str) -> None:
    with pytest.raises(UserError, match=f"cannot apply {option}: the session daemon manages "
                                        "no cgroups"):
        session.check_options((), limits)


def test_memory_is_the_vms_ram_and_stays() -> None:
    session.check_options((), LimitArgs(memory="256M"))


def test_a_network_is_refused() -> None:
    with pytest.raises(UserError, match="has no network: -N needs a libvirt network"):
        session.check_options((parse_network("source=default"),), LimitArgs())


def test_prepare_puts_the_runs_files_in_the_users_dirs(tmp_path: Path) -> None:
    uid = os.geteuid()
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "rt")}
    s = session.prepare(Paths(), uid, env)
    assert s.paths.run_dir == tmp_path / "rt" / "virt-sandbox-service"
    assert s.paths.state_parent == tmp_path / ".cache" / "virt-sandbox-service" / "state"
    assert s.paths.config_dir == Paths().config_dir
    entry = pwd.getpwuid(uid)
    if uid == 0:
        assert s.run_as is None  # root's command runs as root
    else:
        assert s.run_as is not None
        assert (s.run_as.uid, s.run_as.gid, s.run_as.name) == (uid, entry.pw_gid,
                                                               entry.pw_name)
    assert not (tmp_path / "rt").exists()  # nothing is made before the run starts


def test_an_unreadable_kernel_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from virt_sandbox_service import initrd

    image = tmp_path / "vmlinuz-9.9"
    image.write_bytes(b"")
    kernel = initrd.GuestKernel("9.9", image, tmp_path)
    monkeypatch.setattr(initrd, "detect_kernel", lambda: kernel)
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != image)
    with pytest.raises(HostError, match=f"the host's kernel {image} is not readable by you"):
        session.check_boot_readable()


def test_every_user_may_ask_for_the_session_but_not_for_the_rest() -> None:
    check_privilege("qemu:///session", Driver.KVM, 1000)
    check_privilege("qemu:///session", Driver.KVM, 0)
    with pytest.raises(UserError, match="needs root"):
        check_privilege("qemu:///system", Driver.KVM, 1000)
    with pytest.raises(UserError, match="needs root"):
        check_privilege("lxc:///", Driver.LXC, 1000)
