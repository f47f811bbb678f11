"""A fresh instance made by the packages' own postinst (maintscripts.py): the pure parts, and
real sandboxes whose instance data and secrets are their own (plain) or the host's (-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from virt_sandbox_service import maintscripts
from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.evidence import Access, PathEvidence
from virt_sandbox_service.host import HostFacts
from virt_sandbox_service.plan import Mount, plan
from virt_sandbox_service.runtime.enter import InitProcess

from .conftest import Env, need, unique_name
from .systemd_host import setup_cgroups


def ev(path: str, is_dir: bool = True) -> PathEvidence:
    return PathEvidence(path, Access.PRIVATE, is_dir, ("package x (dpkg file list)",),
                        (0, 0), 0o755)


def test_script_configures_each_package_as_a_first_installation() -> None:
    text = maintscripts.script([("openssh-server", "openssh-server.postinst"),
                                ("x", "x:amd64.postinst")])
    assert "$S/dpkg/info/openssh-server.postinst configure ''" in text
    assert "DPKG_MAINTSCRIPT_PACKAGE=x $S/dpkg/info/x:amd64.postinst configure ''" in text
    for name in ("DPKG_ADMINDIR=$S/dpkg", "POLICYRCD=$S/policy-rc.d",
                 "DEBCONF_SYSTEMRC=$S/debconf.conf", "DEBIAN_FRONTEND=noninteractive"):
        assert name in text
    for stub in ("systemctl", "update-rc.d", "deb-systemd-helper", "dpkg-trigger"):
        # A link to the host's true: an enforcing SELinux host lets the sandbox execute
        # none of the files it writes itself.
        assert f"ln -s /bin/true $S/bin/{stub}" in text
    assert "x postinst failed" in text and "exit 1" in text
    assert "passwords.dat" not in text  # never the host's debconf passwords


def test_setup_plan_is_the_sandboxs_own_plus_the_databases() -> None:
    cfg = SandboxConfig(name="w", kind=Kind.SERVICE, uri="lxc:///", state_dir="/s/w",
                        units=("a.service",), etc_overlay=True)
    p = maintscripts.setup_plan(cfg, HostFacts(), (ev("/var/lib/a"),), (), "/run/x", "true",
                                "vss-setup-0a1b2c3d")
    assert p.config.kind is Kind.GENERIC and p.config.state_dir == "/s/w"
    mounts = {m.target: m for m in p.mounts}
    assert mounts[f"{maintscripts.SETUP}/dpkg"].source == "/var/lib/dpkg"
    assert mounts[f"{maintscripts.SETUP}/dpkg"].readonly
    assert mounts[f"{maintscripts.SETUP}/host-debconf"].readonly
    targets = [m.target for m in p.mounts]
    assert targets.index("/run") < targets.index(f"{maintscripts.SETUP}/dpkg")


def test_the_set_up_gets_a_throw_away_layer_on_the_hosts_usr() -> None:
    """What a postinst does to the host's installed files (mariadb-server's chmod under
    /usr/lib) lands in a tmpfs layer that ends with the domain; the sandbox itself has no
    such layer."""
    cfg = SandboxConfig(name="w", kind=Kind.SERVICE, uri="lxc:///", state_dir="/s/w",
                        units=("a.service",), etc_overlay=True)
    p = maintscripts.setup_plan(cfg, HostFacts(), (ev("/var/lib/a"),), (), "/run/x", "true",
                                "vss-setup-0a1b2c3d")
    script = p.init[2]
    layer = ("mount -t overlay -o lowerdir=/usr,upperdir=/run/.vss-scratch/usr/upper,"
             "workdir=/run/.vss-scratch/usr/work,")
    assert layer in script
    # After every mount of the plan's, before the set-up runs (confined, without the right
    # to mount).
    assert script.index("mount --move") < script.index(layer) < script.index("--caps")
    own = plan(cfg, HostFacts(), (ev("/var/lib/a"),), (), "", "/run/x")
    assert "vss-scratch" not in " ".join(own.init)


def test_scratch_layers_skip_links_and_trees_with_mounts_or_hidden_paths(tmp_path: Path
                                                                       ) -> None:
    for d in ("usr/bin", "opt/app", "srv"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")  # merged /usr
    trees = ("/usr", "/bin", "/opt", "/srv", "/lib64")
    hidden = (PathEvidence("/opt/app/key", Access.HIDDEN, False, ("secret",), (0, 0), 0o600),)
    mounts = (Mount("/srv/data", "/host/data", reason="a bind"),)
    assert maintscripts.scratch_trees(mounts, hidden, trees, str(tmp_path)) == ("/usr",)


def test_made_is_the_tops_of_what_appeared() -> None:
    before = {"/var/lib", "/etc/a"}
    after = before | {"/var/lib/x", "/var/lib/x/y", "/var/www/i.html", "/etc/ld.so.cache"}
    assert maintscripts.made(before, after) == ["/var/lib/x", "/var/www/i.html"]


def test_host_made_secrets_are_left_for_the_fresh_instance(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "svc" / "keys").mkdir(parents=True)
    (etc / "svc" / "svc.conf").write_text("x")
    (etc / "svc" / "host_key").write_text("k")
    os.chmod(etc / "svc" / "host_key", 0o600)
    (etc / "svc" / "packaged_secret").write_text("p")
    os.chmod(etc / "svc" / "packaged_secret", 0o640)
    os.chmod(etc / "svc" / "keys", 0o700)
    (etc / "svc" / "keys" / "k1").write_text("1")
    evidence = (ev("/etc/svc"), ev("/etc/svc/svc.conf", False),
                ev("/etc/svc/packaged_secret", False))
    found = {e.path for e in maintscripts.host_made_secrets(evidence, etc)}
    assert found == {"/etc/svc/host_key", "/etc/svc/keys"}  # not the packaged one


def _host_key(env: Env, name: str) -> str:
    out = env.run("execute", name, "--", "ssh-keyscan", "-t", "ed25519", "127.0.0.1",
                  check=True).stdout
    return out.split()[-1]


@pytest.mark.root
@pytest.mark.libvirt
def test_a_plain_instance_has_its_own_keys_and_data_and_c_the_hosts(env: Env) -> None:
    """ssh: a plain create's host keys are made by openssh-server's postinst in the
    sandbox, not the host's; with -C they are the host's. apache2: the default page its
    postinst installs is there, recorded as evidence."""
    need(Path("/lib/systemd/system/ssh.service").exists(),
         "openssh-server is installed by scripts/test-daemons.sh")
    host_key = Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
    fresh, copied = unique_name("fr"), unique_name("fc")
    env.run("create", "-u", "ssh.service", fresh, check=True)
    env.run("create", "-C", "-u", "ssh.service", copied, check=True)
    for name in (fresh, copied):
        env.run("start", "--detach", name, check=True, timeout=90)
    assert _host_key(env, fresh) != host_key
    assert _host_key(env, copied) == host_key
    web = unique_name("fw")
    env.run("create", "-u", "apache2.service", web, check=True)
    record = json.loads((env.state(web) / "evidence.json").read_text())
    made = {e["path"]: e["reasons"][0] for e in record["evidence"]}
    assert "postinst of apache2" in made["/var/www/html/index.html"]
    env.run("start", "--detach", web, check=True)
    page = env.run("execute", web, "--", "curl", "-s", "http://127.0.0.1/", check=True).stdout
    assert "Apache2 Debian Default Page" in page


@pytest.mark.root
@pytest.mark.libvirt
def test_a_failing_postinst_fails_the_create_with_its_output_and_leaves_nothing(
        env: Env, tmp_path: Path) -> None:
    """A package whose postinst fails: create fails naming it, with the script's output, and
    leaves nothing behind. The package is a tiny one built and installed here, removed after."""
    pkg = "vss-test-failing-postinst"
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "lib/systemd/system").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {pkg}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    (root / "DEBIAN/postinst").write_text(
        "#!/bin/sh\nif [ -e /var/tmp/.vss-allow ]; then exit 0; fi\n"
        "echo 'cannot initialise the frobnicator' >&2\nexit 4\n")
    os.chmod(root / "DEBIAN/postinst", 0o755)
    (root / f"lib/systemd/system/{pkg}.service").write_text(
        "[Service]\nExecStart=/bin/sleep infinity\n")
    deb = tmp_path / f"{pkg}.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)
    Path("/var/tmp/.vss-allow").touch()  # the host's own installation succeeds
    try:
        subprocess.run(["dpkg", "-i", str(deb)], check=True, capture_output=True)
        for d in ("config/sandboxes", "state", "units"):  # the tool's own, made at first use
            (env.base / d).mkdir(parents=True, exist_ok=True)
        before, cgroups = env.snapshot(), setup_cgroups()
        proc = env.run("create", "-u", f"{pkg}.service", unique_name("fp"))
        assert proc.returncode != 0
        assert "set-up of a fresh instance failed (exit 1)" in proc.stderr, proc.stderr
        assert f"{pkg} postinst failed" in proc.stderr
        assert "cannot initialise the frobnicator" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert env.snapshot() == before
        assert setup_cgroups() == cgroups  # the set-up sandbox's cgroups went with it
    finally:
        Path("/var/tmp/.vss-allow").unlink(missing_ok=True)
        subprocess.run(["dpkg", "--purge", pkg], check=False, capture_output=True)


@pytest.mark.root
@pytest.mark.libvirt
def test_a_set_up_sandbox_that_ends_before_its_script_fails_at_once(
        env: Env, tmp_path: Path) -> None:
    """Its init fails first (as a mount the LSM refuses does): create says so at once and
    names libvirt's log, instead of waiting maintscripts.TIMEOUT for a status never written
    (before, five minutes and "exit unknown")."""
    import dataclasses
    import time

    import libvirt

    from virt_sandbox_service import host
    from virt_sandbox_service.config import Paths, load_config
    from virt_sandbox_service.errors import HostError

    name = unique_name("early")
    env.run("create", name, "--", "/bin/true", check=True)
    cfg = load_config(Paths.from_env(env.vars), name)
    facts = host.detect()
    p = maintscripts.setup_plan(cfg, facts, (), (), str(tmp_path), "true",
                                maintscripts.setup_names(tmp_path, cfg.name)[1])
    p = dataclasses.replace(p, init=("/bin/sh", "-c", "exit 125"))
    conn = libvirt.open("lxc:///")
    try:
        t0 = time.monotonic()
        with pytest.raises(HostError) as e:
            maintscripts.run(conn, p, facts)
        took = time.monotonic() - t0
    finally:
        conn.close()
        env.run("delete", name)
    assert "ended before the set-up ran" in e.value.message, e.value.message
    assert f"/var/log/libvirt/lxc/{p.config.name}.log" in e.value.message
    assert took < maintscripts.TIMEOUT / 5, took  # it noticed the end, not the time-out


class _Domain:
    """Records what _end asks of libvirt (the real teardown's timing is libvirt's own)."""

    def __init__(self, active: bool) -> None:
        self.calls: list[str] = []
        self.active = active

    def isActive(self) -> int:
        self.calls.append("isActive")
        return int(self.active)

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.active = False


def _exited_init() -> InitProcess:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    init = InitProcess(os.pidfd_open(pid), pid)
    os.waitpid(pid, 0)
    return init


def _running_init() -> tuple[InitProcess, int]:
    pid = os.fork()
    if pid == 0:
        try:
            signal.pause()
        finally:
            os._exit(0)
    return InitProcess(os.pidfd_open(pid), pid), pid


def test_an_ended_set_up_is_not_waited_for_in_libvirt() -> None:
    """Its init has exited, so nothing of it runs: libvirt's own teardown of the transient
    domain (a 200 ms round on libvirt 9.0) is left to libvirt, not waited for."""
    dom = _Domain(active=True)
    maintscripts._end(dom, _exited_init(), 0.0)  # type: ignore[arg-type]
    assert dom.calls == []


def test_a_set_up_interrupted_while_its_init_runs_is_destroyed() -> None:
    dom = _Domain(active=True)
    init, pid = _running_init()
    try:
        maintscripts._end(dom, init, 0.0)  # type: ignore[arg-type]
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert dom.calls == ["isActive", "destroy", "isActive"]
    no_pidfd = _Domain(active=True)
    maintscripts._end(no_pidfd, None, 5.0)  # type: ignore[arg-type]
    assert no_pidfd.calls == ["isActive", "destroy", "isActive"]
