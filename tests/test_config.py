"""SandboxConfig round trip, name/size/URI/label parsing and their error texts (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from virt_sandbox_service.config import (
    Driver,
    GraphicsType,
    Kind,
    SandboxConfig,
    SecurityMode,
    driver_for_uri,
    parse_size,
    validate_name,
)
from virt_sandbox_service.create import parse_security
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.labels import Level, allocate, parse_label


def sample() -> SandboxConfig:
    return SandboxConfig(
        name="web1", kind=Kind.SERVICE, uri="lxc:///", state_dir="/srv/s/web1",
        units=("apache2.service",), packages=("apache2",), private=("/srv/data",),
        shared=("/var/www",), copy=True, security_mode=SecurityMode.STATIC,
        security_label="system_u:system_r:svirt_lxc_net_t:s0:c1,c2",
        machine_id="0" * 32, memory=512 * 1024**2, extra=(("note", "x"),),
        uid=5000, gid=33, username="alice", homedir="/var/home/alice", image_size=64 * 1024**2,
    )


def test_config_round_trips_losslessly() -> None:
    cfg = sample()
    assert SandboxConfig.from_json(cfg.to_json()) == cfg
    assert SandboxConfig.from_json(cfg.to_json()).to_json() == cfg.to_json()


MOUNTS = ("host-bind:/srv/data=/tmp", "host-bind:/var/cache/x=", "ram:/var/cache/y=64M",
          "guest-bind:/opt=/var/lib/apache2", "host-image:/srv/img=/nonexistent/data.img")
NETWORKS = ("source=default,dhcp",
            "source=vssnet,mac=52:54:00:AB:CD:EF,address=192.0.2.10/24%192.0.2.255,"
            "address=2001:db8::10/64,route=0.0.0.0/0%192.0.2.1,filter=vss-listen-only,port=80,"
            "port=443,inbound=1M:2M:256K,outbound=1000")


def typed_sample() -> SandboxConfig:
    from virt_sandbox_service.mounts import parse_mount_syntax
    from virt_sandbox_service.network import parse_network

    return dataclasses.replace(sample(), mounts=tuple(map(parse_mount_syntax, MOUNTS)),
                               networks=tuple(map(parse_network, NETWORKS)))


def test_mounts_and_networks_are_parsed_once_and_saved_canonically() -> None:
    """The config holds parsed specs; its JSON holds their canonical text, which parses back
    to equal specs (and to the same text again). Loading never looks at the host: the image
    above does not exist."""
    import json

    cfg = typed_sample()
    saved = json.loads(cfg.to_json())
    assert saved["mounts"][2] == "ram:/var/cache/y=67108864"
    assert saved["networks"][1].startswith("source=vssnet,mac=52:54:00:ab:cd:ef,address=")
    assert saved["networks"][1].endswith(",inbound=1M:2M:256K,outbound=1000")
    again = SandboxConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_json() == cfg.to_json()
    assert again.mounts[4].source == "/nonexistent/data.img"


def test_a_config_saved_with_the_users_spelling_loads() -> None:
    """Configs written before the specs were typed hold them as the user gave them."""
    import json

    data = json.loads(sample().to_json())
    data["mounts"], data["networks"] = list(MOUNTS), list(NETWORKS)
    assert SandboxConfig.from_json(json.dumps(data)) == typed_sample()


def test_a_bad_saved_spec_is_one_error_naming_the_file() -> None:
    import json

    data = json.loads(sample().to_json())
    data["mounts"] = ["ram:/x"]
    with pytest.raises(UserError, match=r"web1\.json: mount 'ram:/x' is not TYPE:DST=SRC"):
        SandboxConfig.from_json(json.dumps(data), "web1.json")


def test_a_display_round_trips_and_an_older_config_without_one_loads() -> None:
    """create --graphics: typed fields, saved as text; a config written before they existed
    (no such keys) loads unchanged, with no display."""
    import json

    cfg = dataclasses.replace(sample(), kind=Kind.GENERIC, units=(), command=("/usr/bin/xterm",),
                              uri="qemu:///system", graphics=GraphicsType.SPICE,
                              graphics_listen="127.0.0.1")
    data = json.loads(cfg.to_json())
    assert (data["graphics"], data["graphics_listen"]) == ("spice", "127.0.0.1")
    back = SandboxConfig.from_json(cfg.to_json())
    assert back == cfg and back.graphics is GraphicsType.SPICE
    older = json.loads(sample().to_json())
    del older["graphics"], older["graphics_listen"]
    loaded = SandboxConfig.from_json(json.dumps(older))
    assert loaded == sample() and (loaded.graphics, loaded.graphics_listen) == (None, "")
    data["graphics"] = "x11"
    with pytest.raises(UserError, match=r"'x11' is not a valid graphics type \(vnc, spice\)"):
        SandboxConfig.from_json(json.dumps(data))


def test_config_rejects_unknown_keys_naming_them() -> None:
    text = sample().to_json().replace('"copy"', '"colour": 1, "copy"')
    with pytest.raises(UserError, match="unknown key\\(s\\) colour"):
        SandboxConfig.from_json(text, "web1.json")


def test_config_bad_enum_lists_choices() -> None:
    text = sample().to_json().replace('"kind": "service"', '"kind": "vm"')
    with pytest.raises(UserError, match=r"'vm' is not a valid sandbox kind \(service, generic\)"):
        SandboxConfig.from_json(text)


@pytest.mark.parametrize("name", ["web1", "a", "mail.example", "x_y-z", "A" * 64])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(("name", "message"), [
    ("", "sandbox name is empty"),
    ("a/b", "must not contain '/' or '..'"),
    ("..", "must not contain '/' or '..'"),
    ("a..b", "must not contain '/' or '..'"),
    ("-x", "characters that are not allowed"),
    ("web 1", "characters that are not allowed"),
    ("wéb", "characters that are not allowed"),
    ("a+b", "characters that are not allowed"),
    ("A" * 65, "65 characters long"),
])
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_name(name)


@pytest.mark.parametrize(("text", "value"), [
    ("512M", 512 * 1024**2), ("2G", 2 * 1024**3), ("1GiB", 1024**3), ("100", 100),
    ("1KB", 1000), ("3 MiB", 3 * 1024**2),
])
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "12X", "-5M", "0", "1.5G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UserError):
        parse_size(text, "--memory")


def test_uri_driver() -> None:
    assert driver_for_uri("lxc:///") is Driver.LXC
    assert driver_for_uri("qemu:///system") is Driver.KVM
    with pytest.raises(UserError, match="'xen:///' is not a libvirt LXC or QEMU URI"):
        driver_for_uri("xen:///")


def test_security_parsing() -> None:
    assert parse_security("dynamic") == (SecurityMode.DYNAMIC, None)
    label = "system_u:system_r:svirt_lxc_net_t:s0:c5,c9"
    assert parse_security(f"static,label={label}") == (SecurityMode.STATIC, label)
    with pytest.raises(UserError, match="'magic' is not a valid security mode"):
        parse_security("magic")
    with pytest.raises(UserError, match="-s static needs label="):
        parse_security("static")
    with pytest.raises(UserError, match="needs two categories"):
        parse_security("static,label=u:r:t:s0:c9,c5")
    with pytest.raises(UserError, match="is not an SELinux label"):
        parse_label("nonsense")


def test_label_allocation_avoids_used_pairs() -> None:
    import random

    used = [f"system_u:system_r:svirt_lxc_net_t:s0:c{i},c{i + 1}" for i in range(0, 1000, 2)]
    rng = random.Random(7)
    got = {allocate(used, rng) for _ in range(200)}
    taken = {(i, i + 1) for i in range(0, 1000, 2)}
    assert all(isinstance(level, Level) and (level.c1, level.c2) not in taken for level in got)
    assert all(level.c1 < level.c2 for level in got)


def test_config_from_another_format_version_is_refused() -> None:
    newer = sample().to_json().replace('"format_version": 1', '"format_version": 2')
    with pytest.raises(UserError, match="newer than this virt-sandbox-service knows"):
        SandboxConfig.from_json(newer, "web1.json")
    older = sample().to_json().replace('"format_version": 1', '"format_version": 0')
    with pytest.raises(UserError, match="older format version 0"):
        SandboxConfig.from_json(older, "web1.json")


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("uri", 5, "'uri' must be a string, not int"),
    ("copy", "yes", "'copy' must be true or false"),
    ("memory", True, "'memory' must be a whole number, not bool"),
    ("units", "apache2.service", "'units' must be a list"),
    ("units", [1], "'units' must be a list of strings"),
    ("mounts", "ram:/x=1M", "'mounts' must be a list"),
    ("networks", [{"source": "x"}], "'networks' must be a list of strings"),
    ("graphics", 1, "'graphics' must be a string, not int"),
    ("graphics_listen", None, "'graphics_listen' must be a string, not NoneType"),
])
def test_config_field_types_are_checked(key: str, value: object, needle: str) -> None:
    import json

    data = json.loads(sample().to_json())
    data[key] = value
    with pytest.raises(UserError, match=needle):
        SandboxConfig.from_json(json.dumps(data), "web1.json")


def test_shown_escapes_control_characters() -> None:
    with pytest.raises(UserError) as e:
        validate_name("a\nb")
    assert "\n" not in e.value.message and "'a\\nb'" in e.value.message


def test_running_domains_labels_are_read_where_libvirt_answers() -> None:
    """registry.running_labels reads each running domain's label through a read-only
    connection (libvirt's in-process test driver has one running domain, labelled
    'libvirt-test'), and passes over a URI no driver answers, as a host without qemu is."""
    from virt_sandbox_service.registry import running_labels

    assert running_labels(("test:///default", "nosuchdriver:///")) == ["libvirt-test"]


def test_labels_in_use_without_selinux_are_the_configs(tmp_path: Path) -> None:
    """Without SELinux no running domain holds an MCS pair: only the configs are read (no
    libvirt connection is opened, so create and clone stay as fast as before)."""
    from virt_sandbox_service import host, registry
    from virt_sandbox_service.config import Paths

    if host.selinux_enabled():
        pytest.skip("this host runs SELinux: the running domains are read too")
    paths = Paths(config_dir=tmp_path / "c", state_parent=tmp_path / "s",
                  unit_dir=tmp_path / "u", run_dir=tmp_path / "r")
    assert registry.labels_in_use(paths) == []
