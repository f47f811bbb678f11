"""Reconcile (upgrade, limit): a sandbox's generated definitions re-derived from its config.

The sandboxes from before the confinement are made by that version's own code: a git
worktree of the last commit before it, run with this checkout's venv (PYTHONPATH). They are
then upgraded by this version, and must start confined with their data and the admin's
edits kept.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from virt_sandbox_service.limits import bounding_set, caps_from_mask
from virt_sandbox_service.reconcile import compare_domain, keep_identity
from virt_sandbox_service.runtime.enter import init_pid
from virt_sandbox_service.upgrade import CHECK_DRIFT

from .conftest import CLI, ROOT, Env, need, unique_name
from .test_image import short  # noqa: F401 (a fixture)
from .test_run import reachable

# The last commit before the confinement (287c6b1): its sandboxes' init runs systemd with
# CAP_SYS_ADMIN, and they have no loader files, no SysV stubs and no confinement drop-ins.
BEFORE_CONFINEMENT = "000b0e1"
ZZ = "etc/systemd/system/apache2.service.d/zz-virt-sandbox-service-confinement.conf"

# --- pure ------------------------------------------------------------------------------------

GENERATED = """<domain type="lxc"><name>w</name><memory unit="KiB">1024</memory>
<os><type>exe</type><init>/bin/sh</init><initarg>-c</initarg><initarg>echo new</initarg></os>
<devices><filesystem type="ram"><source usage="1" units="KiB"/><target dir="/tmp"/>
</filesystem><interface type="network"><source network="n"/></interface>
<console type="pty"><target type="lxc" port="0"/></console></devices></domain>"""
DEFINED = """<domain type='lxc'><name>w</name><uuid>0b2c1f5e-6d7a-4b0c-9e8f-1a2b3c4d5e6f</uuid>
<memory unit='KiB'>1024</memory><currentMemory unit='KiB'>1024</currentMemory>
<vcpu placement='static'>1</vcpu><os><type arch='x86_64'>exe</type><init>/bin/sh</init>
<initarg>-c</initarg><initarg>echo {init}</initarg></os><devices>
<emulator>/usr/lib/libvirt/libvirt_lxc</emulator>
<filesystem type='ram' accessmode='passthrough'><source usage='1' units='KiB'/>
<target dir='/tmp'/></filesystem><interface type='network'><mac address='52:54:00:aa:bb:cc'/>
<source network='n'/></interface><console type='pty'><target type='lxc' port='0'/></console>
</devices></domain>"""


def test_what_libvirt_adds_is_no_difference_and_its_identity_is_kept() -> None:
    xml, found = compare_domain("w", DEFINED.format(init="new"), GENERATED)
    assert found == []
    root = etree.fromstring(xml.encode())
    assert root.findtext("uuid") == "0b2c1f5e-6d7a-4b0c-9e8f-1a2b3c4d5e6f"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"


def test_libvirts_own_order_of_an_interface_and_its_cpu_defaults_are_no_difference() -> None:
    """Seen with a rate-limited KVM sandbox: libvirt moves <bandwidth> up before <target>,
    and writes host-passthrough's check and migratable defaults; neither is a difference.
    Two interfaces in the other order are."""
    iface = ('<interface type="network"><source network="n"/><target dev="vss1"/>'
             '<bandwidth><inbound average="512"/></bandwidth></interface>')
    generated = GENERATED.replace('<interface type="network"><source network="n"/></interface>',
                                  iface).replace("<devices>", '<cpu mode="host-passthrough"/>'
                                                 "<devices>")
    defined = DEFINED.format(init="new").replace(
        "<source network='n'/></interface>", "<source network='n'/><bandwidth><inbound "
        "average='512'/></bandwidth><target dev='vss1'/></interface>").replace(
        "<devices>", "<cpu mode='host-passthrough' check='none' migratable='on'/><devices>")
    assert compare_domain("w", defined, generated)[1] == []
    two = generated.replace(iface, iface + iface.replace("vss1", "vss2"))
    swapped = defined.replace("<target dev='vss1'/></interface>",
                              "<target dev='vss2'/></interface><interface type='network'>"
                              "<source network='n'/><target dev='vss1'/></interface>")
    assert [d.what for d in compare_domain("w", swapped, two)[1]] == ["domain"]


def test_an_older_init_and_a_missing_mount_are_differences() -> None:
    older = DEFINED.format(init="old").replace(
        "<target dir='/tmp'/></filesystem>", "<target dir='/tmp'/></filesystem>"
        "<filesystem type='mount'><source dir='/x'/><target dir='/y'/></filesystem>")
    _, found = compare_domain("w", older, GENERATED)
    assert [d.what for d in found] == ["init", "domain"]
    assert "-echo old\n+echo new\n" in found[0].diff
    assert '-      <target dir="/y"/>' in found[1].diff
    assert "echo" not in found[1].diff  # the init is shown once, on its own


def test_the_defined_uuid_is_kept_over_a_derived_one() -> None:
    derived = GENERATED.replace("<name>w</name>",
                                "<name>w</name><uuid>11111111-2222-4333-8444-555555555555</uuid>")
    xml, found = compare_domain("w", DEFINED.format(init="new"), derived)
    assert found == []
    assert etree.fromstring(xml.encode()).findtext("uuid") == \
        "0b2c1f5e-6d7a-4b0c-9e8f-1a2b3c4d5e6f"


def test_a_mac_the_config_gives_is_not_replaced() -> None:
    new = etree.fromstring(GENERATED.replace(
        '<source network="n"/>', '<mac address="52:54:00:00:00:01"/><source network="n"/>'
    ).encode())
    keep_identity(new, etree.fromstring(DEFINED.format(init="x").encode()))
    assert [m.get("address") for m in new.iter("mac")] == ["52:54:00:00:00:01"]


# --- against libvirt ---------------------------------------------------------------------------


def defined_xml(name: str, uri: str = "lxc:///") -> etree._Element:
    conn = libvirt.open(uri)
    try:
        xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        return etree.fromstring(xml.encode())
    finally:
        conn.close()


def sys_admin_in_init(name: str) -> bool:
    conn = libvirt.open("lxc:///")
    try:
        return "sys_admin" in caps_from_mask(bounding_set(init_pid(conn.lookupByName(name))))
    finally:
        conn.close()


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize("args", [("-u", "apache2.service", "NAME"),
                                  ("--etc", "copy", "-u", "apache2.service", "NAME"),
                                  ("-p", "SHORT", "-i", "64M", "NAME", "--", "/bin/sleep", "1")],
                         ids=["unit-overlay", "unit-copy", "generic-image"])
def test_a_sandbox_this_version_made_has_no_differences(
        env: Env, short: Path, args: tuple[str, ...]) -> None:  # noqa: F811 (the fixture)
    name = unique_name("rc")
    given = {"NAME": name, "SHORT": str(short)}
    env.run("create", *(given.get(a, a) for a in args), check=True)
    proc = env.run("upgrade", "--check", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{name}: definitions up to date" in proc.stdout


@pytest.mark.root
@pytest.mark.kvm
def test_a_kvm_sandbox_this_version_made_has_no_differences(env: Env) -> None:
    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    name = unique_name("rck")
    env.run("create", "-c", "qemu:///system", "-u", "apache2.service", name, check=True)
    proc = env.run("upgrade", "--check", "--json", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = json.loads(proc.stdout)
    assert report["definitions"]["differences"] == [] and report["drift"] is False


@pytest.mark.root
@pytest.mark.kvm
def test_a_kvm_sandbox_with_a_display_has_no_differences(env: Env) -> None:
    """create --graphics spice (vnc: tests/test_graphics.py's boot): libvirt adds the
    display's listen and port attributes, which are not differences."""
    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    name = unique_name("rcg")
    env.run("create", "-c", "qemu:///system", "--graphics", "spice", name, "--",
            "/usr/bin/xterm", check=True)
    try:
        proc = env.run("upgrade", "--check", "--json", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (report,) = json.loads(proc.stdout)
        assert report["definitions"]["differences"] == [] and report["drift"] is False
    finally:
        env.run("delete", name)


@pytest.fixture(scope="module")
def older() -> Iterator[Path]:
    """A worktree of the code from before the confinement (removed afterwards)."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e",
                            f"{BEFORE_CONFINEMENT}^{{commit}}"], capture_output=True)
    need(known.returncode == 0, f"needs the git history with {BEFORE_CONFINEMENT} "
         "(a full clone)")
    where = Path("/var/tmp") / f"vss-before-confinement-{os.getpid()}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where),
                    BEFORE_CONFINEMENT], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       capture_output=True)


def run_older(env: Env, tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """That version's command line, on the same tool paths as `env`."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          cwd=tree, env={**os.environ, **env.vars, "PYTHONPATH": str(tree)})
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


@pytest.mark.root
@pytest.mark.libvirt
def test_a_sandbox_from_before_the_confinement_is_upgraded(env: Env, older: Path) -> None:
    name = unique_name("old")
    run_older(env, older, "create", "-u", "apache2.service", name)
    state = env.state(name)
    # The instance's data and the admin's edits: a page, a conffile edit, a drop-in of the
    # admin's in the sandbox, and one on the host unit.
    (state / "var/www/html/mine.html").write_text("kept\n")
    with (state / "etc/apache2/ports.conf").open("a") as f:
        f.write("# admin's\n")
    admin_dropin = state / "etc/systemd/system/apache2.service.d/60-admin.conf"
    admin_dropin.write_text("[Service]\nEnvironment=ADMIN=1\n")
    host_dropin = env.base / "units" / f"{name}_sandbox.service.d" / "override.conf"
    host_dropin.parent.mkdir(parents=True)
    host_dropin.write_text("[Service]\nEnvironment=X=1\n")
    cfg_before = json.loads((env.base / "config/sandboxes" / f"{name}.json").read_text())
    # That version's sandbox runs its systemd with CAP_SYS_ADMIN: the hole to close.
    run_older(env, older, "start", "--detach", name)
    assert sys_admin_in_init(name)
    before = defined_xml(name)

    check = env.run("upgrade", "--check", name)
    assert check.returncode == CHECK_DRIFT, check.stdout + check.stderr
    assert f"{name}: differs: init {name}: the sandbox's init differs" in check.stdout
    assert "+/run/.vss-confine.py" not in check.stdout  # shown as the domain's mount:
    assert '+      <target dir="/run/.vss-confine.py"/>' in check.stdout
    assert f"differs: file {state / ZZ}: missing" in check.stdout
    assert f"differs: file {state}/loader/ld.so.preload: missing" in check.stdout
    # --check changed nothing.
    assert not (state / ZZ).exists() and not (state / "loader").exists()
    assert etree.tostring(defined_xml(name)) == etree.tostring(before)
    as_json = json.loads(env.run("upgrade", "--check", "--json", name).stdout)[0]
    assert as_json["drift"] is True and not as_json["definitions"]["applied"]
    assert {"init", "domain", "file", "directory"} <= {
        d["what"] for d in as_json["definitions"]["differences"]}

    done = env.run("upgrade", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{name}: updated init {name}" in done.stdout
    assert f"{name}: it is running: the new definitions take effect at its next start" \
        in done.stdout
    assert sys_admin_in_init(name)  # the running one kept its definition
    again = env.run("upgrade", "--check", name)
    assert f"{name}: definitions up to date" in again.stdout
    # Still exit 3: upgrade keeps showing the admin's conffile edit, and never replaces it.
    assert f"{name}: admin-edited /etc/apache2/ports.conf" in again.stdout
    assert again.returncode == CHECK_DRIFT
    after = defined_xml(name)
    assert after.findtext("uuid") == before.findtext("uuid")
    assert any(t.get("dir") == "/run/.vss-confine.py" for t in after.iter("target"))
    cfg_after = json.loads((env.base / "config/sandboxes" / f"{name}.json").read_text())
    assert cfg_after == cfg_before  # machine-id, label: the same

    env.run("stop", name, check=True)
    env.run("start", "--detach", name, check=True)
    assert not sys_admin_in_init(name)  # confined now
    denied = env.run("execute", name, "--", "/bin/mount", "-o", "remount,rw", "/")
    assert denied.returncode != 0
    page = env.run("execute", name, "--", "/bin/cat", "/var/www/html/mine.html", check=True)
    assert page.stdout == "kept\n"
    assert (state / "etc/apache2/ports.conf").read_text().endswith("# admin's\n")
    assert admin_dropin.read_text() == "[Service]\nEnvironment=ADMIN=1\n"
    assert host_dropin.read_text() == "[Service]\nEnvironment=X=1\n"
    assert "CapabilityBoundingSet=~" in (state / ZZ).read_text()
    env.run("stop", name, check=True)


@pytest.mark.root
@pytest.mark.libvirt
def test_limit_brings_an_older_sandbox_up_to_date(env: Env, older: Path) -> None:
    name = unique_name("oldl")
    run_older(env, older, "create", "-u", "apache2.service", name)
    proc = env.run("limit", name, "--cpu-weight", "700")
    assert proc.returncode == 0, proc.stderr
    assert f"'{name}' was made by an older version: its definitions were brought up to " \
        "date with the limits" in proc.stderr
    xml = defined_xml(name)
    assert xml.findtext("cputune/shares") == "700"
    assert any(t.get("dir") == "/run/.vss-confine.py" for t in xml.iter("target"))
    assert (env.state(name) / ZZ).is_file()
    cfg = json.loads((env.base / "config/sandboxes" / f"{name}.json").read_text())
    assert cfg["cpu_weight"] == 700
    assert env.run("upgrade", "--check", name).returncode == 0


@pytest.mark.root
@pytest.mark.kvm
def test_a_kvm_sandbox_from_before_the_confinement_is_upgraded(env: Env, older: Path) -> None:
    """That version's KVM sandbox: its domain points at that checkout's virtiofsd wrapper,
    its tree lacks the confinement drop-in and keeps the host's SysV boot links. After one
    upgrade it is up to date, and its next boot runs apache2 confined."""
    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    name = unique_name("oldk")
    run_older(env, older, "create", "-c", "qemu:///system", "-u", "apache2.service", name)
    state = env.state(name)
    check = env.run("upgrade", "--check", name)
    assert check.returncode == CHECK_DRIFT, check.stdout + check.stderr
    assert f"differs: file {state / ZZ}: missing" in check.stdout
    assert f"{name}: differs: domain {name}" in check.stdout
    assert not (state / ZZ).exists()  # --check changed nothing
    done = env.run("upgrade", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{name}: updated domain {name}" in done.stdout
    again = env.run("upgrade", "--check", name)
    assert again.returncode == 0 and f"{name}: definitions up to date" in again.stdout
    env.run("start", "--detach", name, check=True, timeout=300)
    try:
        shown = env.run("execute", name, "--", "/bin/systemctl", "show", "-p", "ActiveState",
                        "-p", "NoNewPrivileges", "apache2.service", check=True).stdout
        assert shown.split() == ["NoNewPrivileges=yes", "ActiveState=active"], shown
        status = env.run("execute", name, "--", "/bin/sh", "-c",
                         "cat /proc/$(cat /run/apache2/apache2.pid)/status", check=True).stdout
        bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        assert not bounding & (1 << 21), "CAP_SYS_ADMIN is still in apache2's bounding set"
    finally:
        env.run("stop", name, timeout=120)


def tamper(env: Env, name: str) -> etree._Element:
    """As if made by an older version: no confine.py mount, no confinement drop-in."""
    conn = libvirt.open("lxc:///")
    try:
        dom = conn.lookupByName(name)
        root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        for fs in root.findall("devices/filesystem"):
            if fs.find("target").get("dir") == "/run/.vss-confine.py":
                fs.getparent().remove(fs)
        conn.defineXML(etree.tostring(root, encoding="unicode"))
    finally:
        conn.close()
    (env.state(name) / ZZ).unlink()
    return defined_xml(name)


@pytest.mark.root
@pytest.mark.libvirt
def test_a_failed_upgrade_leaves_the_sandbox_as_it_was(env: Env) -> None:
    name = unique_name("rcf")
    env.run("create", "-u", "apache2.service", name, check=True)
    tampered = tamper(env, name)
    every = env.run("upgrade", "--check", "--all")
    assert every.returncode == CHECK_DRIFT, every.stdout + every.stderr
    assert f"{name}: differs: domain {name}" in every.stdout
    proc = subprocess.run([*CLI, "upgrade", name], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env.vars, "PYTHONPATH": str(ROOT),
                               "VSS_FAULT_AFTER": f"reconciled domain {name}"})
    assert proc.returncode != 0 and "injected fault" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (env.state(name) / ZZ).exists()  # made, then undone
    assert etree.tostring(defined_xml(name)) == etree.tostring(tampered)
    done = env.run("upgrade", name)
    assert done.returncode == 0 and f"updated file {env.state(name) / ZZ}" in done.stdout
    assert "it is running" not in done.stdout  # stopped: nothing waits for a start


@pytest.mark.root
@pytest.mark.libvirt
def test_check_and_apply_host_changes_are_refused_together(env: Env) -> None:
    name = unique_name("rcx")
    env.run("create", "-u", "apache2.service", name, check=True)
    proc = env.run("upgrade", "--check", "--apply-host-changes", name)
    assert proc.returncode != 0
    assert "--check changes nothing, --apply-host-changes changes conffiles" in proc.stderr


@pytest.mark.root
@pytest.mark.libvirt
def test_an_older_copied_etc_loses_the_hosts_boot_links_only(env: Env, older: Path) -> None:
    """A trimmed copy of /etc made before the SysV links were left out has the host's: the
    sandbox's systemd would start each host init script linked there. Those go; a link of
    the instance's own stays."""
    host_links = sorted(p.name for p in Path("/etc/rc3.d").iterdir() if p.is_symlink())
    need(bool(host_links), "needs SysV boot links in the host's /etc/rc3.d")
    name = unique_name("oldc")
    run_older(env, older, "create", "--etc", "copy", "-u", "apache2.service", name)
    rc3 = env.state(name) / "etc/rc3.d"
    assert sorted(p.name for p in rc3.iterdir()) == host_links  # copied then
    (rc3 / "S99mine").symlink_to("../init.d/mine")
    check = env.run("upgrade", "--check", name)
    assert check.returncode == CHECK_DRIFT
    assert f"differs: link {rc3 / host_links[0]}: the host's SysV boot link" in check.stdout
    assert "S99mine" not in check.stdout
    env.run("upgrade", name, check=True)
    assert [p.name for p in rc3.iterdir()] == ["S99mine"]
    assert env.run("upgrade", "--check", name).returncode == 0


@pytest.mark.root
@pytest.mark.libvirt
def test_something_not_the_tools_in_place_of_its_file_is_left_and_shown(env: Env) -> None:
    name = unique_name("rck")
    env.run("create", "-u", "apache2.service", name, check=True)
    zz = env.state(name) / ZZ
    zz.unlink()
    zz.mkdir()
    (zz / "admin").write_text("kept\n")
    done = env.run("upgrade", name)
    assert done.returncode == 0, done.stderr
    assert f"{name}: left as it is: file {zz}: a directory in its place" in done.stdout
    assert (zz / "admin").read_text() == "kept\n"
    assert env.run("upgrade", "--check", name).returncode == CHECK_DRIFT
