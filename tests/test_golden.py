"""Golden files for generated domain XML and host units, from fixed inputs (pure, no root).

Each domain is also validated against libvirt's RelaxNG schema; `pytest --regenerate-output`
rewrites the files after an intended change (review the diff).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from virt_sandbox_service.config import Kind, Paths, SandboxConfig
from virt_sandbox_service.domain import domain_xml
from virt_sandbox_service.evidence import Access, PathEvidence
from virt_sandbox_service.host import HostFacts
from virt_sandbox_service.limits import DEFAULT_DROP
from virt_sandbox_service.plan import CONFINEMENT_DROPIN, Plan, WriteFile, plan
from virt_sandbox_service.planner import Inputs, UnitSource, build

from .conftest import GOLDEN, need

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
EXE = "/usr/local/bin/virt-sandbox-service"
FACTS = HostFacts(memory_kib=2 * 1024 * 1024,
                  etc_wants_dirs=("multi-user.target.wants", "getty.target.wants"),
                  var_symlinks=(("lock", "/run/lock"), ("run", "/run")),
                  shared_etc=("/etc/alternatives", "/etc/ssl/certs"),
                  private_trees=("/home", "/root"))


def ev(path: str, access: Access = Access.PRIVATE, is_dir: bool = True,
       reason: str = "package apache2 (dpkg file list)", mode: int | None = 0o755,
       owner: tuple[int, int] | None = (0, 0)) -> PathEvidence:
    return PathEvidence(path, access, is_dir, (reason,), owner, mode)


APACHE_EVIDENCE = (
    ev("/var/cache", reason="needed by systemd in the sandbox"),
    ev("/var/cache/apache2"),
    ev("/var/lib", reason="needed by systemd in the sandbox"),
    ev("/var/lib/apache2"),
    ev("/var/log", reason="needed by systemd in the sandbox"),
    ev("/var/log/apache2", mode=0o750, owner=(0, 4)),
    ev("/var/log/journal", reason="needed by systemd in the sandbox", mode=0o2755),
    ev("/var/tmp", reason="needed by systemd in the sandbox", mode=0o1777),
    ev("/var/www/html"),
)
HIDDEN = (ev("/etc/shadow", Access.HIDDEN, False, "not world-readable on the host (0640)"),)


def typed_specs(kw: dict[str, object]) -> dict[str, object]:
    """-m and -N specs written as a user writes them, parsed as a saved config's are."""
    from virt_sandbox_service.mounts import parse_mount_syntax
    from virt_sandbox_service.network import parse_network

    parsers = {"mounts": parse_mount_syntax, "networks": parse_network}
    return {k: tuple(map(parsers[k], v)) if k in parsers else v  # type: ignore[call-overload]
            for k, v in kw.items()}


def config(**kw: object) -> SandboxConfig:
    kw = typed_specs(kw)
    base = SandboxConfig(
        name="web1", kind=Kind.SERVICE, uri="lxc:///",
        state_dir="/var/lib/virt-sandbox-service/web1", units=("apache2.service",),
        security_label="system_u:system_r:svirt_lxc_net_t:s0:c12,c345",
        machine_id="0123456789abcdef0123456789abcdef", caps_drop=DEFAULT_DROP)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


CASES: dict[str, tuple[SandboxConfig, tuple[PathEvidence, ...], HostFacts]] = {
    "apache2": (config(), APACHE_EVIDENCE, FACTS),
    "postfix-instance": (
        config(name="mail1", units=("postfix@mail1.service",),
               state_dir="/srv/sandboxes/mail1"),
        (ev("/var/spool/postfix", reason="package postfix (dpkg file list)"),
         ev("/var/lib/postfix", mode=0o755, owner=(101, 101))),
        FACTS),
    "generic-quoting": (
        config(name="gen", kind=Kind.GENERIC, units=(),
               command=("/usr/bin/python3", "-c", "print('50% $HOME \"x\"')"),
               state_dir="/var/lib/virt-sandbox-service/gen"),
        (ev("/var/tmp", reason="writable temporary space", mode=0o1777),), FACTS),
    "generic-user-image": (
        config(name="gu", kind=Kind.GENERIC, units=(), command=("/usr/bin/id",),
               state_dir="/var/lib/virt-sandbox-service/gu", uid=5000, gid=33,
               username="alice", homedir="/home/alice", image_size=64 * 1024**2),
        (ev("/var/tmp", reason="writable temporary space", mode=0o1777),), FACTS),
    "limits-selinux-overrides": (
        config(name="web2", memory=512 * 1024**2, cpu_weight=512, cpu_quota=150, tasks=256,
               blkio_weight=300, state_dir="/var/lib/virt-sandbox-service/web2",
               private=("/srv/web2",), shared=("/var/www",)),
        (*APACHE_EVIDENCE, ev("/srv/web2", reason="--private"),
         ev("/var/www", Access.SHARED, reason="--shared")),
        dataclasses.replace(FACTS, selinux=True)),
    "tuning": (
        config(name="gen3", kind=Kind.GENERIC, units=(), command=("/bin/true",),
               state_dir="/var/lib/virt-sandbox-service/gen3", memory=512 * 1024**2,
               memory_soft=256 * 1024**2, memory_swap=1024**3, cpuset="1", numa_nodes="0",
               blkio_weight=300,
               io_throttle=("read_bytes_sec:/dev/vda:1048576", "read_iops_sec:/dev/vda:100",
                            "write_bytes_sec:/dev/vdb:2097152",
                            "write_iops_sec:/dev/vdb:50"),
               networks=("source=vssnet,address=192.0.2.30/24,inbound=1M:2M:256K,"
                         "outbound=512K",)),
        (ev("/var/tmp", reason="writable temporary space", mode=0o1777),), FACTS),
    "network-filter": (
        config(name="web4", state_dir="/var/lib/virt-sandbox-service/web4",
               networks=("source=vssnet,address=192.0.2.10/24,address=2001:db8::10/64,"
                         "route=0.0.0.0/0%192.0.2.1,mac=52:54:00:00:00:0a,"
                         "filter=vss-listen-only,port=80,port=443",
                         "source=other,dhcp"),
               mounts=("host-bind:/srv=/srv", "ram:/var/cache/x=64M")),
        APACHE_EVIDENCE, FACTS),
    "apache2-overlay": (
        config(name="web5", etc_overlay=True, state_dir="/var/lib/virt-sandbox-service/web5",
               mounts=("host-bind:/etc/apache2/sites-enabled=/usr/share/doc",)),
        APACHE_EVIDENCE, FACTS),
    "generic-overlay": (
        config(name="gen2", kind=Kind.GENERIC, units=(), command=("/bin/true",),
               etc_overlay=True, state_dir="/var/lib/virt-sandbox-service/gen2"),
        (ev("/var/tmp", reason="writable temporary space", mode=0o1777),), FACTS),
    "userns": (config(name="web3", id_base=1 << 20, state_dir="/var/lib/virt-sandbox-service/web3"),
               APACHE_EVIDENCE, FACTS),
    "time-daemon": (
        config(name="ntp1", units=("chrony.service",), caps_add=("sys_time",),
               caps_drop=tuple(c for c in DEFAULT_DROP if c != "sys_time"),
               syscalls_allow=("@keyring",), state_dir="/var/lib/virt-sandbox-service/ntp1"),
        (ev("/var/lib/chrony", reason="package chrony (dpkg file list)"),), FACTS),
    # --device: a VPN daemon's tun node and a disk, as libvirt's capabilities hostdevs.
    "devices": (
        config(name="vpn1", kind=Kind.GENERIC, units=(),
               command=("/usr/sbin/openvpn", "--config", "/etc/openvpn/server.conf"),
               devices=("char:/dev/net/tun", "block:/dev/loop7"),
               state_dir="/var/lib/virt-sandbox-service/vpn1"), (), FACTS),
}


def make(name: str) -> tuple[Plan, str, str]:
    cfg, evidence, facts = CASES[name]
    frags = tuple((u, f"/lib/systemd/system/{u.split('@')[0] + '@.service' if '@' in u else u}")
                  for u in cfg.units)
    p = build(cfg, facts, Inputs(evidence=evidence, hidden=HIDDEN,
                                 units=tuple(UnitSource(u, f) for u, f in frags),
                                 paths=Paths(), tool=EXE))
    (_, unit), = p.unit_files
    return p, p.domain_xml, unit


def check_golden(path: Path, text: str, regenerate: bool) -> None:
    """A missing golden file fails (a deleted fixture must not pass by being rewritten):
    --regenerate-output writes it."""
    if regenerate:
        path.write_text(text)
    assert path.exists(), f"{path.name} is missing; --regenerate-output writes it"
    assert text == path.read_text(), f"{path.name} differs; --regenerate-output if intended"


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_golden(case: str, regenerate: bool) -> None:
    _, xml, _ = make(case)
    check_golden(GOLDEN / f"{case}.xml", xml, regenerate)


@pytest.mark.parametrize("case", sorted(CASES))
def test_unit_golden(case: str, regenerate: bool) -> None:
    _, _, unit = make(case)
    check_golden(GOLDEN / f"{case}.service", unit, regenerate)


DROPIN_CASES = ("apache2", "network-filter", "time-daemon")


def confinement_dropin(case: str) -> tuple[str, str]:
    """The confined unit's name and its confinement drop-in, as planned."""
    p, _, _ = make(case)
    unit = p.config.units[0]
    wanted = f"/{unit}.d/{CONFINEMENT_DROPIN}"
    return unit, next(f.content for f in p.files
                      if isinstance(f, WriteFile) and f.path.endswith(wanted))


@pytest.mark.parametrize("case", DROPIN_CASES)
def test_confinement_dropin_golden(case: str, regenerate: bool) -> None:
    check_golden(GOLDEN / f"{case}.confinement.conf", confinement_dropin(case)[1], regenerate)


def test_confinement_follows_the_options() -> None:
    plain, dhcp, timed = (confinement_dropin(c)[1] for c in DROPIN_CASES)
    gone = plain.split("CapabilityBoundingSet=~")[1].split("\n")[0].split()
    assert {"CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"} <= set(gone)
    assert "CAP_SETUID" not in gone and "ProtectClock=yes" in plain
    # networkd keeps CAP_NET_ADMIN for DHCP in the sandbox; the service does not get it.
    assert "CAP_NET_ADMIN" in dhcp.split("CapabilityBoundingSet=~")[1].split("\n")[0]
    init = make("network-filter")[1]
    assert ",net_admin,net_raw," in init and ",net_admin," not in make("apache2")[1]
    # --cap-add sys_time gives back the capability and the clock calls, and nothing else.
    assert "CAP_SYS_TIME" not in timed and "ProtectClock" not in timed
    assert "clock_settime" not in timed and "keyctl" not in timed and "mount " in timed
    assert "--allow @keyring" in make("time-daemon")[1]


def test_confinement_dropin_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """With the host's own apache2.service (installed by set-up), as the sandbox's systemd
    loads it: its fragment, then our drop-in."""
    fragment = Path("/lib/systemd/system/apache2.service")
    need(fragment.exists() and shutil.which("systemd-analyze") is not None,
         "apache2 and systemd-analyze are installed by scripts/setup.sh")
    unit, text = confinement_dropin("apache2")
    (tmp_path / unit).write_text(fragment.read_text())
    (tmp_path / f"{unit}.d").mkdir()
    (tmp_path / f"{unit}.d" / CONFINEMENT_DROPIN).write_text(text)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],
                       capture_output=True, text=True, check=False, env=env)
    # Only what concerns our files: verify also loads the host's other units, and warns of them.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if str(tmp_path) in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(tmp_path / unit)],
                       capture_output=True, text=True, check=False, env=env)
    shown = {line.split()[1].split("=")[0] for line in r.stdout.splitlines()
             if line.startswith("✓")}
    assert {"CapabilityBoundingSet", "SystemCallFilter", "NoNewPrivileges",
            "RestrictNamespaces"} <= {s.split("~")[0] for s in shown}, r.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_validates_against_libvirt_schema(case: str) -> None:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} missing: install libvirt-daemon-system (scripts/setup.sh)")
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    _, xml, _ = make(case)
    doc = etree.fromstring(xml.encode())
    assert schema.validate(doc), schema.error_log.last_error


def test_apache2_domain_shape() -> None:
    _, xml, _ = make("apache2")
    doc = etree.fromstring(xml.encode())
    fs = [(f.get("type"), f.find("source").get("dir") or f.find("source").get("usage"),
           f.find("target").get("dir"), f.find("readonly") is not None)
          for f in doc.iter("filesystem")]
    assert fs[0] == ("mount", "/", "/", True)
    assert ("mount", "/var/lib/virt-sandbox-service/web1/etc", "/etc", False) in fs
    assert ("mount", "/var/lib/virt-sandbox-service/web1/var", "/var", False) in fs
    targets = [t for _, _, t, _ in fs]
    assert targets.index("/run") < targets.index("/run/sandbox-host")
    assert doc.find("features/privnet") is not None
    assert doc.find("interface") is None and doc.find("devices/interface") is None
    assert doc.findtext("os/initenv[@name='NOTIFY_SOCKET']") == "/run/sandbox-host/notify"
    init = doc.findall("os/initarg")[-1].text
    # systemd starts confined: seccomp and the small capability set (see confine.py).
    assert "sandbox-init /usr/bin/python3 -I -S " in init
    assert "confine.py --caps chown,dac_override," in init
    assert init.endswith("-- /lib/systemd/systemd systemd.unified_cgroup_hierarchy=1")
    assert "sys_admin" not in init.split("--caps ")[1].split()[0]
    assert doc.find("seclabel") is None  # no SELinux in FACTS


def test_selinux_host_gets_seclabel_and_memory_limit() -> None:
    _, xml, _ = make("limits-selinux-overrides")
    doc = etree.fromstring(xml.encode())
    assert doc.findtext("seclabel/label") == "system_u:system_r:svirt_lxc_net_t:s0:c12,c345"
    assert doc.findtext("memory") == str(512 * 1024)
    assert doc.findtext("memtune/hard_limit") == str(512 * 1024)
    assert doc.findtext("cputune/shares") == "512"
    assert doc.findtext("cputune/quota") == "150000"
    assert doc.findtext("blkiotune/weight") == "300"
    dropped = {c.tag for c in doc.find("features/capabilities")}
    assert {"sys_module", "sys_rawio", "sys_time"} <= dropped
    shared = [f for f in doc.iter("filesystem") if f.find("target").get("dir") == "/var/www"]
    assert shared and shared[0].find("readonly") is not None


def test_generic_init_keeps_arguments_apart() -> None:
    _, xml, _ = make("generic-quoting")
    doc = etree.fromstring(xml.encode())
    args = [a.text for a in doc.findall("os/initarg")]
    assert args[-3:] == ["/usr/bin/python3", "-c", "print('50% $HOME \"x\"')"]
    assert doc.find("os/initenv") is None


def test_unit_escapes_specials() -> None:
    _, _, unit = make("generic-quoting")
    assert "50%% $HOME" in unit  # Description: % doubled
    assert "ExecStart=/usr/local/bin/virt-sandbox-service start gen" in unit


def test_plan_enables_only_the_confined_unit() -> None:
    from virt_sandbox_service.plan import CopyTree, Symlink

    p, _, _ = make("postfix-instance")
    copies = [op for op in p.files if isinstance(op, CopyTree) and op.src == "/etc"]
    assert "/etc/systemd/system/multi-user.target.wants" in copies[0].exclude
    assert "/etc/shadow" in copies[0].exclude
    assert "/etc/libvirt" in copies[0].exclude  # neighbours' domain definitions
    links = {op.path.split("/etc/", 1)[1]: op.target for op in p.files
             if isinstance(op, Symlink) and "/etc/" in op.path}
    assert links["systemd/system/multi-user.target.wants/postfix@mail1.service"] == \
        "/lib/systemd/system/postfix@.service"
    assert links["systemd/system/getty.target"] == "/dev/null"


def test_copy_takes_only_the_services_own_directories() -> None:
    from virt_sandbox_service.plan import CopyTree

    cfg = config(copy=True)
    p = plan(cfg, FACTS, APACHE_EVIDENCE, HIDDEN, "/c.json", "/run/x", ())
    copied = {op.src for op in p.files if isinstance(op, CopyTree)}
    assert copied == {"/etc", "/var/cache/apache2", "/var/lib/apache2", "/var/log/apache2",
                      "/var/www/html"}  # never /var/lib, /var/log/journal or /var/tmp


def test_host_managed_etc_trees_are_shared_read_only() -> None:
    from virt_sandbox_service.plan import CopyTree

    p, _, _ = make("apache2")
    etc_copy = next(op for op in p.files if isinstance(op, CopyTree) and op.src == "/etc")
    assert "/etc/alternatives" in etc_copy.exclude
    ro = {m.target for m in p.mounts if m.readonly}
    assert ro == {"/", "/etc/alternatives", "/etc/ssl/certs", "/etc/ld.so.cache",
                  "/etc/ld.so.preload", "/run/.vss-confine.py"}


def test_userns_domain_maps_root_to_its_range() -> None:
    _, xml, _ = make("userns")
    doc = etree.fromstring(xml.encode())
    assert doc.find("idmap/uid").attrib == {"start": "0", "target": "1048576", "count": "65536"}
    assert doc.find("idmap/gid").attrib == {"start": "0", "target": "1048576", "count": "65536"}


@pytest.mark.root
def test_shifted_ownership_of_private_trees(tmp_path: Path) -> None:
    from virt_sandbox_service.apply.files import apply_op
    from virt_sandbox_service.plan import CopyTree, MakeDir

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 33, 4)
    apply_op(CopyTree(str(src), str(tmp_path / "dst")), shift=1 << 20)
    apply_op(MakeDir(str(tmp_path / "d"), 0o750, 0, 4), shift=1 << 20)
    st = os.stat(tmp_path / "dst" / "f")
    assert (st.st_uid, st.st_gid) == ((1 << 20) + 33, (1 << 20) + 4)
    st = os.stat(tmp_path / "d")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1 << 20, (1 << 20) + 4, 0o750)


def test_network_filter_xml_validates_against_libvirt_schema() -> None:
    from virt_sandbox_service.network import filter_xml

    schema = etree.RelaxNG(etree.parse("/usr/share/libvirt/schemas/nwfilter.rng"))
    assert schema.validate(etree.fromstring(filter_xml().encode())), schema.error_log.last_error


def test_apparmor_host_gets_a_profile_of_its_own() -> None:
    """Where libvirt's LXC driver has the apparmor model, the domain names the sandbox's own
    profile (apparmor.py: libvirt's dynamic one refuses its /etc binds and its init's mounts),
    named after its machine-id in the libvirt-UUID form; elsewhere no AppArmor label."""
    from virt_sandbox_service import apparmor

    cfg, evidence, facts = CASES["apache2"]
    aa = dataclasses.replace(facts, secmodels=("apparmor", "dac"))
    p = plan(cfg, aa, evidence, HIDDEN, "/c.json", "/run/x", ())
    xml = domain_xml(p, aa)
    doc = etree.fromstring(xml.encode())
    label = doc.find("seclabel[@model='apparmor']")
    assert label is not None and label.get("type") == "static" and label.get("relabel") == "no"
    name = apparmor.profile_name(cfg.machine_id)
    assert label.findtext("label") == name and apparmor.profiles_of(xml) == (name,)
    # libvirt changes to libvirt-<domain UUID> whatever the label says: they must agree.
    assert doc.findtext("uuid") == apparmor.domain_uuid(cfg.machine_id) == name[len("libvirt-"):]
    assert re.fullmatch(r"libvirt-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", name)
    assert f"profile {name} flags=" in apparmor.profile_text(name)
    assert etree.RelaxNG(etree.parse(str(SCHEMA))).validate(doc)
    assert etree.fromstring(make("apache2")[1].encode()).find("seclabel") is None


DRY_RUN_CASES = ("apache2", "generic-user-image", "limits-selinux-overrides")


def dry_run(case: str) -> tuple[str, str]:
    """What `create --dry-run` prints for the case, as text and as --json."""
    import json

    from virt_sandbox_service.planprint import format_plan, plan_json

    p, _, _ = make(case)
    return format_plan(p) + "\n", json.dumps(plan_json(p), indent=2) + "\n"


@pytest.mark.parametrize("case", DRY_RUN_CASES)
def test_dry_run_golden(case: str, regenerate: bool) -> None:
    """--dry-run is the plan, whole: every file, mount, the domain and the unit, each with its
    reason; a change in any of them shows here."""
    text, js = dry_run(case)
    check_golden(GOLDEN / f"dryrun-{case}.txt", text, regenerate)
    check_golden(GOLDEN / f"dryrun-{case}.json", js, regenerate)
