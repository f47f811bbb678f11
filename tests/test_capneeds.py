"""What a confined unit needs beyond the sandbox's capabilities (capneeds.py), and how its
drop-in makes it fail at start naming them. Pure, except the file-capability read (root)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from virt_sandbox_service import capneeds
from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.limits import confined_caps
from virt_sandbox_service.plan import confinement_dropin
from virt_sandbox_service.unitfile import UnitFile, load_unit

from .conftest import Env, unique_name

CHRONY_LIKE = """\
[Unit]
Description=a time daemon
ConditionCapability=CAP_SYS_TIME
ConditionCapability=!CAP_MKNOD

[Service]
User=_t
ExecStart=!{program} -d
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_IPC_LOCK
CapabilityBoundingSet=~CAP_SYS_ADMIN
"""


def unit(tmp_path: Path, program: str = "/usr/sbin/timed") -> UnitFile:
    (tmp_path / "timed.service").write_text(CHRONY_LIKE.format(program=program))
    return load_unit("timed.service", [tmp_path])


def cfg(**kw: object) -> SandboxConfig:
    return SandboxConfig(name="t", kind=Kind.SERVICE, uri="lxc:///", state_dir="/s",
                         units=("timed.service",), **kw)


def test_needs_come_from_the_units_own_settings(tmp_path: Path) -> None:
    u = unit(tmp_path)
    assert capneeds.declared(u) == [
        ("sys_time", "ConditionCapability="), ("net_bind_service", "AmbientCapabilities="),
        ("ipc_lock", "AmbientCapabilities=")]
    # net_bind_service is in the confined set; the others are not, until given back.
    assert capneeds.lacking([u], confined_caps(cfg())) == [
        ("timed.service", "sys_time", "ConditionCapability="),
        ("timed.service", "ipc_lock", "AmbientCapabilities=")]
    given = cfg(caps_add=("sys_time", "ipc_lock"))
    assert capneeds.lacking([u], confined_caps(given)) == []
    line, hint = capneeds.describe(capneeds.lacking([u], confined_caps(cfg())))
    assert line.startswith("timed.service needs CAP_SYS_TIME (ConditionCapability=)")
    assert hint == "give it with --cap-add ipc_lock --cap-add sys_time"


def test_file_capabilities_decode() -> None:
    # vfs_cap_data revision 2: magic, permitted lo, inheritable lo, permitted hi, inh. hi
    blob = struct.pack("<IIIII", 0x02000001, 1 << 13 | 1 << 10, 0, 0, 0)
    assert capneeds.file_caps(blob) == ["net_bind_service", "net_raw"]
    assert capneeds.file_caps(b"") == []


@pytest.mark.root
def test_a_programs_file_capabilities_are_a_need(tmp_path: Path) -> None:
    program = tmp_path / "pinger"
    shutil.copy("/bin/true", program)
    os.setxattr(program, capneeds.VFS_CAP_XATTR,
                struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
    u = unit(tmp_path, str(program))
    assert ("net_raw", f"file capabilities of {program}") in capneeds.needed(u)


def test_a_lacking_unit_fails_at_start_with_a_line_naming_it() -> None:
    text = confinement_dropin(cfg(), ("sys_time",))
    # Its own ConditionCapability= would skip it silently: reset, and fail with our line.
    assert "[Unit]\nConditionCapability=\n" in text
    assert "does not give CAP_SYS_TIME" in text and "--cap-add sys_time" in text
    assert "ExecStartPre=/bin/sh -c" in text
    assert "ExecStartPre" not in confinement_dropin(cfg())


def test_private_users_is_off_where_the_sandboxs_systemd_cannot_make_a_user_namespace() -> None:
    """LXC: the sandbox's systemd is under the filter that refuses user namespaces, and fails
    a unit with PrivateUsers= (217/USER, redis-server.service) where it skips the other
    namespace settings. Given @namespaces back, or in a VM (its systemd has its own
    kernel's capabilities), the unit's own setting stands."""
    assert "\nPrivateUsers=no\n" in confinement_dropin(cfg())
    assert "PrivateUsers" not in confinement_dropin(cfg(syscalls_allow=("@namespaces",)))
    kvm = dataclasses.replace(cfg(), uri="qemu:///system")
    assert "PrivateUsers" not in confinement_dropin(kvm)


DEVICE_UNIT = """\
[Unit]
BindsTo=dev-ttyS9.device sys-subsystem-net-devices-%i.device
After=dev-ttyS9.device
Requires=network.target

[Service]
ExecStart=/usr/sbin/devd
DeviceAllow=/dev/net/tun rwm
DeviceAllow=/dev/null rw
DeviceAllow=char-* rw
"""


def test_devices_and_host_interfaces_a_unit_cannot_run_without(tmp_path: Path) -> None:
    (tmp_path / "devd@.service").write_text(DEVICE_UNIT)
    u = load_unit("devd@eth9.service", [tmp_path])
    assert capneeds.needed_devices(u) == [
        ("/dev/ttyS9", "BindsTo=dev-ttyS9.device"),
        ("/sys/subsystem/net/devices/eth9", "BindsTo=sys-subsystem-net-devices-eth9.device"),
        ("/dev/net/tun", "DeviceAllow=")]
    line, hint = capneeds.describe_devices(capneeds.lacking_devices([u]))
    assert line == ("devd@eth9.service needs the device /dev/ttyS9 (BindsTo=dev-ttyS9.device); "
                    "devd@eth9.service needs the host's network interface eth9 "
                    "(BindsTo=sys-subsystem-net-devices-eth9.device); devd@eth9.service needs "
                    "the device /dev/net/tun (DeviceAllow=), which the sandbox does not have")
    assert hint.startswith("-N source=NET gives the sandbox an interface of its own")
    assert "--device /dev/net/tun gives the sandbox the device node" in hint
    assert "bound to a .device unit cannot start in a sandbox" in hint  # /dev/ttyS9
    # Given with --device, a DeviceAllow= node is no longer lacking; a .device unit still is.
    left = capneeds.lacking_devices([u], ("char:/dev/net/tun", "char:/dev/ttyS9"))
    assert [dev for _u, dev, _why in left] == ["/dev/ttyS9", "/sys/subsystem/net/devices/eth9"]


def test_a_unit_without_device_needs_has_none(tmp_path: Path) -> None:
    assert capneeds.needed_devices(unit(tmp_path)) == []


def test_an_address_the_sandbox_lacks_is_read_from_the_units_log() -> None:
    log = ("error: Bind to port 22 on 192.0.2.77 failed: Cannot assign requested address.\n"
           "fatal: Cannot bind any address.\n")
    line, hint = capneeds.host_network("ssh.service", log) or ("", "")
    assert line == ("ssh.service binds the address 192.0.2.77, which the sandbox's network "
                    "does not have (Cannot assign requested address)")
    assert hint.startswith("-N source=NET,address=192.0.2.77/PREFIX")
    six = capneeds.host_network("w.service", "bind([2001:db8::5]:80): EADDRNOTAVAIL")
    assert six is not None and "the address 2001:db8::5," in six[0]
    assert capneeds.host_network("w.service", "listening on 127.0.0.1:80\nready") is None


NAMESPACED = """\
[Service]
ExecStart=/bin/sleep infinity
BindPaths=/srv/a /srv/b:/srv/b/ -/srv/c:/srv/c:rbind
BindReadOnlyPaths=/dev/log:/var/lib/d/dev/log
BindReadOnlyPaths=-/etc/e:/var/lib/e:norbind
TemporaryFileSystem=/var:ro
DynamicUser=yes
RootDirectory=
LogNamespace=n1
"""


def test_settings_systemd_runs_only_in_a_mount_namespace(tmp_path: Path) -> None:
    """systemd's own list (insist_on_sandboxing): a bind onto itself is skipped in a
    container, a bind elsewhere is not; an empty setting (a reset) is nothing."""
    (tmp_path / "ns.service").write_text(NAMESPACED)
    u = load_unit("ns.service", [tmp_path])
    assert capneeds.namespace_settings(u) == [
        "BindReadOnlyPaths=/dev/log:/var/lib/d/dev/log",
        "BindReadOnlyPaths=-/etc/e:/var/lib/e:norbind",
        "DynamicUser=yes", "TemporaryFileSystem=/var:ro", "LogNamespace=n1"]
    line, hint = capneeds.describe_unhonoured(capneeds.unhonoured([u]), "/s/ns1")
    assert line.startswith("ns.service has BindReadOnlyPaths=/dev/log:/var/lib/d/dev/log, ")
    assert "226/NAMESPACE" in line
    assert ("[Service] BindReadOnlyPaths= DynamicUser= LogNamespace= TemporaryFileSystem= in "
            "/s/ns1/etc/systemd/system/ns.service.d/50-local.conf") in hint
    # An admin's reset in a later drop-in: nothing left.
    (tmp_path / "ns.service.d").mkdir()
    (tmp_path / "ns.service.d" / "50-local.conf").write_text(
        "[Service]\nBindReadOnlyPaths=\nTemporaryFileSystem=\nDynamicUser=no\nLogNamespace=\n")
    assert capneeds.namespace_settings(load_unit("ns.service", [tmp_path])) == []


def test_a_unit_with_only_binds_onto_themselves_has_none(tmp_path: Path) -> None:
    (tmp_path / "same.service").write_text(
        "[Service]\nExecStart=/bin/true\nBindPaths=/srv/a -/srv/b:/srv/b /srv//c:/srv/c/\n")
    assert capneeds.namespace_settings(load_unit("same.service", [tmp_path])) == []


BINDS_ELSEWHERE = """\
[Unit]
Description=virt-sandbox-service test: a bind to another place (as haproxy's /dev/log)

[Service]
Type=simple
BindReadOnlyPaths=/etc/hostname:/var/lib/vss-elsewhere
ExecStart=/bin/sleep infinity
"""


@pytest.mark.root
@pytest.mark.libvirt
def test_a_bind_elsewhere_is_named_at_create_and_start_and_a_reset_runs_it(env: Env) -> None:
    """Real systemd in a real sandbox fails such a unit (226/NAMESPACE); create warns, the
    failed start names the setting, and the reset its hint gives makes the unit run."""
    from .test_readiness import host_unit

    for unit in host_unit(BINDS_ELSEWHERE):
        name = unique_name("nsb")
        proc = env.run("create", "-u", unit, name, check=True)
        setting = "BindReadOnlyPaths=/etc/hostname:/var/lib/vss-elsewhere"
        assert f"warning: {unit} has {setting}, which systemd sets up only" in proc.stderr
        proc = env.run("start", "--detach", name, timeout=120)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert f"{unit} failed in sandbox '{name}': {unit} has {setting}" in proc.stderr
        dropin = env.state(name) / "etc" / "systemd" / "system" / f"{unit}.d" / "50-local.conf"
        assert str(dropin) in proc.stderr and "Traceback" not in proc.stderr
        dropin.parent.mkdir(parents=True, exist_ok=True)  # ours are there too
        dropin.write_text("[Service]\nBindReadOnlyPaths=\n")
        env.run("start", "--detach", name, check=True)
        proc = env.run("execute", name, "--", "systemctl", "is-active", unit)
        assert proc.stdout.strip() == "active"
        env.run("stop", name, check=True)


CLUSTER = """\
[Unit]
AssertPathExists=/etc/db/%I/db.conf
ConditionPathExists=!/etc/db/disabled
ConditionPathExists=|/etc/db/either
RequiresMountsFor=/etc/db/%I /var/lib/db/%I

[Service]
ExecStart=/bin/true
"""


def test_a_units_prerequisite_paths_the_instance_lacks_and_the_host_has(tmp_path: Path
                                                                       ) -> None:
    (tmp_path / "db@.service").write_text(CLUSTER)
    u = load_unit("db@15-main.service", [tmp_path])
    assert capneeds.required_paths(u) == [
        ("/etc/db/15/main", "RequiresMountsFor="), ("/var/lib/db/15/main", "RequiresMountsFor="),
        ("/etc/db/15/main/db.conf", "AssertPathExists=")]
    host = {"/etc/db/15/main", "/var/lib/db/15/main", "/etc/db/15/main/db.conf"}
    instance = {"/etc/db/15/main", "/etc/db/15/main/db.conf"}
    assert capneeds.missing_instance_paths([u], instance.__contains__, host.__contains__) == [
        ("db@15-main.service", "/var/lib/db/15/main", "RequiresMountsFor=")]
    # What the host lacks too is not the instance's to have (made at start, say).
    assert capneeds.missing_instance_paths([u], instance.__contains__, set().__contains__) == []
    line, hint = capneeds.describe_missing_paths(
        [("db@15-main.service", "/var/lib/db/15/main", "RequiresMountsFor=")])
    assert line.startswith("db@15-main.service needs /var/lib/db/15/main (RequiresMountsFor=)")
    assert hint.startswith("-C starts the instance from the host's data")


@pytest.mark.root  # a whiteout is a character device
def test_the_instance_view_of_a_sandbox(tmp_path: Path) -> None:
    """Its own /var; its overlay /etc over the host's, but for whiteouts; a mount's target;
    the host's root for the rest."""
    state = tmp_path / "s"
    (state / "var" / "lib" / "own").mkdir(parents=True)
    (state / "etc").mkdir()
    os.mknod(state / "etc" / "passwd", 0o020000, os.makedev(0, 0))  # a whiteout
    c = dataclasses.replace(cfg(), state_dir=str(state), etc_overlay=True,
                            private=("/var/lib/given",))
    has = capneeds.instance_view(c)
    assert has("/var/lib/own") and not has("/var/lib/dpkg")
    assert has("/etc/hostname") and not has("/etc/passwd")  # the host's, and a whiteout
    assert has("/var/lib/given/x") and has("/usr/bin/env")
    assert capneeds.instance_view(dataclasses.replace(c, image_size=1 << 30))("/var/lib/dpkg")


DOVECOT_LOG = ("doveconf: Fatal: Error in configuration file /etc/dovecot/conf.d/10-ssl.conf "
               "line 13: ssl_key: Can't open file /etc/dovecot/private/dovecot.key: No such "
               "file or directory\n")
SNAKEOIL = "/etc/ssl/private/ssl-cert-snakeoil.key"


def instance_tree(root: Path) -> Callable[[str], str | None]:
    """A sandbox's view made of one tree (an --etc copy's: nothing of the host's below)."""
    def locate(path: str) -> str | None:
        where = root / path.lstrip("/")
        return str(where) if os.path.lexists(where) else None
    return locate


def test_a_hidden_host_secret_named_in_a_failed_units_log(tmp_path: Path) -> None:
    """dovecot's key is a link, in its own private directory, to the host's snakeoil key
    behind /etc/ssl/private (hidden): the log names the link, the line names both and the
    hidden tree, the hint the copy that gives it."""
    private = tmp_path / "etc" / "dovecot" / "private"
    private.mkdir(parents=True)
    (private / "dovecot.key").symlink_to(SNAKEOIL)
    locate = instance_tree(tmp_path)
    assert capneeds.resolve_in_instance(locate, "/etc/dovecot/private/dovecot.key") == SNAKEOIL
    found = capneeds.hidden_secret("dovecot.service", DOVECOT_LOG, locate,
                                   ["/etc/shadow", "/etc/ssl/private"], {SNAKEOIL}.__contains__)
    assert found == (
        "dovecot.service's log names /etc/dovecot/private/dovecot.key (a link to "
        f"{SNAKEOIL}), which is the host's secret /etc/ssl/private, hidden from the sandbox",
        "-C --private /etc/ssl/private gives the instance a copy of the host's (create it "
        "again with them), or point its configuration at one of its own")
    # Not hidden, not the host's either, or the sandbox has one: nothing to name.
    assert capneeds.hidden_secret("d", DOVECOT_LOG, locate, ["/etc/ssh"],
                                  {SNAKEOIL}.__contains__) is None
    assert capneeds.hidden_secret("d", DOVECOT_LOG, locate, ["/etc/ssl/private"],
                                  set().__contains__) is None
    assert capneeds.hidden_secret("d", "bind: Address in use\n", locate, ["/etc"],
                                  lambda p: True) is None
    (tmp_path / SNAKEOIL.lstrip("/")).parent.mkdir(parents=True)
    (tmp_path / SNAKEOIL.lstrip("/")).write_text("its own\n")
    assert capneeds.hidden_secret("d", DOVECOT_LOG, locate, ["/etc/ssl/private"],
                                  {SNAKEOIL}.__contains__) is None


def test_links_are_followed_as_the_sandbox_sees_them(tmp_path: Path) -> None:
    """Relative links, a link in a directory on the way, and a loop that ends."""
    etc = tmp_path / "etc"
    (etc / "real" / "sub").mkdir(parents=True)
    (etc / "alias").symlink_to("real")
    (etc / "real" / "sub" / "key").symlink_to("../../other/key")
    (etc / "loop").symlink_to("loop")
    locate = instance_tree(tmp_path)
    assert capneeds.resolve_in_instance(locate, "/etc/alias/sub/key") == "/etc/other/key"
    assert capneeds.resolve_in_instance(locate, "/etc/loop") == "/etc/loop"
    assert capneeds.resolve_in_instance(locate, "/etc/none/x") == "/etc/none/x"
