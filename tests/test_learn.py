"""learn: the units started once over copy-up overlays of the host's /etc, /var and /srv,
their opens observed with fanotify, recorded as evidence ("observed"), and what the sandbox
lacks shown and, with --add, added (virt_sandbox_service/learn.py). Real libvirtd, real
daemons; nothing of the run is left behind."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.learn import (
    STARTUP_LIMIT,
    Attribution,
    instance_has,
    interesting,
    nothing_seen,
    services_in,
    with_their_caps,
    would_add,
)
from virt_sandbox_service.limits import confined_caps
from virt_sandbox_service.plan import other_path
from virt_sandbox_service.unitfile import load_unit

from .conftest import Env, domain_names, need, unique_name

APACHE_OPENS = ("/etc/apache2/apache2.conf", "/etc/apache2/ports.conf",
                "/etc/apache2/envvars", "/var/log/apache2/error.log")


def test_a_process_is_judged_at_its_first_event_and_kept_after_it_exits() -> None:
    """A short-lived helper's write and close are often read after it has exited: its
    verdict, taken at its first event, still holds then. A process gone before its first
    event was read is nobody's."""
    alive = {10: True, 11: False}
    looked: list[int] = []

    def lookup(pid: int, _units: object) -> bool | None:
        looked.append(pid)
        return alive.get(pid)

    theirs = Attribution(["php8.2-fpm.service"], lookup)
    assert theirs(10) and not theirs(11) and not theirs(12)
    alive.clear()  # all have exited now
    assert theirs(10) and not theirs(11)
    assert looked == [10, 11, 12]


def test_would_add_what_no_private_path_covers_and_the_hidden_secrets() -> None:
    evidence: list[dict[str, object]] = [
        {"path": "/var/log/apache2", "access": "private", "reasons": ["package apache2"]},
        {"path": "/etc/apache2", "access": "private", "reasons": ["package apache2"]},
        {"path": "/var/www", "access": "shared"},
        {"path": "/var/lib", "access": "private", "reasons": ["needed by systemd in the sandbox"]}]
    hidden: list[dict[str, object]] = [{"path": "/etc/ssl/private"}]
    observed = ["/etc/apache2/apache2.conf", "/etc/mime.types", "/var/log/apache2/error.log",
                "/var/www/html/index.html", "/var/lib/x/db", "/var/lib/x/db/1",
                "/etc/ssl/private/k.key", "/srv/site/index.html"]
    assert would_add(observed, evidence, hidden) == [
        "/etc/ssl/private/k.key", "/srv/site/index.html", "/var/lib/x/db",
        "/var/www/html/index.html"]
    # What the instance has of its own (a fresh instance's keys) is never to add.
    mine = {"/etc/ssl/private/k.key", "/var/www/html/index.html"}
    assert would_add(observed, evidence, hidden, mine.__contains__) == [
        "/srv/site/index.html", "/var/lib/x/db"]
    # What the service wrote it makes itself (a log it appends to).
    assert would_add(observed, evidence, hidden, mine.__contains__, {"/var/lib/x/db"}) == [
        "/srv/site/index.html", "/var/lib/x/db/1"]


def test_the_instance_has_its_own_file_but_not_a_whiteout(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "needs root (mknod of a whiteout)")
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_ed25519_key").write_text("its own\n")
    os.mknod(tmp_path / "etc/ssh/ssh_host_rsa_key", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    assert instance_has(str(tmp_path), "/etc/ssh/ssh_host_ed25519_key")
    assert not instance_has(str(tmp_path), "/etc/ssh/ssh_host_rsa_key")
    assert not instance_has(str(tmp_path), "/etc/ssh/ssh_host_ecdsa_key")


def test_only_the_three_trees_and_not_systemds_plumbing_are_interesting() -> None:
    assert interesting("/etc/apache2/apache2.conf") and interesting("/srv/x")
    assert not interesting("/etc") and not interesting("/usr/lib/x")
    assert not interesting("/etc/ld.so.cache") and not interesting("/var/lib/systemd/x")
    assert not interesting("/etcetera/x")
    assert not interesting("/var/lib/dpkg/alternatives/php")  # the package manager's


def test_the_services_a_process_runs_in_from_its_cgroups() -> None:
    base = "0::/machine/lxc-1-web1.libvirt-lxc/sandbox/system.slice/"
    assert services_in(base + "apache2.service\n") == ["apache2.service"]
    assert services_in(base + "system-postfix.slice/postfix@-.service\n"
                       "4:memory:/machine/lxc-1-web1.libvirt-lxc\n") == ["postfix@-.service"]
    assert services_in("0::/machine/lxc-1-web1.libvirt-lxc/sandbox/init.scope\n") == []


def test_the_learning_run_gives_the_units_the_capabilities_they_ask_for(
        tmp_path: Path) -> None:
    """A unit whose own settings ask for a capability the sandbox lacks (mariadb's
    CAP_IPC_LOCK) fails at its start and opens nothing: the learning run, there to watch it
    at work, gives it, even one --cap-drop took away; the rest of the sandbox's set stays."""
    (tmp_path / "db.service").write_text("[Service]\nExecStart=/bin/true\n"
                                          "AmbientCapabilities=CAP_IPC_LOCK CAP_SYS_NICE\n")
    units = [load_unit("db.service", [tmp_path])]
    cfg = SandboxConfig(name="db1", kind=Kind.SERVICE, uri="lxc:///", state_dir="/x",
                        units=("db.service",), caps_drop=("sys_nice", "net_raw"))
    assert {"ipc_lock", "sys_nice"}.isdisjoint(confined_caps(cfg))
    run = with_their_caps(cfg, units)
    assert {"ipc_lock", "sys_nice"} <= set(confined_caps(run))
    assert "net_raw" not in confined_caps(run)
    assert set(confined_caps(run)) - {"ipc_lock", "sys_nice"} == set(confined_caps(cfg))


def leaves_nothing(env: Env) -> None:
    assert not [d for d in domain_names() if d.startswith("vss-learn-")]
    assert "-learn-" not in Path("/proc/self/mountinfo").read_text()
    run = env.base / "run"
    assert not list(run.glob(".*-learn-*"))


@pytest.mark.root
@pytest.mark.libvirt
def test_learn_observes_what_apache2_really_opens_and_records_it(env: Env) -> None:
    need(Path("/lib/systemd/system/apache2.service").exists(), "apache2 is installed")
    name = unique_name("lrn")
    env.run("create", "-u", "apache2.service", name, check=True)
    proc = env.run("learn", "--seconds", "4", name, check=True, timeout=120)
    for path in APACHE_OPENS:
        assert f"have  {path}\n" in proc.stdout, proc.stdout
    assert "nothing to add" in proc.stdout
    record = json.loads((env.state(name) / "evidence.json").read_text())
    by_path = {e["path"]: e for e in record["evidence"]}
    for path in APACHE_OPENS:
        assert "observed" in by_path[path]["reasons"]
    assert "/etc/passwd" not in by_path  # systemd's and libc's plumbing is left out
    shown = env.run("inspect", name, check=True).stdout
    assert "observed; package apache2 (dpkg file list); conffile of apache2" in shown
    leaves_nothing(env)


def _admin_unit(top: str) -> Iterator[tuple[str, Path]]:
    """An administrator's own unit on the host, whose service reads a file under `top` that
    no directive or package names: the static evidence cannot know it."""
    tag = unique_name("vsslearn")
    data = Path(top) / tag
    data.mkdir(mode=0o750)
    (data / "seed").write_text("seed-of-" + tag + "\n")
    unit = Path(f"/etc/systemd/system/{tag}.service")
    unit.write_text(f"[Service]\nExecStart=/bin/sh -c 'read x < {data}/seed && echo \"$x\" "
                    "&& exec sleep 1000'\n")
    yield f"{tag}.service", data
    unit.unlink()
    shutil.rmtree(data)


@pytest.fixture
def admin_unit() -> Iterator[tuple[str, Path]]:
    yield from _admin_unit("/var/lib")


@pytest.fixture
def admin_srv_unit() -> Iterator[tuple[str, Path]]:
    yield from _admin_unit("/srv")


@pytest.fixture
def admin_etc_unit() -> Iterator[tuple[str, Path]]:
    """Its file is a host secret (0600 under /etc): the sandbox hides it at create."""
    for unit, data in _admin_unit("/etc"):
        (data / "seed").chmod(0o600)
        (data / "other").write_text("not for the sandbox\n")
        data.chmod(0o700)
        yield unit, data


@pytest.mark.root
@pytest.mark.libvirt
def test_learn_finds_what_the_evidence_missed_and_add_makes_it_start(
        env: Env, admin_unit: tuple[str, Path]) -> None:
    unit, data = admin_unit
    name = unique_name("lrn")
    env.run("create", "-u", unit, name, check=True)
    failed = env.run("start", "--detach", name, timeout=120)
    assert failed.returncode != 0 and f"{unit} failed" in failed.stderr, failed.stderr
    shown = env.run("learn", "--seconds", "3", name, check=True, timeout=120).stdout
    assert f"add   {data}/seed" in shown, shown
    assert f"--private {data}/seed" in shown
    inspected = env.run("inspect", name, check=True).stdout
    assert "learned (opened by the service, missing here" in inspected
    assert f"  {data}/seed" in inspected.split("learned (")[1], inspected
    assert not (env.state(name) / "var" / data.relative_to("/") / "seed").exists()
    env.run("learn", "--seconds", "3", "--add", name, check=True, timeout=120)
    copied = env.state(name) / "var" / data.relative_to("/var") / "seed"
    assert copied.read_text() == (data / "seed").read_text()
    assert oct((copied.parent).stat().st_mode & 0o777) == "0o750"
    config = json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text())
    assert f"{data}/seed" in json.dumps(config)
    env.run("start", "--detach", name, check=True, timeout=120)
    out = env.run("execute", name, "--", "journalctl", "-u", unit, "--no-pager", check=True)
    assert f"seed-of-{data.name}" in out.stdout
    env.run("stop", name, check=True, timeout=120)
    leaves_nothing(env)


@pytest.mark.root
@pytest.mark.libvirt
def test_add_gives_what_the_service_lacks_under_srv_a_mount_of_its_own(
        env: Env, admin_srv_unit: tuple[str, Path]) -> None:
    """Outside /etc and /var the host root is read-only in the sandbox: --add copies the
    host's into the state and the domain binds it over the host's (through upgrade)."""
    unit, data = admin_srv_unit
    name = unique_name("lrs")
    env.run("create", "-u", unit, name, check=True)
    shown = env.run("learn", "--seconds", "3", "--add", name, check=True, timeout=180).stdout
    assert f"added {data}/seed" in shown and "with a mount of its own" in shown, shown
    copy = Path(other_path(str(env.state(name)), f"{data}/seed"))  # the top of what it read
    assert copy.read_text() == (data / "seed").read_text()
    # The sandbox reads its own copy from now on, not the host's (read-only to it before).
    (data / "seed").write_text("changed on the host\n")
    env.run("start", "--detach", name, check=True, timeout=120)
    out = env.run("execute", name, "--", "journalctl", "-u", unit, "--no-pager", check=True)
    assert f"seed-of-{data.name}" in out.stdout
    env.run("stop", name, check=True, timeout=120)
    leaves_nothing(env)


@pytest.mark.root
@pytest.mark.libvirt
def test_add_gives_a_hidden_host_secret_the_service_reads_a_copy_of_its_own(
        env: Env, admin_etc_unit: tuple[str, Path]) -> None:
    """A host secret under /etc that the service reads: hidden at create (so the start fails),
    shown as to add, and with --add the whiteout goes and the host's is copied into the
    private /etc, recorded as evidence so that the next start does not hide it again."""
    unit, data = admin_etc_unit
    name = unique_name("lre")
    env.run("create", "-u", unit, name, check=True)
    failed = env.run("start", "--detach", name, timeout=120)
    assert failed.returncode != 0, failed.stdout
    shown = env.run("learn", "--seconds", "3", "--add", name, check=True, timeout=180).stdout
    assert f"added {data}" in shown and "private /etc" in shown, shown
    env.run("start", "--detach", name, check=True, timeout=120)
    out = env.run("execute", name, "--", "journalctl", "-u", unit, "--no-pager", check=True)
    assert f"seed-of-{data.name}" in out.stdout
    # Only what it read: the hidden directory's other secret stays out of its sight.
    r = env.run("execute", name, "--", "ls", "-A", str(data))
    assert r.stdout.split() == ["seed"], r
    env.run("stop", name, check=True, timeout=120)
    leaves_nothing(env)


@pytest.mark.root
@pytest.mark.libvirt
def test_add_never_follows_a_link_the_sandbox_made(env: Env, admin_unit: tuple[str, Path],
                                                   tmp_path: Path) -> None:
    """The sandbox's root may leave a link in its private /var pointing at the host: --add
    refuses, copies nothing anywhere, and leaves the config as it was."""
    unit, data = admin_unit
    name = unique_name("lrl")
    env.run("create", "-u", unit, name, check=True)
    elsewhere = tmp_path / "host-dir"
    elsewhere.mkdir()
    (env.state(name) / "var" / data.relative_to("/var")).symlink_to(elsewhere)
    config = env.base / "config" / "sandboxes" / f"{name}.json"
    before = config.read_text()
    proc = env.run("learn", "--seconds", "3", "--add", name, timeout=120)
    assert proc.returncode != 0
    assert "is not a directory (a link the sandbox made?)" in proc.stderr, proc.stderr
    assert list(elsewhere.iterdir()) == []
    assert config.read_text() == before
    leaves_nothing(env)


@pytest.mark.root
@pytest.mark.libvirt
def test_learn_refuses_a_generic_sandbox_and_a_running_add(env: Env) -> None:
    name = unique_name("lrg")
    env.run("create", name, "--", "/bin/sleep", "1000", check=True)
    proc = env.run("learn", name)
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0] == (f"virt-sandbox-service: error: sandbox '{name}' "
                                           "runs a command, not units: there is no service "
                                           "to learn")
    missing = env.run("learn", "no-such-sandbox")
    assert missing.returncode != 0 and "no sandbox named 'no-such-sandbox'" in missing.stderr
    need(Path("/lib/systemd/system/apache2.service").exists(), "apache2 is installed")
    web = unique_name("lrw")
    env.run("create", "-u", "apache2.service", web, check=True)
    env.run("start", "--detach", web, check=True, timeout=120)
    before = (env.state(web) / "evidence.json").read_text()
    running = env.run("learn", "--add", web)
    assert running.returncode != 0 and "is running" in running.stderr
    assert (env.state(web) / "evidence.json").read_text() == before
    env.run("stop", web, check=True, timeout=120)


def test_learn_needs_no_dependency_beyond_the_standard_library() -> None:
    """fanotify through ctypes: nothing new to install."""
    text = (Path(__file__).parent.parent / "virt_sandbox_service" / "learn.py").read_text()
    imports = {line.split()[1] for line in text.splitlines()
               if line.startswith(("import ", "from ")) and not line.startswith("from .")}
    assert imports <= {"__future__", "contextlib", "ctypes", "dataclasses", "functools",
                       "json", "logging", "os",
                       "select", "shutil", "stat", "struct", "subprocess", "tempfile", "time",
                       "collections.abc", "pathlib", "libvirt"}


def test_a_run_that_saw_nothing_says_so_with_the_units_states() -> None:
    told = nothing_seen(["a.service", "b.service"],
                        ["a.service activating/start-pre", "b.service failed/failed"])
    assert told.startswith("a.service, b.service opened nothing under /etc, /var, /srv within "
                           f"{STARTUP_LIMIT:g} s of the learning run (their states there: "
                           "a.service activating/start-pre; b.service failed/failed)")
    assert "what learn reports is incomplete" in told
    assert "could not be asked" in nothing_seen(["a.service"], None)


@pytest.mark.root
@pytest.mark.libvirt
def test_a_unit_that_opens_nothing_is_reported_with_its_state(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A unit that opens nothing under the three trees (a static busybox's sleep) makes an
    empty record; learn warns, naming the unit and its state in the run, not a bare "0
    paths". Without the warning, the run's output alone cannot tell a quiet unit from one
    that never started."""
    from virt_sandbox_service import learn
    from virt_sandbox_service.config import Paths

    need(Path("/bin/busybox").exists(), "busybox-static is installed by scripts/setup.sh")
    tag = unique_name("vssquiet")
    unit = Path(f"/etc/systemd/system/{tag}.service")
    unit.write_text("[Service]\nExecStart=/bin/busybox sleep 1000\n")
    try:
        name = unique_name("lrq")
        env.run("create", "-u", unit.name, name, check=True)
        monkeypatch.setattr(learn, "STARTUP_LIMIT", 3.0)
        assert learn.command(Paths.from_env(env.vars), name, add=False, seconds=1) == 0
    finally:
        unit.unlink()
    assert f"{name}: {unit.name} opened 0 paths" in capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith(f"{unit.name} opened nothing under /etc, /var, /srv within 3 s")
               and f"their states there: {unit.name} active/running" in m
               for m in warned), warned
    leaves_nothing(env)
