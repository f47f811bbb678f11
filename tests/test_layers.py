"""The security layers: read from a running sandbox's processes (inspect), what this host
can give a sandbox (doctor, create's warning), and the MAC layers (AppArmor seclabel,
SELinux file labels)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from virt_sandbox_service import host, labels, layers
from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.domain.common import apparmor_label

from .conftest import Env, need, unique_name

STATUS = """\
Name:\tapache2
Umask:\t0022
State:\tS (sleeping)
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t20
CapInh:\t0000000000000000
CapPrm:\t00000000a00405fb
CapEff:\t00000000a00405fb
CapBnd:\t00000000a00405fb
CapAmb:\t0000000000000000
"""
CONFINED = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid",
            "setpcap", "net_bind_service", "sys_chroot", "audit_write", "setfcap")


# --- parsing /proc (pure) ----------------------------------------------------------------------


def test_status_text_becomes_the_layer_record() -> None:
    got = layers.parse_status(STATUS)
    assert got == layers.StatusLayers(CONFINED, CONFINED, 2, 20, True)


def test_status_of_an_unconfined_process_on_an_older_kernel() -> None:
    text = "Seccomp:\t0\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
    got = layers.parse_status(text)
    assert got.seccomp_mode == 0 and got.seccomp_filters is None  # no Seccomp_filters line
    assert not got.no_new_privs
    assert "sys_admin" in got.caps_effective and "checkpoint_restore" in got.caps_bounding


def test_status_parse_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="CapBnd"):
        layers.parse_status("Name:\tx\n")


def test_lsm_label_is_none_without_an_lsm() -> None:
    assert layers.lsm_label(None) == "none"  # the read failed (EINVAL: no LSM)
    assert layers.lsm_label(b"") == "none"
    assert layers.lsm_label(b"libvirt-0123 (enforce)\n") == "libvirt-0123 (enforce)"
    assert layers.lsm_label(b"system_u:system_r:svirt_lxc_net_t:s0:c1,c2\0") == \
        "system_u:system_r:svirt_lxc_net_t:s0:c1,c2"


def test_user_namespace_none_for_the_identity_map() -> None:
    assert layers.user_namespace("         0          0 4294967295\n") == "none"
    assert layers.user_namespace("0 1048576 65536\n") == "0 1048576 65536"
    assert layers.user_namespace("0 1000 1\n1 100000 65535\n") == "0 1000 1; 1 100000 65535"


@pytest.mark.parametrize(("text", "unit", "found"), [
    ("0::/machine/lxc-1-web.libvirt-lxc/sandbox/system.slice/apache2.service\n",
     "apache2.service", True),
    ("12:pids:/\n0::/machine/lxc-1-m.libvirt-lxc/sandbox/system.slice/"
     "system-postfix.slice/postfix@m.service\n", "postfix@m.service", True),
    ("0::/machine/lxc-1-web.libvirt-lxc/sandbox/init.scope\n", "apache2.service", False),
    ("0::/machine/lxc-1-web.libvirt-lxc/sandbox/system.slice/apache2.service.d\n",
     "apache2.service", False),
    ("0::/apache2.service\n", "apache2.service", False),  # not under system.slice
])
def test_a_unit_is_found_by_its_cgroup(text: str, unit: str, found: bool) -> None:
    assert layers.in_unit(text, unit) is found


def test_stopped_and_kvm_sandboxes_say_where_the_layers_are() -> None:
    cfg = SandboxConfig(name="w", kind=Kind.SERVICE, uri="lxc:///", state_dir="/s/w",
                        units=("a.service",))
    stopped = layers.live(None, cfg)
    assert stopped == {"live": False, "source": layers.STOPPED, "processes": [], "missing": []}
    assert layers.format_live(stopped) == [f"layers in force: {layers.STOPPED}"]
    kvm = layers.live(1, SandboxConfig(name="k", kind=Kind.GENERIC, uri="qemu:///system",
                                       state_dir="/s/k", command=("/bin/true",)))
    assert not kvm["live"] and "guest" in kvm["source"]


def test_this_process_reads_as_a_record() -> None:
    me = layers.read_process(os.getpid(), "init")
    assert me.pid == os.getpid() and me.command
    assert me.to_json()["role"] == "init"
    assert set(me.to_json()) == {"role", "unit", "pid", "command", "capabilities_effective",
                                 "capabilities_bounding", "seccomp_mode", "seccomp_filters",
                                 "no_new_privs", "lsm_label", "user_namespace"}


# --- the host's layers (pure) ------------------------------------------------------------------

USERNS = "libvirt's LXC driver cannot start user-namespaced containers here"


def test_this_kind_of_host_gets_the_warning() -> None:
    h = layers.HostLayers(seccomp=True, apparmor=False, selinux="disabled",
                          userns_problem=USERNS, libvirt_models=())
    assert h.protecting() == ["capabilities", "seccomp", "namespaces"]
    assert [m for m, _ in h.missing()] == ["AppArmor", "SELinux", "user namespaces"]
    assert layers.summary(h) == (
        "protected by capabilities, seccomp, namespaces; missing: AppArmor (not active in the "
        "kernel); SELinux (not enabled); user namespaces (not usable here)")
    assert layers.unprotected_warning(h, "web1") == (
        "sandbox 'web1' is confined only by capabilities, seccomp and namespaces: this host "
        "has no active LSM and no usable user namespaces, so its root is the host's root "
        "(missing: AppArmor, SELinux, user namespaces; 'virt-sandbox-service doctor' says why)")


@pytest.mark.parametrize(("h", "lsm"), [
    (layers.HostLayers(True, True, "disabled", USERNS, ("apparmor",)), ("AppArmor",)),
    (layers.HostLayers(True, True, "disabled", USERNS, None), ("AppArmor",)),
    (layers.HostLayers(True, False, "enforcing", USERNS, ("selinux",)), ("SELinux",)),
])
def test_an_lsm_libvirt_uses_means_no_warning(h: layers.HostLayers,
                                               lsm: tuple[str, ...]) -> None:
    assert h.lsm == lsm
    assert layers.unprotected_warning(h, "w") is None


def test_lsm_not_used_or_not_enforcing_is_missing() -> None:
    h = layers.HostLayers(True, True, "permissive", USERNS, ("dac",))
    assert dict(h.missing())["AppArmor"] == "active, but not used by libvirt's LXC driver"
    assert dict(h.missing())["SELinux"] == "permissive: not enforced"
    assert layers.unprotected_warning(h, "w") is not None


def test_usable_user_namespaces_mean_no_warning() -> None:
    h = layers.HostLayers(True, False, "disabled", None, ())
    assert "user namespaces (--userns)" in h.protecting()
    assert layers.unprotected_warning(h, "w") is None


def test_no_libseccomp_is_missing_seccomp() -> None:
    h = layers.HostLayers(False, False, "disabled", USERNS, ())
    assert "seccomp" not in h.protecting()
    assert "cannot start" in dict(h.missing())["seccomp"]
    assert "only by capabilities and namespaces" in (layers.unprotected_warning(h, "w") or "")


def test_libvirt_security_models_from_its_capabilities() -> None:
    caps = ("<capabilities><host><secmodel><model>apparmor</model><doi>0</doi></secmodel>"
            "<secmodel><model>dac</model><doi>0</doi></secmodel></host></capabilities>")
    assert host.secmodels_from_caps(caps) == ("apparmor", "dac")
    none = "<capabilities><host><secmodel><model>none</model></secmodel></host></capabilities>"
    assert host.secmodels_from_caps(none) == ()


def test_this_hosts_layers_are_read() -> None:
    h = layers.host_layers()
    assert h.libvirt_models is None
    assert h.selinux in ("enforcing", "permissive", "disabled")
    assert h.protecting()[0] == "capabilities"


# --- AppArmor seclabel (pure, checked against the schema and libvirt's parser) -----------------

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")


def test_apparmor_label_only_where_libvirt_has_the_model() -> None:
    assert apparmor_label(()) is None
    assert apparmor_label(("selinux", "dac")) is None
    el = apparmor_label(("apparmor", "dac"))
    assert el is not None
    assert etree.tostring(el) == b'<seclabel type="dynamic" model="apparmor" relabel="yes"/>'
    static = apparmor_label(("apparmor",), profile="vss-lxc")
    assert static is not None and static.findtext("label") == "vss-lxc"
    assert static.get("type") == "static" and static.get("relabel") == "no"


@pytest.mark.parametrize("profile", [None, "vss-lxc"])
def test_apparmor_label_validates_in_an_lxc_domain(profile: str | None) -> None:
    from virt_sandbox_service.domain import domain_xml
    from virt_sandbox_service.host import HostFacts
    from virt_sandbox_service.plan import plan

    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} missing: install libvirt-daemon-system (scripts/setup.sh)")
    cfg = SandboxConfig(name="web1", kind=Kind.SERVICE, uri="lxc:///",
                        state_dir="/var/lib/virt-sandbox-service/web1",
                        units=("apache2.service",),
                        security_label="system_u:system_r:svirt_lxc_net_t:s0:c12,c345")
    facts = HostFacts()
    p = plan(cfg, facts, (), (), "/etc/virt-sandbox-service/sandboxes/web1.json",
             "/run/virt-sandbox-service/web1", (("apache2.service",
                                                 "/lib/systemd/system/apache2.service"),))
    doc = etree.fromstring(domain_xml(p, facts).encode())
    label = apparmor_label(("apparmor",), profile)
    assert label is not None
    doc.append(label)
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    assert schema.validate(doc), schema.error_log.last_error


def test_libvirt_accepts_the_dynamic_label_and_refuses_relabel_no() -> None:
    """Why relabel='yes': libvirt's own parser (here its test driver) refuses a dynamic label
    with relabel='no'."""
    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open("test:///default")
    name = unique_name("aa")

    def domain(label: etree._Element) -> str:
        dom = etree.fromstring(f"<domain type='test'><name>{name}</name><memory>65536</memory>"
                               "<os><type>hvm</type></os></domain>")
        dom.append(label)
        return etree.tostring(dom, encoding="unicode")

    ours = apparmor_label(("apparmor",))
    assert ours is not None
    conn.defineXML(domain(ours)).undefine()
    ours.set("relabel", "no")
    with pytest.raises(libvirt.libvirtError, match="dynamic label type must use resource"):
        conn.defineXML(domain(ours))
    conn.close()


# --- inspect and create on this host (root, libvirt) -------------------------------------------


def confined_records(env: Env, name: str, wait: float = 10.0) -> dict[str, Any]:
    """inspect --json's layers of a just-started sandbox (its command may take a moment)."""
    deadline = time.monotonic() + wait
    while True:
        info = json.loads(env.run("inspect", "--json", name, check=True).stdout)
        section: dict[str, Any] = info["layers"]
        if not section["missing"] or time.monotonic() > deadline:
            return section
        time.sleep(0.2)


@pytest.mark.root
@pytest.mark.libvirt
def test_inspect_shows_the_layers_in_force(env: Env) -> None:
    unit, gen = unique_name("lyu"), unique_name("lyg")
    env.run("create", "-u", "apache2.service", unit, check=True)
    env.run("create", gen, "--", "/bin/sleep", "300", check=True)
    stopped = json.loads(env.run("inspect", "--json", unit, check=True).stdout)["layers"]
    assert not stopped["live"] and stopped["processes"] == []
    assert "shown while it runs" in env.run("inspect", unit, check=True).stdout
    for name in (unit, gen):
        env.run("start", "--detach", name, check=True)
    for name, expected in ((unit, "apache2.service"), (gen, None)):
        section = confined_records(env, name)
        assert section["live"] and section["missing"] == [], section
        roles = [p["role"] for p in section["processes"]]
        assert roles == ["init", "confined"], roles
        confined = section["processes"][1]
        assert confined["unit"] == expected
        assert confined["command"] == ("apache2" if expected else "sleep")
        assert "sys_admin" not in confined["capabilities_effective"]
        assert "sys_admin" not in confined["capabilities_bounding"]
        assert confined["seccomp_mode"] == 2 and confined["seccomp_filters"] >= 1
        assert confined["user_namespace"] == "none"
        if not (host.apparmor_enabled() or host.selinux_enabled()):
            assert confined["lsm_label"] == "none"
        text = env.run("inspect", name, check=True).stdout
        assert "layers in force (live: read from the running processes, not the config):" \
            in text
        assert f"pid {confined['pid']}" in text
    # The unit's main process, not one of its workers: its parent is the sandbox's systemd.
    unit_procs = confined_records(env, unit)["processes"]
    ppid = Path(f"/proc/{unit_procs[1]['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1]
    assert int(ppid) == unit_procs[0]["pid"]


@pytest.mark.root
@pytest.mark.libvirt
def test_create_warns_when_no_lsm_and_no_user_namespaces(env: Env) -> None:
    name = unique_name("lyw")
    proc = env.run("create", name, "--", "/bin/true")
    assert proc.returncode == 0, proc.stderr
    warning = (f"virt-sandbox-service: warning: sandbox '{name}' is confined only by "
               "capabilities, seccomp and namespaces: this host has no active LSM and no "
               "usable user namespaces")
    import libvirt

    conn = libvirt.open("lxc:///")
    unprotected = layers.host_layers(host.libvirt_secmodels(conn)).unprotected()
    conn.close()
    if unprotected:
        assert warning in proc.stderr
        lines = [x for x in proc.stderr.splitlines() if "confined only by" in x]
        assert len(lines) == 1
    else:
        assert "confined only by" not in proc.stderr
    dry = env.run("create", "--dry-run", unique_name("lyd"), "--", "/bin/true")
    assert dry.returncode == 0
    assert ("confined only by" in dry.stderr) is unprotected


# --- SELinux file labels ------------------------------------------------------------------------

LXC_CONTEXTS = """\
process = "system_u:system_r:container_t:s0"
content = "system_u:object_r:virt_var_lib_t:s0"
file = "system_u:object_r:container_file_t:s0"
ro_file = "system_u:object_r:container_ro_file_t:s0"
"""
LABEL = "system_u:system_r:svirt_lxc_net_t:s0:c12,c345"


def test_the_file_type_comes_from_the_platform() -> None:
    from virt_sandbox_service.config import Driver

    assert labels.context_entry(LXC_CONTEXTS, "file") == "system_u:object_r:container_file_t:s0"
    assert labels.context_entry(LXC_CONTEXTS, "nope") is None
    assert labels.sandbox_file_type(Driver.LXC, LXC_CONTEXTS) == "container_file_t"
    assert labels.sandbox_file_type(Driver.LXC, "") == "svirt_sandbox_file_t"  # no file
    assert labels.sandbox_file_type(Driver.KVM, "system_u:object_r:svirt_image_t:s0\n") == \
        "svirt_image_t"
    assert labels.file_context(LABEL, "container_file_t") == \
        "system_u:object_r:container_file_t:s0:c12,c345"
    assert labels.file_context("system_u:system_r:t:s0", "x_t") == "system_u:object_r:x_t:s0"
    assert labels.file_context("nonsense", "x_t") is None


def test_which_trees_get_which_label() -> None:
    cfg = SandboxConfig(name="w", kind=Kind.SERVICE, uri="lxc:///", state_dir="/s/w",
                        security_label=LABEL)
    ctx = "system_u:object_r:container_file_t:s0:c12,c345"
    assert labels.tree_contexts(cfg, LXC_CONTEXTS) == [
        ("/s/w/etc", ctx), ("/s/w/var", ctx), ("/s/w/paths", ctx), ("/s/w/mounts", ctx),
        ("/s/w/home", ctx), ("/s/w/.etc-work", ctx)]


def test_selinux_policy_root_from_its_config() -> None:
    assert host.selinux_policy_root("SELINUX=permissive\nSELINUXTYPE=default\n") == \
        Path("/etc/selinux/default")
    assert host.selinux_policy_root("SELINUXTYPE=mls\n") == Path("/etc/selinux/mls")
    assert host.selinux_policy_root("") == Path("/etc/selinux/default")


def root_writes_security_xattrs(probe: Path) -> bool:
    try:
        os.setxattr(probe, "security.selinux", b"system_u:object_r:container_file_t:s0\0")
    except OSError:
        return False
    return True


def xattr(path: Path) -> bytes:
    return os.getxattr(path, "security.selinux", follow_symlinks=False)


@pytest.mark.root
def test_labelling_reaches_every_file_and_symlinks_themselves(tmp_path: Path) -> None:
    from virt_sandbox_service.apply import labels as file_labels

    need(root_writes_security_xattrs(tmp_path), "root cannot write security.* xattrs here")
    (tmp_path / "outside").write_text("x")
    before = xattr_or_none(tmp_path / "outside")
    tree = tmp_path / "etc"
    (tree / "apache2" / "sites").mkdir(parents=True)
    (tree / "apache2" / "apache2.conf").write_text("x\n")
    (tree / "hostname").write_text("w\n")
    os.symlink(tmp_path / "outside", tree / "link-out")
    os.symlink("nowhere", tree / "apache2" / "dangling")
    os.mkfifo(tree / "fifo")
    ctx = "system_u:object_r:container_file_t:s0:c12,c345"
    count = file_labels.label_trees([(str(tree), ctx), (str(tmp_path / "absent"), ctx)])
    every = [tree, *tree.rglob("*")]
    assert count == len(every) == 8
    for p in every:
        assert xattr(p) == ctx.encode() + b"\0", p
    assert xattr_or_none(tmp_path / "outside") == before  # the symlink's target: its own


@pytest.mark.root
@pytest.mark.libvirt
def test_a_created_sandbox_trees_get_its_label(env: Env) -> None:
    from virt_sandbox_service.apply import labels as file_labels
    from virt_sandbox_service.config import Paths, load_config

    name = unique_name("lyl")
    env.run("create", "-u", "apache2.service", name, check=True)
    need(root_writes_security_xattrs(env.state(name) / "etc" / "hostname"),
         "root cannot write security.* xattrs here")
    cfg = load_config(Paths.from_env(env.vars), name)
    assert file_labels.label_private_trees(cfg, selinux=False) == 0  # no SELinux: nothing
    record = xattr_or_none(env.state(name) / "evidence.json")
    assert file_labels.label_private_trees(cfg, selinux=True) > 10
    ctx = labels.file_context(cfg.security_label, labels.sandbox_file_type(
        cfg.driver, host.sandbox_file_context_text(kvm=False)))
    assert ctx is not None
    for p in ("etc", "etc/hostname", "var", "var/lib/apache2"):
        assert xattr(env.state(name) / p) == ctx.encode() + b"\0", p
    assert xattr_or_none(env.state(name) / "evidence.json") == record  # the tool's own record
    assert xattr_or_none(env.state(name)) != ctx.encode() + b"\0"


def xattr_or_none(path: Path) -> bytes | None:
    try:
        return xattr(path)
    except OSError:
        return None


@pytest.mark.root
@pytest.mark.libvirt
def test_clone_labels_its_trees_with_its_own_pair(env: Env,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """create and clone share apply_plan, which labels the private trees where SELinux is
    enabled: pretend it is (for the labelling only), and the clone's files carry the clone's
    MCS pair, not its source's."""
    from virt_sandbox_service.apply import labels as file_labels
    from virt_sandbox_service.clone import CloneRequest, clone
    from virt_sandbox_service.config import Paths, load_config

    src, dst = unique_name("lys"), unique_name("lyc")
    env.run("create", "-u", "apache2.service", src, check=True)
    need(root_writes_security_xattrs(env.state(src) / "etc" / "hostname"),
         "root cannot write security.* xattrs here")
    real = file_labels.label_private_trees
    monkeypatch.setattr(file_labels, "label_private_trees",
                        lambda cfg, selinux=None: real(cfg, selinux=True))
    paths = Paths.from_env(env.vars)
    clone(CloneRequest(src, dst), paths)
    cfg = load_config(paths, dst)
    ctx = labels.file_context(cfg.security_label, labels.sandbox_file_type(
        cfg.driver, host.sandbox_file_context_text(kvm=False)))
    assert ctx is not None and cfg.security_label != load_config(paths, src).security_label
    for p in ("etc/hostname", "etc/apache2/apache2.conf", "var/lib/apache2"):
        assert xattr(env.state(dst) / p) == ctx.encode() + b"\0", p


def test_inspect_names_the_user_namespace_of_a_userns_sandbox() -> None:
    """inspect used to say "none" for a sandbox created with --userns (issue 17)."""
    from virt_sandbox_service.manage import _userns_text

    assert _userns_text(None).startswith("none (root inside is root on the host)")
    text = _userns_text({"host_id_start": 1 << 20, "count": 65536})
    assert text == "root inside is host uid/gid 1048576 (ids 1048576..1114111)"
