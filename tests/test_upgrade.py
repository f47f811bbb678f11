"""upgrade: config migrations, newly needed private paths, conffile drift.

The host's files are never changed here: a changed host conffile is simulated by pointing
upgrade's HostView at a modified copy, and new package evidence by a package database whose
file list has one entry more.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from virt_sandbox_service import evidence, upgrade
from virt_sandbox_service.apply import tree
from virt_sandbox_service.conffiles import (
    MISSING,
    FileState,
    HostView,
    conffile_paths,
    parse_dpkg_conffiles,
)
from virt_sandbox_service.config import FORMAT_VERSION, Kind, Paths, SandboxConfig
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.evidence import Access, PathEvidence
from virt_sandbox_service.plan import other_path
from virt_sandbox_service.upgrade import Drift, classify, diff_text, migrate, new_private_paths

from .conftest import Env, unique_name

# --- pure -----------------------------------------------------------------------------------------


def test_migrations_cover_every_older_format() -> None:
    assert sorted(upgrade.MIGRATIONS) == list(range(1, FORMAT_VERSION))


def test_migrate_runs_each_step_and_refuses_newer_formats() -> None:
    data = {"name": "a", "format_version": 1}
    assert migrate(dict(data), "cfg") == (data, 1)  # current: nothing to do
    table = {1: lambda d: {"renamed": d["name"], "format_version": 1},
             2: lambda d: {**d, "added": True}}
    out, written = migrate(dict(data), "cfg", table, current=3)
    assert (out, written) == ({"renamed": "a", "format_version": 3, "added": True}, 1)
    with pytest.raises(UserError, match=r"cfg has format version 4, newer than this "
                                        r"virt-sandbox-service knows \(3\)"):
        migrate({"format_version": 4}, "cfg", table, current=3)
    with pytest.raises(UserError, match="no migration from format version 2"):
        migrate({"format_version": 2}, "cfg", {}, current=3)
    with pytest.raises(UserError, match="is not a format version"):
        migrate({"format_version": "1"}, "cfg")


def test_upgrade_refuses_a_config_from_a_newer_version(env: Env) -> None:
    cfg = SandboxConfig(name="new1", kind=Kind.SERVICE, uri="lxc:///",
                        state_dir=str(env.state("new1")), units=("apache2.service",))
    data = json.loads(cfg.to_json())
    data["format_version"] = FORMAT_VERSION + 1
    sandboxes = env.base / "config" / "sandboxes"
    sandboxes.mkdir(parents=True)
    (sandboxes / "new1.json").write_text(json.dumps(data))
    proc = env.run("upgrade", "new1")
    assert proc.returncode == 2
    assert f"has format version {FORMAT_VERSION + 1}, newer than this" in proc.stderr
    assert "upgrade virt-sandbox-service" in proc.stderr
    proc = env.run("upgrade", "--all", "--json")
    assert proc.returncode == 1
    assert "newer than this" in json.loads(proc.stdout)[0]["error"]
    (sandboxes / "new1.json").unlink()


def test_upgrade_needs_a_name_or_all(env: Env) -> None:
    for args in ((), ("--all", "x")):
        proc = env.run("upgrade", *args)
        assert proc.returncode == 2 and "give a sandbox NAME or --all" in proc.stderr


OLD, NEW, EDIT = FileState(b"a\n"), FileState(b"b\n"), FileState(b"a\nmine\n")


def md5(side: FileState) -> str:
    assert side.md5 is not None
    return side.md5


@pytest.mark.parametrize(("instance", "host", "given", "known", "packaged", "want"), [
    (OLD, OLD, md5(OLD), True, None, Drift.UNCHANGED),
    (OLD, NEW, md5(OLD), True, md5(NEW), Drift.HOST_CHANGED),  # a package upgrade
    (OLD, NEW, None, True, md5(OLD), Drift.HOST_CHANGED),  # host edited; instance pristine
    (OLD, NEW, None, True, md5(NEW), Drift.ADMIN_EDITED),  # no record: cannot tell
    (EDIT, OLD, md5(OLD), True, md5(OLD), Drift.ADMIN_EDITED),
    (EDIT, NEW, md5(OLD), True, md5(NEW), Drift.BOTH_CHANGED),
    (MISSING, NEW, None, False, None, Drift.HOST_ADDED),
    (MISSING, NEW, md5(OLD), True, None, Drift.INSTANCE_REMOVED),
    (MISSING, NEW, None, True, None, Drift.INSTANCE_REMOVED),  # no record: the admin's choice
    (OLD, MISSING, md5(OLD), True, None, Drift.HOST_REMOVED),
    (MISSING, MISSING, None, True, None, Drift.UNCHANGED),
    (FileState(None, "symlink to /x"), OLD, md5(OLD), True, None, Drift.ADMIN_EDITED),
])
def test_classify(instance: FileState, host: FileState, given: str | None, known: bool,
                  packaged: str | None, want: Drift) -> None:
    assert classify(instance, host, given, known, packaged) is want


def test_diff_is_host_to_instance() -> None:
    text = diff_text("/etc/x.conf", "web1", FileState(b"a\nb\n"), FileState(b"a\nc"))
    assert text.splitlines() == [
        "--- host:/etc/x.conf", "+++ web1:/etc/x.conf", "@@ -1,2 +1,2 @@", " a", "-b", "+c",
        "\\ No newline at end of file"]
    assert diff_text("/etc/x", "w", FileState(b"a\n"), FileState(b"a\n")) == ""
    assert diff_text("/etc/x", "w", FileState(b"\0"), FileState(b"1")) == \
        "Binary files host:/etc/x and w:/etc/x differ\n"
    added = diff_text("/etc/x", "w", FileState(b"new\n"), MISSING)
    assert added.startswith("w:/etc/x: missing\n--- host:/etc/x\n+++ /dev/null\n")
    link = diff_text("/etc/x", "w", FileState(b"a\n"), FileState(None, "symlink to /y"))
    assert link.startswith("w:/etc/x: symlink to /y\n")


def test_dpkg_conffiles_of_installed_packages() -> None:
    status = (
        "Package: a\nStatus: install ok installed\nConffiles:\n"
        " /etc/a.conf 0123456789abcdef0123456789abcdef\n"
        " /etc/moved.conf 11111111111111111111111111111111 obsolete\n"
        " /etc/fresh.conf newconffile\nDescription: x\n continuation /etc/not\n\n"
        "Package: b\nStatus: install ok installed\nConffiles:\n"
        " /etc/moved.conf 22222222222222222222222222222222\n\n"
        "Package: c\nStatus: deinstall ok config-files\nConffiles:\n"
        " /etc/c.conf 33333333333333333333333333333333\n")
    assert parse_dpkg_conffiles(status) == {
        "/etc/a.conf": "0123456789abcdef0123456789abcdef",
        "/etc/moved.conf": "22222222222222222222222222222222"}


def ev(path: str, *reasons: str, access: Access = Access.PRIVATE,
       is_dir: bool = True) -> PathEvidence:
    return PathEvidence(path, access, is_dir, reasons)


def test_conffile_paths_and_new_private_paths() -> None:
    found = [ev("/etc/a/a.conf", "package a (dpkg file list)", "conffile of a", is_dir=False),
             ev("/etc/ssl/certs/x.pem", "conffile of ca", is_dir=False),  # bound from the host
             ev("/etc/b.conf", "conffile of b", access=Access.SHARED, is_dir=False),
             ev("/var/lib/a", "StateDirectory= in a.service"),
             ev("/var/lib/b", "package b (dpkg file list)"),
             ev("/var/lib/c", "package c (dpkg file list)")]
    assert conffile_paths(found) == [("/etc/a/a.conf", "a")]
    fresh = new_private_paths(found, {"/var/lib/a"},
                              lambda p: p == "/var/lib/c" or p.startswith("/etc/"))
    assert [e.path for e in fresh] == ["/var/lib/b"]
    assert [e.path for e in new_private_paths(found, None, lambda p: True)] == []


def test_tree_never_follows_a_symlink_the_sandbox_made(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret"
    outside.mkdir()
    (outside / "key").write_text("secret\n")
    base = tmp_path / "etc"
    base.mkdir()
    (base / "apache2").symlink_to(outside)
    (base / "link.conf").symlink_to(outside / "key")
    seen = tree.read(base, "apache2/key")
    assert seen.data is None and "not followed" in seen.kind
    assert tree.read(base, "link.conf") == FileState(None, f"symlink to {outside / 'key'}")
    with pytest.raises(tree.UnsafePath):
        tree.write(base, "apache2/key", b"owned\n", 0o644, 0, 0, lambda r: (0o755, 0, 0))
    assert (outside / "key").read_text() == "secret\n"
    # A symlink at the leaf is replaced, never written through.
    tree.write(base, "link.conf", b"mine\n", 0o640, os.getuid(), os.getgid(),
               lambda r: (0o755, 0, 0))
    assert (outside / "key").read_text() == "secret\n"
    assert not (base / "link.conf").is_symlink()
    assert (base / "link.conf").read_text() == "mine\n"
    assert stat.S_IMODE((base / "link.conf").stat().st_mode) == 0o640
    with pytest.raises(tree.UnsafePath):
        tree.make_dir(base, "apache2/new", 0o755, 0, 0, lambda r: (0o755, 0, 0))
    assert not (outside / "new").exists()


# --- against a real sandbox --------------------------------------------------------------------


def create_apache(env: Env) -> tuple[str, Paths, Path]:
    name = unique_name("up")
    env.run("create", "-u", "apache2.service", name, check=True)
    return name, Paths.from_env(env.vars), env.state(name)


def changed_copy(tmp_path: Path, host_path: str, extra: str) -> Path:
    copy = tmp_path / "host" / host_path.lstrip("/")
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(host_path, copy)
    with copy.open("a") as f:
        f.write(extra)
    return copy


def statuses(report: upgrade.Report) -> dict[str, Drift]:
    return {c.path: c.status for c in report.conffiles if c.status is not Drift.UNCHANGED}


def by_path(report: upgrade.Report, path: str) -> upgrade.ConffileDrift:
    return next(c for c in report.conffiles if c.path == path)


@pytest.mark.root
@pytest.mark.libvirt
def test_drift_is_reported_and_admin_edits_survive_apply(env: Env, tmp_path: Path) -> None:
    name, paths, state = create_apache(env)
    etc = state / "etc" / "apache2"
    # The admin edits two files in the instance, and removes one.
    with (etc / "ports.conf").open("a") as f:
        f.write("Listen 8080\n")
    with (etc / "envvars").open("a") as f:
        f.write("export MINE=1\n")
    (etc / "magic").unlink()
    # The host changes apache2.conf (an admin on the host), and a package upgrade ships new
    # versions of security.conf and envvars: dpkg then records the new md5s.
    apache2_conf = changed_copy(tmp_path, "/etc/apache2/apache2.conf", "# host change\n")
    security = changed_copy(tmp_path, "/etc/apache2/conf-available/security.conf",
                            "# new packaged version\n")
    envvars = changed_copy(tmp_path, "/etc/apache2/envvars", "# new packaged version\n")
    status_file = tmp_path / "host" / "status"
    text = Path("/var/lib/dpkg/status").read_text()
    for path, copy in (("/etc/apache2/conf-available/security.conf", security),
                       ("/etc/apache2/envvars", envvars)):
        old = hashlib.md5(Path(path).read_bytes()).hexdigest()
        assert f" {path} {old}\n" in text, "the host's own copy is not as packaged"
        text = text.replace(f" {path} {old}\n",
                            f" {path} {hashlib.md5(copy.read_bytes()).hexdigest()}\n")
    status_file.write_text(text)
    host = HostView(overrides={
        "/etc/apache2/apache2.conf": apache2_conf,
        "/etc/apache2/conf-available/security.conf": security,
        "/etc/apache2/envvars": envvars,
        "/var/lib/dpkg/status": status_file,
    })

    report = upgrade.upgrade(paths, name, host=host)
    assert statuses(report) == {
        "/etc/apache2/apache2.conf": Drift.HOST_CHANGED,
        "/etc/apache2/conf-available/security.conf": Drift.HOST_CHANGED,  # record says so
        "/etc/apache2/envvars": Drift.BOTH_CHANGED,
        "/etc/apache2/ports.conf": Drift.ADMIN_EDITED,
        "/etc/apache2/magic": Drift.INSTANCE_REMOVED,
    }
    assert report.drift and not any(c.applied for c in report.conffiles)
    assert "-# host change\n" in by_path(report, "/etc/apache2/apache2.conf").diff
    assert "+Listen 8080\n" in by_path(report, "/etc/apache2/ports.conf").diff
    assert (etc / "apache2.conf").read_bytes() == Path("/etc/apache2/apache2.conf").read_bytes()

    applied = upgrade.upgrade(paths, name, apply_host_changes=True, host=host)
    assert {c.path for c in applied.conffiles if c.applied} == {
        "/etc/apache2/apache2.conf", "/etc/apache2/conf-available/security.conf"}
    assert (etc / "apache2.conf").read_bytes() == apache2_conf.read_bytes()
    host_st, inst_st = os.stat("/etc/apache2/apache2.conf"), os.stat(etc / "apache2.conf")
    assert (inst_st.st_mode, inst_st.st_uid) == (host_st.st_mode, host_st.st_uid)
    assert (etc / "ports.conf").read_text().endswith("Listen 8080\n")  # the admin's edit
    assert (etc / "envvars").read_text().endswith("export MINE=1\n")
    assert not (etc / "magic").exists()

    again = upgrade.upgrade(paths, name, host=host)
    assert statuses(again) == {
        "/etc/apache2/envvars": Drift.BOTH_CHANGED,
        "/etc/apache2/ports.conf": Drift.ADMIN_EDITED,
        "/etc/apache2/magic": Drift.INSTANCE_REMOVED,
    }
    # The real host is the same as when the sandbox was made: the CLI reports the admin's
    # edits only, and --check turns drift into exit status 3.
    proc = env.run("upgrade", name)
    assert proc.returncode == 0, proc.stderr
    assert f"{name}: admin-edited /etc/apache2/ports.conf (apache2)" in proc.stdout
    assert "  +Listen 8080" in proc.stdout
    assert env.run("upgrade", "--check", name).returncode == upgrade.CHECK_DRIFT


@pytest.mark.root
@pytest.mark.libvirt
def test_clean_sandbox_has_no_drift(env: Env) -> None:
    name, _, _ = create_apache(env)
    proc = env.run("upgrade", "--check", "--json", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = json.loads(proc.stdout)
    assert report["drift"] is False and report["new_private"] == []
    assert {c["status"] for c in report["conffiles"]} == {"unchanged"}
    assert any(c["path"] == "/etc/apache2/apache2.conf" for c in report["conffiles"])


class ExtraFiles(evidence.DpkgDB):
    """The host's dpkg database, as if apache2's new version shipped two paths more."""

    def files(self, package: str) -> list[str]:
        extra = ["/var/mail"] if package == "apache2" else []
        return super().files(package) + extra

    def conffiles(self, package: str) -> list[str]:
        extra = ["/etc/apache2/vss-new/new.conf"] if package == "apache2" else []
        return super().conffiles(package) + extra


@pytest.mark.root
@pytest.mark.libvirt
def test_newly_needed_private_paths_are_added(env: Env, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    name, paths, state = create_apache(env)
    assert not (state / "var" / "mail").exists()
    monkeypatch.setattr(evidence, "detect_package_db", lambda root=Path("/"): ExtraFiles())
    new_conf = tmp_path / "new.conf"
    new_conf.write_text("# shipped by the new version\n")
    host = HostView(overrides={"/etc/apache2/vss-new/new.conf": new_conf})

    report = upgrade.upgrade(paths, name, host=host)
    assert [(p.path, p.made) for p in report.new_private] == [("/var/mail", True)]
    made = os.stat(state / "var" / "mail")
    host_mail = os.stat("/var/mail")  # root:mail 2775 on Debian: set-gid survives
    assert stat.S_IMODE(made.st_mode) == stat.S_IMODE(host_mail.st_mode)
    assert (made.st_uid, made.st_gid) == (host_mail.st_uid, host_mail.st_gid)
    assert grp.getgrgid(made.st_gid).gr_name == "mail"
    assert statuses(report) == {"/etc/apache2/vss-new/new.conf": Drift.HOST_ADDED}
    record = json.loads((state / "evidence.json").read_text())
    assert "/var/mail" in {e["path"] for e in record["evidence"]}

    (state / "var" / "mail" / "keep").write_text("admin's\n")
    applied = upgrade.upgrade(paths, name, apply_host_changes=True, host=host)
    assert applied.new_private == ()  # known now: nothing is made twice
    assert (state / "var" / "mail" / "keep").read_text() == "admin's\n"
    assert (state / "etc/apache2/vss-new/new.conf").read_bytes() == new_conf.read_bytes()
    assert statuses(upgrade.upgrade(paths, name, host=host)) == {}


@pytest.mark.root
@pytest.mark.libvirt
def test_private_path_added_to_the_config_is_made(env: Env) -> None:
    """Under /var: made in the private /var. Outside /etc and /var: the host's copied to the
    state and bound by the reconciled domain over the host's (which must exist: the host
    root is read-only in the sandbox, there is nothing to mount on otherwise)."""
    import libvirt

    name, paths, state = create_apache(env)
    srv = Path("/srv") / unique_name("vss-upgrade-")
    srv.mkdir()
    (srv / "index.html").write_text("site of " + srv.name + "\n")
    try:
        cfg_file = paths.config_file(name)
        data = json.loads(cfg_file.read_text())
        data["private"] = ["/var/lib/vss-upgrade-test/data", "/srv/vss-upgrade-test", str(srv)]
        cfg_file.write_text(json.dumps(data))
        proc = env.run("upgrade", "--json", name)
        assert proc.returncode == 0, proc.stderr
        (report,) = json.loads(proc.stdout)
        made = {p["path"]: p for p in report["new_private"]}
        assert made["/var/lib/vss-upgrade-test/data"]["made"] is True
        assert made["/var/lib/vss-upgrade-test/data"]["reasons"] == ["--private"]
        assert (state / "var/lib/vss-upgrade-test/data").is_dir()
        assert made["/srv/vss-upgrade-test"]["made"] is False
        assert "no such directory to mount it on" in made["/srv/vss-upgrade-test"]["note"]
        assert made[str(srv)]["made"] is True
        copy = Path(other_path(str(state), str(srv)))
        assert (copy / "index.html").read_text() == f"site of {srv.name}\n"
        conn = libvirt.open("lxc:///")
        try:
            xml = conn.lookupByName(name).XMLDesc(0)
        finally:
            conn.close()
        assert f"<target dir='{srv}'/>" in xml and f"<source dir='{copy}'/>" in xml, xml
        text = env.run("upgrade", name, check=True).stdout
        assert "vss-upgrade-test/data" not in text and srv.name not in text  # made once
        assert "private directory /srv/vss-upgrade-test not added" in text
        # The sandbox serves its own copy: the host's may change, the sandbox's does not.
        env.run("start", "--detach", name, check=True, timeout=120)
        (srv / "index.html").write_text("changed on the host\n")
        r = env.run("execute", name, "--", "cat", f"{srv}/index.html", check=True)
        assert r.stdout == f"site of {srv.name}\n"
        env.run("stop", name, timeout=120)
    finally:
        shutil.rmtree(srv)
