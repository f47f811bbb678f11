"""Golden files for KVM domain XML (pure): a unit sandbox, a generic one and a one-shot run,
each validated against libvirt's RelaxNG schema. `pytest --regenerate-output` rewrites them."""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path
from unittest import mock

import pytest
from lxml import etree

from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.create import EXT_MAGIC, EXT_MAGIC_OFFSET, check_kvm_image
from virt_sandbox_service.domain import domain_xml, kvm
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.evidence import Access, PathEvidence
from virt_sandbox_service.graphics import Graphics, GraphicsType
from virt_sandbox_service.host import HostFacts
from virt_sandbox_service.plan import Plan, plan
from virt_sandbox_service.planner import Inputs, build

from .conftest import GOLDEN
from .test_golden import check_golden, typed_specs

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
FACTS = HostFacts(memory_kib=2 * 1024 * 1024, tsc_khz=2596152,
                  etc_wants_dirs=("multi-user.target.wants",),
                  var_symlinks=(("lock", "/run/lock"), ("run", "/run")),
                  shared_etc=("/etc/alternatives", "/etc/ssl/certs"),
                  private_trees=("/home", "/root"))


def ev(path: str, reason: str = "package apache2 (dpkg file list)") -> PathEvidence:
    return PathEvidence(path, Access.PRIVATE, True, (reason,), (0, 0), 0o755)


def config(**kw: object) -> SandboxConfig:
    kw = typed_specs(kw)
    base = SandboxConfig(
        name="kweb1", kind=Kind.SERVICE, uri="qemu:///system",
        state_dir="/var/lib/virt-sandbox-service/kweb1", units=("apache2.service",),
        security_label="system_u:system_r:svirt_t:s0:c12,c345",
        machine_id="0123456789abcdef0123456789abcdef")
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


CASES: dict[str, SandboxConfig] = {
    "kvm-apache2": config(),
    "kvm-generic": config(name="kgen", kind=Kind.GENERIC, units=(), memory=256 * 1024**2,
                          state_dir="/var/lib/virt-sandbox-service/kgen",
                          command=("/usr/bin/python3", "-c", "print('50% $HOME \"x\"')")),
    "kvm-generic-user": config(name="kusr", kind=Kind.GENERIC, units=(),
                               state_dir="/var/lib/virt-sandbox-service/kusr",
                               command=("/usr/bin/id",), uid=5000, gid=33, username="alice",
                               homedir="/var/home/alice"),
    "kvm-limits-mounts": config(
        name="klim", state_dir="/var/lib/virt-sandbox-service/klim", cpu_weight=512,
        cpu_quota=50, blkio_weight=300, caps_drop=("net_raw", "sys_module"),
        mounts=("host-image:/srv/img=/var/tmp/data.img", "guest-bind:/opt=/var/lib/apache2")),
    "kvm-tuning": config(
        name="ktun", state_dir="/var/lib/virt-sandbox-service/ktun", memory=512 * 1024**2,
        memory_soft=256 * 1024**2, memory_swap=2 * 1024**3, cpuset="0-1", numa_nodes="0",
        cpu_quota=50, io_throttle=("read_bytes_sec:/dev/vda:1048576",
                                   "write_iops_sec:/dev/vda:100"),
        networks=("source=vssnet,address=192.0.2.31/24,inbound=1M,outbound=256K:1M",)),
    "kvm-network": config(name="knet", state_dir="/var/lib/virt-sandbox-service/knet",
                          networks=("source=vssnet,address=192.0.2.10/24%192.0.2.255,"
                                    "address=2001:db8::10/64,route=0.0.0.0/0%192.0.2.1,"
                                    "filter=vss-listen-only,port=80,port=443",
                                    "source=other,dhcp,mac=52:54:00:00:00:0b")),
    "kvm-virtiofs": config(name="kvfs", state_dir="/var/lib/virt-sandbox-service/kvfs"),
    # create --graphics spice: a generic sandbox with build_run's display, GPU and X server.
    "kvm-generic-graphics": config(name="kgfx", kind=Kind.GENERIC, units=(),
                                   state_dir="/var/lib/virt-sandbox-service/kgfx",
                                   command=("/usr/bin/xterm",), graphics=GraphicsType.SPICE,
                                   graphics_listen="127.0.0.1"),
    "kvm-apache2-image": config(
        name="kimg", state_dir="/var/lib/virt-sandbox-service/kimg", image_size=256 * 1024**2,
        mounts=("host-image:/srv/img=/var/tmp/data.img", "ram:/var/cache/x=16M",
                "guest-bind:/opt=/var/lib/apache2")),
}
# Cases built with other host facts than FACTS.
VIRTIOFSD_RO = "/usr/libexec/virt-sandbox-service/virtiofsd-ro"
XORG = "/usr/lib/xorg/Xorg"
FACTS_FOR = {"kvm-virtiofs": dataclasses.replace(FACTS, virtiofsd=VIRTIOFSD_RO),
             "kvm-generic-graphics": dataclasses.replace(FACTS, xorg=XORG)}


def make_plan(name: str) -> Plan:
    cfg = CASES[name]
    evidence = (ev("/var/lib/apache2"), ev("/var/log/journal", "needed by systemd"))
    frags = tuple((u, f"/lib/systemd/system/{u}") for u in cfg.units)
    # The image of the golden case exists nowhere: the host check is not what this tests.
    with mock.patch("virt_sandbox_service.mounts._check_host_source"):
        return plan(cfg, FACTS, evidence, (),
                    f"/etc/virt-sandbox-service/sandboxes/{cfg.name}.json",
                    f"/run/virt-sandbox-service/{cfg.name}", frags)


def make(name: str, kvm: bool = False) -> str:
    facts = dataclasses.replace(FACTS_FOR.get(name, FACTS), kvm=kvm)
    if name == "kvm-run":
        cfg = SandboxConfig(name="vss-run-0123abcd", kind=Kind.GENERIC, uri="qemu:///system",
                            state_dir="", command=("/bin/false",))
        return kvm_build_run(cfg, facts)
    if name == "kvm-run-graphics":
        cfg = SandboxConfig(name="vss-run-0123abcd", kind=Kind.GENERIC, uri="qemu:///system",
                            state_dir="", command=("/usr/bin/xterm",))
        return build(cfg, dataclasses.replace(facts, xorg="/usr/lib/xorg/Xorg"),
                     Inputs(run_dir="/run/virt-sandbox-service/vss-run-0123abcd",
                            graphics=GRAPHICS)).domain_xml
    if name == "kvm-run-session":
        return kvm_build_run(SESSION_RUN, dataclasses.replace(facts, **SESSION_BOOT),
                             run_dir=SESSION_RUN_DIR, session=True)
    return domain_xml(make_plan(name), facts)


# A normal user's run through their own daemon (runtime/session.py): boot files in their
# cache, channels in their runtime directory, the command run as them.
SESSION_RUN = SandboxConfig(name="vss-run-0123abcd", kind=Kind.GENERIC, uri="qemu:///session",
                            state_dir="", command=("/bin/id",), uid=1000, gid=1000,
                            username="alice", homedir="/home/alice")
SESSION_RUN_DIR = "/run/user/1000/virt-sandbox-service"
SESSION_BOOT = {"kvm_kernel": "/home/alice/.cache/virt-sandbox-service/kvm/kernel",
                "kvm_initrd": "/home/alice/.cache/virt-sandbox-service/kvm/initrd.img"}


def kvm_build_run(cfg: SandboxConfig, facts: HostFacts,
                  run_dir: str = "/run/virt-sandbox-service", session: bool = False) -> str:
    return build(cfg, facts, Inputs(run_dir=f"{run_dir}/vss-run-0123abcd", session=session)
                 ).domain_xml


# run --graphics vnc with a password (graphics.py): read from a file, never a CLI argument.
GRAPHICS = Graphics(GraphicsType.VNC, "127.0.0.1", "s3cret")
ALL = [*sorted(CASES), "kvm-run", "kvm-run-graphics", "kvm-run-session"]


@pytest.mark.parametrize("case", ALL)
def test_kvm_domain_golden(case: str, regenerate: bool) -> None:
    check_golden(GOLDEN / f"{case}.xml", make(case), regenerate)


@pytest.mark.parametrize("case", ALL)
def test_kvm_domain_validates_against_libvirt_schema(case: str) -> None:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} missing: install libvirt-daemon-system (scripts/setup.sh)")
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    doc = etree.fromstring(make(case).encode())
    assert schema.validate(doc), schema.error_log.last_error


def test_every_plan_mount_reaches_the_guest() -> None:
    p = make_plan("kvm-apache2")
    doc = etree.fromstring(domain_xml(p, FACTS).encode())
    shares = [(f.find("source").get("dir"), f.find("target").get("dir"),
               f.find("readonly") is not None) for f in doc.iter("filesystem")]
    assert shares[0] == ("/", "vss0", True)
    assert all(f.get("multidevs") == "remap" for f in doc.iter("filesystem"))
    cmdline = doc.findtext("os/cmdline", "").split()
    mounts = [w.split("=", 1)[1] for w in cmdline if w.startswith("vss.mount=")]
    assert len(mounts) == len(p.mounts)
    for m, word in zip(p.mounts, mounts, strict=True):
        assert word.endswith(m.target) if m.tmpfs_kib else f",{m.target}," in word or (
            word == f"hostro,{m.source},{m.target}")
    # The host's /etc trees come from the root share, none from a share of its own: libvirt's
    # AppArmor helper refuses a share whose source is under /etc ("skipped restricted file").
    assert [w for w in mounts if w.startswith("hostro,")] == [
        f"hostro,{d},{d}" for d in FACTS.shared_etc] and FACTS.shared_etc
    assert not [s for s in shares if s[0].startswith("/etc/")], shares
    assert "vss.kind=service" in cmdline and "vss.unit=apache2.service" in cmdline
    assert "vss.init=/lib/systemd/system" not in cmdline  # the systemd binary, not a dir
    assert doc.findtext("os/type") == "hvm" and doc.find("os/type").get("machine") == "microvm"
    assert doc.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert doc.findtext("seclabel[@model='dac']/label") == "+0:+0"


def test_generic_arguments_survive_any_characters() -> None:
    doc = etree.fromstring(make("kvm-generic").encode())
    words = doc.findtext("os/cmdline", "").split()
    args = [base64.b64decode(w.split("=", 1)[1]).decode() for w in words
            if w.startswith("vss.arg=")]
    assert args == ["/usr/bin/python3", "-c", "print('50% $HOME \"x\"')"]
    assert doc.findtext("memory") == str(256 * 1024)


def test_run_domain_has_its_ports_and_no_private_trees() -> None:
    doc = etree.fromstring(make("kvm-run").encode())
    ports = [c.find("target").get("name") for c in doc.iter("channel")]
    assert ports == ["vss.stdin", "vss.stdout", "vss.stderr", "vss.status"]
    assert [f.find("source").get("dir") for f in doc.iter("filesystem")] == ["/"]
    assert doc.find("devices/serial").get("type") == "file"


def test_graphics_run_has_a_display_a_gpu_and_starts_x() -> None:
    doc = etree.fromstring(make("kvm-run-graphics").encode())
    gr = doc.find("devices/graphics")
    assert (gr.get("type"), gr.get("passwd"), gr.find("listen").get("address")) == (
        "vnc", "s3cret", "127.0.0.1")
    assert doc.find("devices/video/model").get("type") == "none"  # no PCI VGA of libvirt's
    args = [a.get("value") for a in doc.iter(f"{{{kvm.QEMU_NS}}}arg")]
    assert args == ["-global", "virtio-mmio.force-legacy=false",
                    "-device", "virtio-gpu-device,id=vss-gpu"]
    assert "vss.xorg=/usr/lib/xorg/Xorg" in doc.findtext("os/cmdline", "").split()
    # With the root over virtiofs the modern transport is asked for once.
    facts = dataclasses.replace(FACTS, virtiofsd=VIRTIOFSD_RO, xorg="/usr/lib/xorg/Xorg")
    cfg = SandboxConfig(name="vss-run-0123abcd", kind=Kind.GENERIC, uri="qemu:///system",
                        state_dir="", command=("/usr/bin/xterm",))
    both = etree.fromstring(build(cfg, facts, Inputs(run_dir="/run/x", graphics=GRAPHICS))
                            .domain_xml.encode())
    args = [a.get("value") for a in both.iter(f"{{{kvm.QEMU_NS}}}arg")]
    assert args.count("virtio-mmio.force-legacy=false") == 1
    # Without --graphics: no display, no GPU, no X.
    plain = make("kvm-run")
    assert "<graphics" not in plain and "<video" not in plain and "vss.xorg" not in plain


def test_a_generic_sandbox_created_with_graphics_gets_runs_display() -> None:
    """create --graphics: the persistent domain gets the devices and qemu arguments of
    graphics.py that build_run uses, and the guest init starts X before the command; no
    password (create has none)."""
    doc = etree.fromstring(make("kvm-generic-graphics").encode())
    gr = doc.find("devices/graphics")
    assert (gr.get("type"), gr.get("passwd"), gr.find("listen").get("address")) == (
        "spice", None, "127.0.0.1")
    assert doc.find("devices/video/model").get("type") == "none"
    args = [a.get("value") for a in doc.iter(f"{{{kvm.QEMU_NS}}}arg")]
    assert args == ["-global", "virtio-mmio.force-legacy=false",
                    "-device", "virtio-gpu-device,id=vss-gpu"]
    cmdline = words(doc)
    assert cmdline.index(f"vss.xorg={XORG}") < cmdline.index(
        next(w for w in cmdline if w.startswith("vss.arg=")))
    assert "vss.kind=generic" in cmdline
    for plain in ("kvm-generic", "kvm-apache2"):  # no --graphics: none of it
        text = make(plain)
        assert "<graphics" not in text and "<video" not in text and "vss.xorg" not in text
    # A unit sandbox's config with a display (only by hand: create refuses it) gets none.
    unit = dataclasses.replace(make_plan("kvm-apache2"), config=dataclasses.replace(
        CASES["kvm-apache2"], graphics=GraphicsType.VNC, graphics_listen="127.0.0.1"))
    assert "<graphics" not in domain_xml(unit, dataclasses.replace(FACTS, xorg=XORG))


def test_a_host_without_xorg_cannot_build_a_display() -> None:
    """upgrade on a host whose X server was removed: the package named, not a bad path."""
    from virt_sandbox_service.errors import HostError

    with pytest.raises(HostError, match="needs an X server on the host") as e:
        domain_xml(make_plan("kvm-generic-graphics"), FACTS)
    assert "xserver-xorg-core" in (e.value.hint or "")


def test_command_line_too_long_is_a_clear_error() -> None:
    cfg = dataclasses.replace(CASES["kvm-generic"], command=("/bin/echo", "x" * 3000))
    p = dataclasses.replace(make_plan("kvm-generic"), config=cfg)
    with pytest.raises(UserError, match=r"kernel command line would be \d+ bytes"):
        domain_xml(p, FACTS)


def test_unsafe_mount_target_is_refused() -> None:
    p = make_plan("kvm-apache2")
    bad = dataclasses.replace(p.mounts[1], target="/srv/a b")
    with pytest.raises(UserError, match="cannot be passed to a KVM sandbox"):
        domain_xml(dataclasses.replace(p, mounts=(*p.mounts, bad)), FACTS)


def test_interfaces_are_virtio_mmio_and_the_guest_finds_them_by_mac() -> None:
    from virt_sandbox_service.network import guest_mac

    doc = etree.fromstring(make("kvm-network").encode())
    ifaces = doc.findall("devices/interface")
    assert [i.find("source").get("network") for i in ifaces] == ["vssnet", "other"]
    assert all(i.find("model").get("type") == "virtio" for i in ifaces)
    assert all(i.find("address").get("type") == "virtio-mmio" for i in ifaces)
    assert all(i.find("ip") is None and i.find("route") is None for i in ifaces)
    derived = guest_mac("knet", 0, CASES["kvm-network"].networks[0])
    assert derived.startswith("52:54:00:") and derived != guest_mac(
        "knet2", 0, CASES["kvm-network"].networks[0])
    assert [i.find("mac").get("address") for i in ifaces] == [derived, "52:54:00:00:00:0b"]
    assert ifaces[0].find("filterref").get("filter") == "vss-listen-only"
    words = doc.findtext("os/cmdline", "").split()
    assert [w for w in words if w.startswith(("vss.net=", "vss.addr=", "vss.route="))] == [
        f"vss.net={derived}", f"vss.addr={derived},192.0.2.10/24,192.0.2.255",
        f"vss.addr={derived},2001:db8::10/64", f"vss.route={derived},0.0.0.0/0,192.0.2.1",
        "vss.net=52:54:00:00:00:0b,dhcp"]


def test_no_network_means_no_interface_and_no_network_words() -> None:
    for case in ("kvm-apache2", "kvm-generic", "kvm-run"):
        doc = etree.fromstring(make(case).encode())
        assert doc.find("devices/interface") is None
        assert "vss.net=" not in doc.findtext("os/cmdline", "")


def test_kvm_unit_sandbox_gets_no_lxc_style_networkd_files() -> None:
    """eth0-named files would match whatever the guest kernel called eth0; the guest init
    writes MAC-matched ones instead."""
    from virt_sandbox_service.plan import WriteFile

    written = [op.path for op in make_plan("kvm-network").files if isinstance(op, WriteFile)]
    assert not [p for p in written if "/systemd/network/" in p]


def test_virtiofs_root_where_the_host_has_virtiofsd() -> None:
    doc = etree.fromstring(make("kvm-virtiofs").encode())
    shares = doc.findall("devices/filesystem")
    root = shares[0]
    assert root.find("driver").get("type") == "virtiofs"
    assert root.find("binary").get("path") == VIRTIOFSD_RO  # read-only wrapper
    assert (root.find("source").get("dir"), root.find("target").get("dir")) == ("/", "vss0")
    assert all(f.find("driver") is None for f in shares[1:])  # the rest stays 9p
    assert doc.find("memoryBacking/access").get("mode") == "shared"
    args = [a.get("value") for a in doc.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert args == ["-global", "virtio-mmio.force-legacy=false"]
    words = doc.findtext("os/cmdline", "").split()
    assert "vss.mount=virtiofs,vss0,/,ro" in words and "vss.mount=9p,vss1,/etc,rw" in words
    plain = etree.fromstring(make("kvm-apache2").encode())
    assert plain.find("memoryBacking") is None and "virtiofs" not in make("kvm-apache2")


def test_virtiofs_choice_follows_the_host_and_can_be_turned_off() -> None:
    from virt_sandbox_service import host

    found = host.virtiofs_wrapper({})
    assert found in ("", str(host.VIRTIOFSD_RO))
    assert bool(found) == os.access(host.VIRTIOFSD, os.X_OK)
    assert host.virtiofs_wrapper({"VSS_KVM_ROOT_SHARE": "9p"}) == ""


def words(doc: etree._Element) -> list[str]:
    return doc.findtext("os/cmdline", "").split()


def test_limits_become_cputune_and_blkiotune() -> None:
    doc = etree.fromstring(make("kvm-limits-mounts").encode())
    assert doc.findtext("cputune/shares") == "512"
    # The whole VM's CPU time (libvirt's global quota), in percent of one CPU.
    assert (doc.findtext("cputune/global_period"), doc.findtext("cputune/global_quota")) \
        == ("100000", "50000")
    assert doc.findtext("blkiotune/weight") == "300"
    plain = etree.fromstring(make("kvm-apache2").encode())
    assert plain.find("cputune") is None and plain.find("blkiotune") is None


def test_capability_drops_reach_the_guest_init() -> None:
    doc = etree.fromstring(make("kvm-limits-mounts").encode())
    assert "vss.capdrop=net_raw,sys_module" in words(doc)
    assert doc.find("features/capabilities") is None  # libvirt's LXC caps: not for a VM
    run = etree.fromstring(make("kvm-run").encode())
    assert not [w for w in words(run) if w.startswith("vss.capdrop=")]


def test_host_image_is_a_disk_and_guest_bind_comes_last() -> None:
    doc = etree.fromstring(make("kvm-limits-mounts").encode())
    (disk,) = doc.iter("disk")
    assert disk.find("source").get("file") == "/var/tmp/data.img"
    assert disk.findtext("serial") == "vss-disk0" and disk.find("readonly") is None
    assert disk.find("driver").get("type") == "raw"
    assert "/var/tmp/data.img" not in [f.find("source").get("dir") for f in doc.iter("filesystem")]
    mounts = [w.split("=", 1)[1] for w in words(doc) if w.startswith("vss.mount=")]
    assert "disk,vss-disk0,/srv/img,rw" in mounts
    assert mounts[-1] == "bind,/var/lib/apache2,/opt"
    # 9p tags stay dense: the disk takes none.
    tags = [f.find("target").get("dir") for f in doc.iter("filesystem")]
    assert tags == [f"vss{i}" for i in range(len(tags))]


def test_image_of_the_private_trees_is_a_disk_put_on_etc_and_var() -> None:
    """-i: no 9p share of the private trees; the image is a disk mounted at IMAGE_MOUNT,
    what belongs under /etc and /var is mounted under it, then the guest binds its trees on
    /etc and /var, before the guest binds (which may use them)."""
    doc = etree.fromstring(make("kvm-apache2-image").encode())
    state = "/var/lib/virt-sandbox-service/kimg"
    sources = [f.find("source").get("dir") for f in doc.iter("filesystem")]
    assert f"{state}/etc" not in sources and f"{state}/var" not in sources
    disks = {d.findtext("serial"): d for d in doc.iter("disk")}
    private = [d for d in disks.values()
               if d.find("source").get("file") == f"{state}/private.img"]
    assert len(private) == 1 and private[0].find("readonly") is None
    driver = private[0].find("driver")
    assert (driver.get("type"), driver.get("cache"), driver.get("io")) == \
        ("raw", "writeback", "threads")
    serial = private[0].findtext("serial")
    other = next(d for d in disks.values() if d is not private[0])
    assert other.find("driver").get("cache") is None  # -m host-image disks as before
    mounts = [w.split("=", 1)[1] for w in words(doc) if w.startswith("vss.mount=")]
    at = mounts.index(f"disk,{serial},/run/sandbox-private,rw")
    run = next(i for i, m in enumerate(mounts) if m.startswith("tmpfs,") and m.endswith(",/run"))
    assert run < at  # on the guest's /run tmpfs
    inside = [m for m in mounts if "/run/sandbox-private/" in m]
    assert "hostro,/etc/alternatives,/run/sandbox-private/etc/alternatives" in inside
    assert "tmpfs,16384,/run/sandbox-private/var/cache/x" in inside
    assert all(at < mounts.index(m) < mounts.index("private,/run/sandbox-private")
               for m in inside)
    assert mounts[-2:] == ["private,/run/sandbox-private", "bind,/var/lib/apache2,/opt"]
    assert not any(m.endswith((",/etc,rw", ",/var,rw")) for m in mounts)


def test_login_console_beside_the_serial_one() -> None:
    for case in ("kvm-apache2", "kvm-generic"):
        doc = etree.fromstring(make(case).encode())
        consoles = [c.find("target").get("type") for c in doc.iter("console")]
        assert consoles == ["serial", "virtio"]
        assert doc.find("devices/console/target[@type='virtio']").get("port") == \
            kvm.LOGIN_CONSOLE_PORT
    run = etree.fromstring(make("kvm-run").encode())
    assert [c.find("target").get("type") for c in run.iter("console")] == ["serial"]


def test_limit_rewrites_a_defined_kvm_domain() -> None:
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    doc = etree.fromstring(make("kvm-apache2").encode())
    changed = dataclasses.replace(CASES["kvm-apache2"], memory=300 * 1024**2, cpu_weight=700,
                                  cpu_quota=30, blkio_weight=600)
    kvm.set_tunables(doc, changed)
    assert doc.findtext("memory") == str(300 * 1024)
    assert (doc.findtext("cputune/shares"), doc.findtext("cputune/global_quota"),
            doc.findtext("blkiotune/weight")) == ("700", "30000", "600")
    assert schema.validate(doc), schema.error_log.last_error
    kvm.set_tunables(doc, CASES["kvm-apache2"])  # back to none: the elements go
    assert doc.find("cputune") is None and doc.find("blkiotune") is None
    assert doc.findtext("memory") == str(kvm.DEFAULT_MEMORY_KIB)


def test_kvm_images_must_hold_ext_file_systems(tmp_path: Path) -> None:
    good = tmp_path / "ext.img"
    good.write_bytes(b"\0" * EXT_MAGIC_OFFSET + EXT_MAGIC + b"\0" * 100)
    check_kvm_image(str(good))
    bad = tmp_path / "zero.img"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(UserError, match="holds no ext2/3/4 file system"):
        check_kvm_image(str(bad))


def test_session_run_asks_nothing_of_root() -> None:
    """qemu:///session: qemu is the user's, so no relabel, 9p in 'squash' (plain reads as
    the user), no virtiofs even where the host has virtiofsd, and the command as the user."""
    facts = dataclasses.replace(FACTS, virtiofsd=VIRTIOFSD_RO, **SESSION_BOOT)
    doc = etree.fromstring(kvm_build_run(SESSION_RUN, facts, run_dir=SESSION_RUN_DIR,
                                         session=True).encode())
    assert [(s.get("type"), s.get("model"), s.get("relabel")) for s in doc.iter("seclabel")] \
        == [("none", None, None)]
    shares = list(doc.iter("filesystem"))
    assert [(f.get("accessmode"), f.find("source").get("dir"), f.find("readonly") is not None)
            for f in shares] == [("squash", "/", True)]
    assert doc.find("memoryBacking") is None
    assert all(c.find("source").get("path").startswith(f"{SESSION_RUN_DIR}/")
               for c in doc.iter("channel"))
    assert doc.findtext("os/kernel").startswith("/home/alice/.cache/virt-sandbox-service/")
    assert not list(doc.iter("interface"))
    args = [base64.b64decode(w.split("=", 1)[1]).decode() for w in words(doc)
            if w.startswith("vss.arg=")]
    assert args[:5] == ["/usr/bin/setpriv", "--reuid=1000", "--regid=1000", "--init-groups",
                        "--"]
    assert args[-1] == "/bin/id"


def test_system_run_keeps_root_qemu_and_passthrough() -> None:
    doc = etree.fromstring(make("kvm-run").encode())
    assert [s.get("model") for s in doc.iter("seclabel")] == ["dac"]
    assert [f.get("accessmode") for f in doc.iter("filesystem")] == ["passthrough"]


def test_the_services_own_generators_are_passed_to_the_guest_init() -> None:
    """The guest init masks every host generator but those named by vss.keepgen: the ones of
    the service's packages (kept_generators; postfix.service needs postfix's)."""
    cfg = config(units=("postfix.service",))
    gen = PathEvidence("/lib/systemd/system-generators/postfix-instance-generator",
                       Access.SHARED, False, ("a systemd generator of package postfix",))
    p = plan(cfg, FACTS, (ev("/var/spool/postfix"), gen), (),
             "/etc/virt-sandbox-service/sandboxes/kweb1.json", "/run/virt-sandbox-service/kweb1",
             (("postfix.service", "/lib/systemd/system/postfix.service"),))
    words = kvm.kernel_cmdline(p, FACTS, "service", ()).split()
    assert [w for w in words if w.startswith("vss.keepgen=")] == [
        "vss.keepgen=postfix-instance-generator"]
    words = kvm.kernel_cmdline(make_plan("kvm-apache2"), FACTS, "service", ()).split()
    assert not [w for w in words if w.startswith("vss.keepgen=")]
