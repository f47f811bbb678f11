"""evidence: real units with the real dpkg database, and the merge logic with a small fake DB."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Sequence
from pathlib import Path

import pytest

from virt_sandbox_service.errors import UserError
from virt_sandbox_service.evidence import (
    Access,
    DpkgDB,
    PackageDB,
    PathEvidence,
    RpmDB,
    detect_package_db,
    gather,
    hidden_secrets,
    parse_dpkg_status,
)
from virt_sandbox_service.plantypes import GENERATOR_DIRS, GENERATOR_REASON, kept_generators
from virt_sandbox_service.unitfile import UnitFile, load_unit, resolve_unit_name

SYSTEMD = "needed by systemd in the sandbox"
BASELINE = {"/var/lib/systemd", "/var/log/journal", "/var/tmp", "/var/cache", "/var/log",
            "/var/lib"}


def by_path(evidence: Sequence[PathEvidence]) -> dict[str, PathEvidence]:
    paths = [e.path for e in evidence]
    assert len(paths) == len(set(paths)), "one PathEvidence per path"
    return {e.path: e for e in evidence}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def dpkg() -> PackageDB:
    db = detect_package_db()
    assert db is not None and db.kind == "dpkg"
    return db


# --- real units, real dpkg database -------------------------------------------------------------


def test_apache2(dpkg: PackageDB) -> None:
    ev = by_path(gather([load_unit("apache2.service")], dpkg))
    for path in ("/var/lib/apache2", "/var/log/apache2", "/var/cache/apache2", "/var/www/html"):
        assert ev[path].access is Access.PRIVATE
        assert ev[path].is_dir
        assert ev[path].reasons[0] == "package apache2 (dpkg file list)"
    # apache2-bin, built from apache2's source, lists /var/lib/apache2 too.
    assert ev["/var/lib/apache2"].reasons[1:] == (
        "package apache2-bin (dpkg file list; a dependency of apache2 from the same source)",)
    conf = ev["/etc/apache2/apache2.conf"]
    assert (conf.access, conf.is_dir) == (Access.PRIVATE, False)
    assert "conffile of apache2" in conf.reasons
    assert ev["/etc/apache2/sites-available"].is_dir
    # Facts of the host: Debian makes /var/log/apache2 root:adm 0750.
    log = ev["/var/log/apache2"]
    assert log.owner == (0, grp.getgrnam("adm").gr_gid)
    assert log.mode == 0o750
    assert ev["/var/log"].reasons == ("package apache2 (dpkg file list)", SYSTEMD)
    assert ev["/var/lib/systemd"].reasons == (SYSTEMD,)
    assert ev["/var/log/journal"].access is Access.PRIVATE


def test_never_package_manager_state_nor_the_host_root(dpkg: PackageDB) -> None:
    units = [load_unit(n) for n in ("apache2.service", "nginx.service", "ssh.service",
                                    "cron.service", "postfix@web1.service")]
    evidence = gather(units, dpkg)
    paths = [e.path for e in evidence]
    # Of the host's root only the service's own systemd generators are named (shared, as all
    # of it is: so that the sandbox's systemd runs them, kept_generators()).
    assert not [e.path for e in evidence
                if e.path.startswith(("/var/lib/dpkg", "/var/lib/rpm", "/usr", "/bin", "/sbin",
                                      "/lib"))
                and not (e.access is Access.SHARED
                         and os.path.dirname(e.path) in GENERATOR_DIRS)]
    assert "/var" not in paths and "/etc" not in paths and "/" not in paths
    assert paths == sorted(paths, key=lambda p: p.split("/"))


def test_nginx(dpkg: PackageDB) -> None:
    ev = by_path(gather([load_unit("nginx.service")], dpkg))
    assert ev["/run"].access is Access.TMPFS
    assert ev["/run"].reasons == ("PIDFile= in nginx.service",)
    assert ev["/var/lib/nginx"].reasons == ("package nginx-common (dpkg file list)",)
    assert ev["/var/log/nginx"].access is Access.PRIVATE
    assert "conffile of nginx-common" in ev["/etc/nginx/nginx.conf"].reasons
    assert "/var/lib/apache2" not in ev  # another service's data


def test_ssh(dpkg: PackageDB) -> None:
    ev = by_path(gather([load_unit("ssh.service")], dpkg))
    assert ev["/run/sshd"].access is Access.TMPFS
    assert ev["/run/sshd"].reasons == ("RuntimeDirectory= in ssh.service",)
    default = ev["/etc/default/ssh"]
    assert default.access is Access.PRIVATE and not default.is_dir
    assert default.reasons[0] == "EnvironmentFile= in ssh.service"
    assert "conffile of openssh-server" in default.reasons
    assert "conffile of openssh-server" in ev["/etc/ssh/moduli"].reasons
    assert "/etc/ssh/ssh_host_rsa_key" not in ev  # made by postinst, not the package's


def test_cron(dpkg: PackageDB) -> None:
    ev = by_path(gather([load_unit("cron.service")], dpkg))
    assert ev["/etc/default/cron"].reasons == (
        "EnvironmentFile= in cron.service", "package cron (dpkg file list)", "conffile of cron")
    # cron Pre-Depends on cron-daemon-common (same source), which ships the crontab spool.
    assert {p for p in ev if p.startswith("/var")} == BASELINE | {
        "/var/spool", "/var/spool/cron", "/var/spool/cron/crontabs"}
    assert "conffile of cron-daemon-common" in ev["/etc/crontab"].reasons


def test_postfix_instance(dpkg: PackageDB) -> None:
    unit = load_unit(resolve_unit_name("postfix@.service", "web1"))
    ev = by_path(gather([unit], dpkg))
    spool = ev["/var/spool/postfix"]
    assert spool.reasons == ("package postfix (dpkg file list)",)
    lib = ev["/var/lib/postfix"]
    postfix = pwd.getpwnam("postfix")
    assert lib.owner == (postfix.pw_uid, postfix.pw_gid)
    assert "conffile of postfix" in ev["/etc/postfix/postfix-files"].reasons


def need_packages(dpkg: PackageDB, *packages: str) -> None:
    missing = [p for p in packages if not dpkg.exists(p)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/test-daemons.sh installs it)")


def test_samba_files_of_its_same_source_dependencies(dpkg: PackageDB) -> None:
    need_packages(dpkg, "samba", "samba-common")
    ev = by_path(gather([load_unit("smbd.service")], dpkg))
    common = "package samba-common (dpkg file list; a dependency of samba from the same source)"
    for path in ("/var/log/samba", "/var/lib/samba/private", "/var/cache/samba"):
        assert ev[path].access is Access.PRIVATE
        assert common in ev[path].reasons
    # Other sources' dependencies (libc6, libgnutls30, python3) are never in.
    assert not [r for e in ev.values() for r in e.reasons
                if r.startswith(("package libc6 ", "package libgnutls30 ", "package python3 "))]


def test_tor_directives_of_the_unit_part_of_it(dpkg: PackageDB) -> None:
    need_packages(dpkg, "tor")
    ev = by_path(gather([load_unit("tor.service")], dpkg))
    where = "tor@default.service (PartOf=tor.service)"
    for path in ("/var/lib/tor", "/var/log/tor"):
        assert ev[path].access is Access.PRIVATE
        assert ev[path].reasons[0] == f"ReadWriteDirectories= in {where}"
    assert ev["/run/tor"].reasons == (f"PIDFile= in {where}",)
    # ReadWriteDirectories=-/proc and ReadOnlyDirectories=/: kernel and whole trees, never.
    assert "/proc" not in ev and "/" not in ev
    assert not [p for p in ev if p.startswith("/var/lib/tor-instances")]  # tor@.service


def test_freeradius_configuration_is_not_a_host_secret(dpkg: PackageDB) -> None:
    need_packages(dpkg, "freeradius", "freeradius-config")
    ev = by_path(gather([load_unit("freeradius.service")], dpkg))
    conf = ev["/etc/freeradius"]
    assert conf.access is Access.PRIVATE
    assert "ReadOnlyDirectories= in freeradius.service" in conf.reasons
    assert ("package freeradius-config (dpkg file list; a dependency of freeradius from the "
            "same source)") in conf.reasons
    allowed = [p for p in ev if p.startswith("/etc")]
    hidden = by_path(hidden_secrets(Path("/etc"), allowed))
    assert not [p for p in hidden if p.startswith("/etc/freeradius")]
    # freerad is in groups shadow and ssl-cert: supplementary groups alone make nothing its
    # own; the snakeoil key its eap module names is (tests/test_confrefs.py).
    assert "/etc/shadow" in hidden and "/etc/ssl/private" not in hidden
    assert "/etc/ssl/private/ssl-cert-snakeoil.key" not in hidden


def test_two_units_merge_per_path(dpkg: PackageDB) -> None:
    ev = gather([load_unit("apache2.service"), load_unit("nginx.service")], dpkg)
    merged = by_path(ev)
    assert merged["/var/log"].reasons == (
        "package apache2 (dpkg file list)", "package nginx-common (dpkg file list)", SYSTEMD)
    assert "/var/lib/apache2" in merged and "/var/lib/nginx" in merged


def test_explicit_package(dpkg: PackageDB) -> None:
    ev = by_path(gather([load_unit("cron.service")], dpkg, packages=["postfix"]))
    assert ev["/var/spool/postfix"].reasons == ("package postfix (dpkg file list)",)


def test_unknown_package(dpkg: PackageDB) -> None:
    with pytest.raises(UserError) as e:
        gather([load_unit("cron.service")], dpkg, packages=["no-such-package-xyz"])
    assert e.value.message == "package 'no-such-package-xyz' is not installed on this host"
    assert e.value.hint == "'dpkg -l' lists the installed packages"


def test_generic_sandbox_gets_only_var_tmp(dpkg: PackageDB) -> None:
    ev = gather([], dpkg, generic=True)
    assert ev == (PathEvidence("/var/tmp", Access.PRIVATE, True, ("writable temporary space",),
                               (0, 0), 0o1777),)


def test_baseline_without_units() -> None:
    ev = by_path(gather([], None))
    assert set(ev) == BASELINE
    assert all(e.reasons == (SYSTEMD,) and e.is_dir for e in ev.values())


# --- the dpkg reader ----------------------------------------------------------------------------


def test_dpkg_real_database(dpkg: PackageDB) -> None:
    assert dpkg.owner("/lib/systemd/system/ssh.service") == "openssh-server"
    # Merged /usr: the same file asked under its other name.
    assert dpkg.owner("/usr/lib/systemd/system/ssh.service") == "openssh-server"
    assert dpkg.owner("/no/such/file") is None
    assert dpkg.exists("apache2") and not dpkg.exists("no-such-package-xyz")
    assert "/usr/sbin/cron" in dpkg.files("cron")
    assert dpkg.conffiles("cron") == ["/etc/default/cron", "/etc/init.d/cron", "/etc/pam.d/cron"]


def test_dpkg_fake_tree(tmp_path: Path) -> None:
    info = tmp_path / "var/lib/dpkg/info"
    write(tmp_path / "var/lib/dpkg/status", "")
    write(info / "foo.list",
          "/.\n/etc\n/etc/foo\n/etc/foo/foo.conf\n/lib/systemd/system/foo.service\n")
    write(info / "foo.conffiles", "/etc/foo/foo.conf\n/etc/foo/old.conf remove-on-upgrade\n")
    write(info / "libbar:amd64.list", "/usr/lib/x86_64-linux-gnu/libbar.so.1\n")
    db = detect_package_db(tmp_path)
    assert isinstance(db, DpkgDB)
    assert db.owner("/usr/lib/systemd/system/foo.service") == "foo"
    assert db.owner("/usr/lib/x86_64-linux-gnu/libbar.so.1") == "libbar"
    assert db.owner("/etc/foo/foo.con") is None  # whole lines only
    libbar = ["/usr/lib/x86_64-linux-gnu/libbar.so.1"]
    assert db.files("libbar") == db.files("libbar:amd64") == libbar
    assert db.conffiles("foo") == ["/etc/foo/foo.conf", "/etc/foo/old.conf"]
    assert db.exists("libbar") and not db.exists("bar") and not db.exists("../foo")


STATUS = """\
Package: srv
Status: install ok installed
Architecture: amd64
Depends: srv-common (= 1.0), libc6 (>= 2.34), srv-data | srv-data-alt, srv-utils:any,
Pre-Depends: srv-pre
Description: a server
 Depends: not-a-field (a continuation line)

Package: srv-common
Status: install ok installed
Source: srv (1.0-1)
Depends: srv-common-bin

Package: srv-common-bin
Status: install ok installed
Source: srv

Package: srv-data-alt
Status: install ok installed
Source: srv

Package: srv-pre
Status: install ok installed
Source: srv

Package: srv-utils
Status: install ok installed
Source: other-source

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc

Package: libc6
Status: install ok installed
Architecture: i386
Source: glibc
Depends: libgcc-s1

Package: srv-removed
Status: deinstall ok config-files
Source: srv
"""


def test_parse_dpkg_status() -> None:
    db = parse_dpkg_status(STATUS)
    assert db["srv"].source == "srv"  # no Source: its own name
    assert db["srv"].depends == ("srv-pre", "srv-common", "libc6", "srv-data", "srv-data-alt",
                                 "srv-utils")
    assert db["srv-common"].source == "srv"  # "srv (1.0-1)": the version is not the name
    assert db["libc6"].depends == ("libgcc-s1",)  # one entry for its two architectures
    assert "srv-removed" not in db  # only installed packages
    assert "not-a-field" not in db["srv"].depends


def test_dpkg_same_source_dependencies(tmp_path: Path) -> None:
    write(tmp_path / "var/lib/dpkg/status", STATUS)
    (tmp_path / "var/lib/dpkg/info").mkdir()
    db = DpkgDB(tmp_path)
    # srv-data is not installed, srv-utils and libc6 are other sources'.
    assert db.same_source_dependencies("srv") == ["srv-pre", "srv-common", "srv-data-alt"]
    assert db.same_source_dependencies("srv:amd64") == ["srv-pre", "srv-common", "srv-data-alt"]
    assert db.same_source_dependencies("srv-common") == ["srv-common-bin"]
    assert db.same_source_dependencies("libc6") == []
    assert db.same_source_dependencies("no-such") == []
    (tmp_path / "var/lib/dpkg/status").write_text("")
    assert db.same_source_dependencies("srv") == ["srv-pre", "srv-common", "srv-data-alt"]


def test_rpm_same_source_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        ("-q", "--queryformat", "%{SOURCERPM}\\n", "samba"): ["samba-4.19.src.rpm"],
        ("-qa", "--queryformat", "%{NAME} %{SOURCERPM}\\n"): [
            "samba samba-4.19.src.rpm", "samba-common samba-4.19.src.rpm",
            "samba-libs samba-4.19.src.rpm", "glibc glibc-2.38.src.rpm",
            "gpg-pubkey (none)"],
        ("-q", "--requires", "samba"): [
            "samba-common = 4.19", "samba-libs(x86-64) = 4.19", "samba-libs = 4.19",
            "glibc", "libc.so.6()(64bit)", "/bin/sh", "samba"],
    }
    db = RpmDB()
    monkeypatch.setattr(db, "_query", lambda *args: answers.get(args, []))
    assert db.same_source_dependencies("samba") == ["samba-common", "samba-libs"]
    assert db.same_source_dependencies("not-installed") == []


def test_no_package_database(tmp_path: Path) -> None:
    assert detect_package_db(tmp_path) is None


# --- merge logic with a fake package database ---------------------------------------------------


class FakeDB:
    kind = "dpkg"

    def __init__(self, files: dict[str, list[str]], conffiles: dict[str, list[str]],
                 owners: dict[str, str], same_source: dict[str, list[str]] | None = None
                 ) -> None:
        self._files, self._conffiles, self._owners = files, conffiles, owners
        self._same_source = same_source or {}

    def owner(self, path: str) -> str | None:
        return self._owners.get(path)

    def files(self, package: str) -> list[str]:
        return self._files.get(package, [])

    def conffiles(self, package: str) -> list[str]:
        return self._conffiles.get(package, [])

    def exists(self, package: str) -> bool:
        return package in self._files

    def same_source_dependencies(self, package: str) -> list[str]:
        return self._same_source.get(package, [])

    def etc_owners(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for package, files in self._files.items():
            for f in files:
                if f.startswith("/etc/") and f.count("/") >= 3:
                    counts = found.setdefault("/etc/" + f.split("/")[2], {})
                    counts[package] = counts.get(package, 0) + 1
        return found


@pytest.fixture
def units(tmp_path: Path) -> Path:
    return tmp_path / "units"


def unit(units: Path, name: str, service: str) -> UnitFile:
    write(units / name, f"[Unit]\nDescription=test\n[Service]\n{service}")
    return load_unit(name, [units])


def test_directives(units: Path) -> None:
    u = unit(units, "app.service", (
        "StateDirectory=app \"two words\" link:target\n"
        "CacheDirectory=app\nLogsDirectory=app\nConfigurationDirectory=app\n"
        "RuntimeDirectory=app\n"
        "ReadWritePaths=-/srv/data +/var/spool/app /var/run/app-rw\n"
        "PIDFile=/var/run/app/app.pid\n"
        "WorkingDirectory=-/srv/app\n"
        "EnvironmentFile=-/etc/default/app\nEnvironmentFile=/opt/app/env\n"
    ))
    ev = by_path(gather([u], None, generic=True))
    expect = {
        "/var/lib/app": (Access.PRIVATE, "StateDirectory="),
        "/var/lib/two words": (Access.PRIVATE, "StateDirectory="),
        "/var/lib/link": (Access.PRIVATE, "StateDirectory="),
        "/var/lib/target": (Access.PRIVATE, "StateDirectory="),
        "/var/cache/app": (Access.PRIVATE, "CacheDirectory="),
        "/var/log/app": (Access.PRIVATE, "LogsDirectory="),
        "/etc/app": (Access.PRIVATE, "ConfigurationDirectory="),
        "/run/app": (Access.TMPFS, "RuntimeDirectory="),
        "/srv/data": (Access.PRIVATE, "ReadWritePaths="),
        "/var/spool/app": (Access.PRIVATE, "ReadWritePaths="),
        "/run/app-rw": (Access.TMPFS, "ReadWritePaths="),
        "/srv/app": (Access.PRIVATE, "WorkingDirectory="),
        "/etc/default/app": (Access.PRIVATE, "EnvironmentFile="),
        "/opt/app/env": (Access.SHARED, "EnvironmentFile="),
        "/var/tmp": (Access.PRIVATE, "writable temporary space"),
    }
    assert set(ev) == set(expect)
    for path, (access, reason) in expect.items():
        assert ev[path].access is access, path
        assert ev[path].reasons[0].startswith(reason), path
    assert ev["/run/app"].reasons == ("RuntimeDirectory= in app.service", "PIDFile= in app.service")
    assert not ev["/etc/default/app"].is_dir and ev["/var/lib/app"].is_dir


def test_working_directory_outside_var_is_the_hosts(units: Path) -> None:
    u = unit(units, "w.service", "WorkingDirectory=/opt/w\n")
    ev = by_path(gather([u], None, generic=True))
    assert ev["/opt/w"].access is Access.SHARED
    assert ev["/opt/w"].reasons == ("WorkingDirectory= in w.service (the host's, read-only)",)


def test_working_directory_home_of_user(units: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "etc/passwd", "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n")
    (root / "var/www").mkdir(parents=True)
    os.chmod(root / "var/www", 0o750)
    u = unit(units, "h.service", "User=www-data\nWorkingDirectory=~\n")
    ev = by_path(gather([u], None, generic=True, root=root))
    assert ev["/var/www"].reasons == ("WorkingDirectory= in h.service",)
    assert ev["/var/www"].mode == 0o750
    assert ev["/var/www"].owner == (os.getuid(), os.getgid())
    assert ev["/var/tmp"].owner is None and ev["/var/tmp"].mode is None  # not in the fake root


@pytest.mark.parametrize(("service", "message"), [
    ("StateDirectory=/abs\n",
     "StateDirectory= in bad.service: '/abs' is not a relative path"),
    ("LogsDirectory=a/../../etc\n",
     "LogsDirectory= in bad.service: 'a/../../etc' is not a relative path"),
    ("ReadWritePaths=-relative\n",
     "ReadWritePaths= in bad.service: 'relative' is not an absolute path"),
    ("StateDirectory=\"unbalanced\n",
     "StateDirectory= in bad.service has unbalanced quotes: \"unbalanced"),
])
def test_bad_directives(units: Path, service: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        gather([unit(units, "bad.service", service)], None)
    assert e.value.message == message


def test_directive_specifiers_and_reset(units: Path) -> None:
    write(units / "inst@.service", "[Service]\nStateDirectory=old\nStateDirectory=\n"
                                   "StateDirectory=%p/%i\nLogsDirectory=%N\n")
    u = load_unit("inst@web1.service", [units])
    paths = {e.path for e in gather([u], None, generic=True)}
    assert paths == {"/var/lib/inst/web1", "/var/log/inst@web1", "/var/tmp"}


def fake_db() -> FakeDB:
    return FakeDB(
        files={"app": ["/.", "/etc", "/etc/app", "/etc/app/app.conf", "/etc/app/defaults",
                       "/usr", "/usr/bin", "/usr/bin/app", "/var", "/var/lib", "/var/lib/app",
                       "/var/lib/app/db", "/var/lib/dpkg/x", "/var/run/app"],
               "other": ["/var/lib/other"]},
        conffiles={"app": ["/etc/app/app.conf"]},
        owners={"/lib/app.service": "app"},
    )


def test_package_evidence(units: Path) -> None:
    write(units / "app.service", "[Service]\nStateDirectory=app\n")
    u = load_unit("app.service", [units])
    ev = by_path(gather([u], fake_db(), generic=True))
    # The fake unit lives in units/, which the fake DB does not own.
    assert set(ev) == {"/var/lib/app", "/var/tmp"}
    ev = by_path(gather([u], fake_db(), packages=["app"], generic=True))
    assert set(ev) == {"/etc/app", "/etc/app/app.conf", "/etc/app/defaults", "/var/lib",
                       "/var/lib/app", "/var/lib/app/db", "/run/app", "/var/tmp"}
    assert ev["/var/lib/app"].reasons == ("StateDirectory= in app.service",
                                          "package app (dpkg file list)")
    assert ev["/etc/app/app.conf"].reasons == ("package app (dpkg file list)", "conffile of app")
    assert ev["/run/app"].access is Access.TMPFS
    assert ev["/etc/app"].is_dir and not ev["/etc/app/app.conf"].is_dir


def test_same_source_dependencies(units: Path) -> None:
    db = FakeDB(
        files={"app": ["/etc/app"], "app-common": ["/etc/app/common.conf", "/var/log/app"],
               "app-data": ["/var/lib/app-data"], "libz": ["/etc/libz.conf"],
               "tool": ["/var/lib/tool"], "tool-common": ["/var/lib/tool-common"]},
        conffiles={"app-common": ["/etc/app/common.conf"]},
        owners={str(units / "app.service"): "app"},
        # The DB answers only same-source ones (libz is another source's: never asked for).
        same_source={"app": ["app-common"], "app-common": ["app-data", "app"],
                     "tool": ["tool-common"]},
    )
    u = unit(units, "app.service", "")
    ev = by_path(gather([u], db, generic=True))
    assert set(ev) == {"/etc/app", "/etc/app/common.conf", "/var/log/app", "/var/lib/app-data",
                       "/var/tmp"}
    assert ev["/var/log/app"].reasons == (
        "package app-common (dpkg file list; a dependency of app from the same source)",)
    assert ev["/var/lib/app-data"].reasons == (
        "package app-data (dpkg file list; a dependency of app-common from the same source)",)
    # conffiles.py finds the package after "conffile of ": the reason stays that.
    assert ev["/etc/app/common.conf"].reasons[-1] == "conffile of app-common"
    # -P packages bring theirs too.
    ev = by_path(gather([u], db, packages=["tool"], generic=True))
    assert "/var/lib/tool-common" in ev


def test_old_and_read_only_path_directives(units: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/seen").mkdir(parents=True)
    (root / "etc/app").mkdir(parents=True)
    u = unit(units, "ro.service", (
        "ReadWriteDirectories=-/var/lib/old +/srv/old\n"
        "ReadOnlyPaths=-/var/lib/seen /var/lib/absent +/etc/app/ /opt/ro /run/ro\n"
        "ReadOnlyDirectories=-/etc/ro-dir\n"
        # Whole trees and kernel filesystems: never the sandbox's to have or to see shared.
        "ReadOnlyDirectories=/ /etc /var /usr\n"
        "ReadWriteDirectories=-/proc -/sys/fs/cgroup /dev/shm /etc/ /var/\n"
        "InaccessiblePaths=/var/lib/secret\n"
    ))
    ev = by_path(gather([u], None, generic=True, root=root))
    expect = {
        "/var/lib/old": (Access.PRIVATE, "ReadWriteDirectories="),
        "/srv/old": (Access.PRIVATE, "ReadWriteDirectories="),
        "/var/lib/seen": (Access.PRIVATE, "ReadOnlyPaths="),  # /var is private: have it
        "/etc/app": (Access.SHARED, "ReadOnlyPaths="),  # the host's, not hidden
        "/opt/ro": (Access.SHARED, "ReadOnlyPaths="),
        "/run/ro": (Access.TMPFS, "ReadOnlyPaths="),
        "/etc/ro-dir": (Access.SHARED, "ReadOnlyDirectories="),
        "/var/tmp": (Access.PRIVATE, "writable temporary space"),
    }
    assert set(ev) == set(expect)  # no /var/lib/absent (not on the host), no /var/lib/secret
    for path, (access, key) in expect.items():
        assert ev[path].access is access, path
        assert ev[path].reasons[0].startswith(key), path
    assert ev["/var/lib/seen"].reasons == ("ReadOnlyPaths= in ro.service",)
    assert ev["/var/lib/seen"].is_dir and ev["/var/lib/seen"].mode is not None


def test_read_only_path_with_package_evidence_is_private(units: Path) -> None:
    db = FakeDB(files={"app": ["/etc/app", "/etc/app/app.conf"]}, conffiles={},
                owners={str(units / "app.service"): "app"})
    u = unit(units, "app.service", "ReadOnlyDirectories=/etc/app/\n")
    ev = by_path(gather([u], db, generic=True))
    assert ev["/etc/app"].access is Access.PRIVATE  # the strongest claim decides
    assert ev["/etc/app"].reasons == ("ReadOnlyDirectories= in app.service",
                                      "package app (dpkg file list)")


def test_units_part_of_a_confined_unit(units: Path) -> None:
    write(units / "app@main.service", "[Unit]\nPartOf=app.service\n[Service]\n"
                                      "ReadWriteDirectories=/var/lib/app-%i\n")
    write(units / "app@.service", "[Unit]\nPartOf=app.service\n[Service]\n"
                                  "StateDirectory=app-%i\n")  # a template: instances unknown
    write(units / "app-helper.socket", "[Unit]\nPartOf=other.service app.service\n"
                                       "[Socket]\nReadWritePaths=/var/spool/helper\n")
    write(units / "app-tool.service", "[Service]\nStateDirectory=app-tool\n")  # not PartOf
    write(units / "app-masked.service", "")
    write(units / "stray.service", "[Unit]\nPartOf=app.service\n[Service]\n"
                                   "StateDirectory=stray\n")  # not the package's
    listed = [str(units / n) for n in ("app.service", "app@main.service", "app@.service",
                                       "app-helper.socket", "app-tool.service",
                                       "app-masked.service")]
    db = FakeDB(files={"app": ["/etc/app", *listed]}, conffiles={},
                owners={str(units / "app.service"): "app"})
    u = unit(units, "app.service", "StateDirectory=app\n")
    ev = by_path(gather([u], db, generic=True))
    assert set(ev) == {"/etc/app", "/var/lib/app", "/var/lib/app-main", "/var/spool/helper",
                       "/var/tmp"}
    assert ev["/var/lib/app-main"].reasons == (
        "ReadWriteDirectories= in app@main.service (PartOf=app.service)",)
    assert ev["/var/spool/helper"].reasons == (
        "ReadWritePaths= in app-helper.socket (PartOf=app.service)",)
    # Confined itself, it is named as itself.
    both = by_path(gather([u, load_unit("app@main.service", [units])], db, generic=True))
    assert both["/var/lib/app-main"].reasons == ("ReadWriteDirectories= in app@main.service",)


def test_package_needs_a_database() -> None:
    with pytest.raises(UserError) as e:
        gather([], None, packages=["app"])
    assert e.value.message == "-P app: no package manager (dpkg or rpm) on this host"


def test_overrides(units: Path) -> None:
    write(units / "app.service", "[Service]\nStateDirectory=app\nRuntimeDirectory=app\n")
    u = load_unit("app.service", [units])
    ev = by_path(gather([u], fake_db(), packages=["app"], generic=True,
                        private=["/srv/extra", "/run/app"], shared=["/var/lib/app/"]))
    assert ev["/srv/extra"].access is Access.PRIVATE
    assert ev["/srv/extra"].reasons == ("--private",)
    assert ev["/run/app"].access is Access.PRIVATE  # the admin's word beats evidence
    assert ev["/run/app"].reasons == ("RuntimeDirectory= in app.service",
                                      "package app (dpkg file list)", "--private")
    assert ev["/var/lib/app"].access is Access.SHARED
    assert ev["/var/lib/app"].reasons == ("StateDirectory= in app.service",
                                          "package app (dpkg file list)", "--shared")
    # ... and for everything under it.
    assert ev["/var/lib/app/db"].access is Access.SHARED
    assert ev["/var/lib/app/db"].reasons == ("package app (dpkg file list)",
                                             "under --shared /var/lib/app")
    assert ev["/var/lib"].access is Access.PRIVATE


def test_shared_inside_private_is_fine() -> None:
    ev = by_path(gather([], None, generic=True, private=["/srv"], shared=["/srv/data"]))
    assert (ev["/srv"].access, ev["/srv/data"].access) == (Access.PRIVATE, Access.SHARED)


@pytest.mark.parametrize(("private", "shared", "message", "hint"), [
    (["srv/x"], [], "--private 'srv/x' is not an absolute path",
     "paths start with '/', e.g. /var/lib/myapp"),
    ([], ["x"], "--shared 'x' is not an absolute path",
     "paths start with '/', e.g. /var/lib/myapp"),
    (["/srv/../etc"], [], "--private '/srv/../etc' must not contain '..'",
     "write the path it means, e.g. /etc"),
    (["/"], [], "--private / is not allowed",
     "the host root is always shared read-only; name the directories the service writes"),
    (["/etc/"], [], "--private /etc is not allowed",
     "the sandbox's /etc is private already; name a path under it, e.g. /etc/apache2"),
    (["/usr"], [], "--private /usr is not allowed",
     "the host's programs are shared read-only; name a path under /etc, /var or /srv"),
    ([], ["/"], "--shared / is not allowed",
     "the host root is always shared read-only; name the directories the service writes"),
    (["/srv/www/up"], ["/srv/www"], "--private /srv/www/up is inside --shared /srv/www",
     "a --shared path is the host's, read-only, with all under it; drop one"),
    (["/srv/www"], ["/srv/www"], "--private /srv/www is inside --shared /srv/www",
     "a --shared path is the host's, read-only, with all under it; drop one"),
])
def test_override_errors(private: list[str], shared: list[str], message: str,
                         hint: str | None) -> None:
    with pytest.raises(UserError) as e:
        gather([], None, private=private, shared=shared)
    assert e.value.message == message
    assert e.value.hint == hint


# --- host secrets -------------------------------------------------------------------------------


def make_etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    write(etc / "passwd", "root:x:0:0::/root:/bin/sh\nsvc:x:4242:4243::/:/bin/false\n")
    write(etc / "group", "root:x:0:\nshadow:x:42:\n")
    for path, mode in [("shadow", 0o640), ("hostname", 0o644), ("ssl/certs/ca.pem", 0o644),
                       ("ssl/private/key.pem", 0o600), ("app/secret.conf", 0o600),
                       ("app/public.conf", 0o644), ("mixed/allowed.conf", 0o600),
                       ("mixed/other.key", 0o600), ("svc.key", 0o400)]:
        os.chmod(write(etc / path, "x"), mode)
    os.chmod(etc / "ssl/private", 0o710)
    os.chmod(etc / "mixed", 0o700)
    os.chown(etc / "shadow", 0, 42)
    os.chown(etc / "svc.key", 4242, 4243)
    (etc / "shadow-link").symlink_to("shadow")
    return etc


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_hidden_secrets_fake_etc(tmp_path: Path) -> None:
    etc = make_etc(tmp_path)
    found = hidden_secrets(etc, ["/etc/app", "/etc/mixed/allowed.conf"])
    assert [(e.path, e.is_dir, e.reasons) for e in found] == [
        ("/etc/mixed/other.key", False, ("not world-readable on the host (0600 root:root)",)),
        ("/etc/shadow", False, ("not world-readable on the host (0640 root:shadow)",)),
        ("/etc/ssl/private", True, ("not world-readable on the host (0710 root:root)",)),
        ("/etc/svc.key", False, ("not world-readable on the host (0400 svc:4243)",)),
    ]
    assert all(e.access is Access.HIDDEN for e in found)
    shadow = found[1]
    assert (shadow.owner, shadow.mode) == ((0, 42), 0o640)


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_hidden_secrets_everything_allowed(tmp_path: Path) -> None:
    assert hidden_secrets(make_etc(tmp_path), ["/etc"]) == ()


def test_hidden_secrets_real_etc() -> None:
    found = by_path(hidden_secrets(Path("/etc"), ["/etc/ssh"]))
    st = os.stat("/etc/shadow")
    group = grp.getgrgid(st.st_gid).gr_name
    assert found["/etc/shadow"].reasons == (
        f"not world-readable on the host ({st.st_mode & 0o7777:04o} root:{group})",)
    assert not [p for p in found if p.startswith("/etc/ssh/")]
    assert "/etc/passwd" not in found and "/etc/hostname" not in found


def make_service_etc(root: Path) -> Path:
    """svc (4242, primary group 4243) is also in group shadow (42), as freerad is."""
    etc = root / "etc"
    write(etc / "passwd", "root:x:0:0::/root:/bin/sh\nsvc:x:4242:4243::/:/bin/false\n"
                          "rootgrp:x:4244:0::/:/bin/false\nnobody:x:65534:65534::/:/bin/false\n")
    write(etc / "group", "root:x:0:\nshadow:x:42:svc\nsvc:x:4243:\n")
    for path, mode, owner in [
            ("shadow", 0o640, (0, 42)),
            ("svc/svc.conf", 0o640, (4242, 4243)),
            ("svc/sub/key", 0o600, (0, 0)),
            ("byuser.key", 0o600, (4242, 0)),
            ("bygroup/secret", 0o640, (0, 4243)),
            ("nogroup.key", 0o640, (0, 65534)),
            ("open.conf", 0o644, (4242, 4243)),
            ("private/svc.pem", 0o600, (4242, 4243)),
            ("private/host.key", 0o600, (0, 0))]:
        os.chmod(write(etc / path, "x"), mode)
        os.chown(etc / path, *owner)
    os.chmod(etc / "svc", 0o2750)
    os.chown(etc / "svc", 4242, 4243)
    os.chmod(etc / "bygroup", 0o750)
    os.chown(etc / "bygroup", 0, 4243)
    os.chmod(etc / "private", 0o710)
    (etc / "svc-link").symlink_to("svc")
    return etc


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_the_service_users_own_paths_are_not_host_secrets(units: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    etc = make_service_etc(root)
    u = unit(units, "svc.service", "User=svc\n")
    ev = by_path(gather([u], None, generic=True, root=root))
    mine = {p: e for p, e in ev.items() if p.startswith("/etc")}
    assert set(mine) == {"/etc/svc", "/etc/byuser.key", "/etc/bygroup", "/etc/private/svc.pem"}
    assert all(e.access is Access.SHARED for e in mine.values())
    assert mine["/etc/svc"].is_dir and not mine["/etc/byuser.key"].is_dir
    assert mine["/etc/svc"].reasons == (
        "owned by user svc, User= of svc.service: the service's, not a host secret",)
    assert mine["/etc/bygroup"].reasons == (
        "owned by svc's primary group, User= of svc.service: the service's, not a host secret",)
    # create hides what is under /etc and not in the evidence, as before.
    hidden = [e.path for e in hidden_secrets(etc, list(mine))]
    assert hidden == ["/etc/nogroup.key", "/etc/private/host.key", "/etc/shadow"]
    # The same user by number; root, nobody, a dynamic or unknown user own nothing of /etc.
    ev = by_path(gather([unit(units, "n.service", "User=4242\n")], None, generic=True,
                        root=root))
    assert "/etc/svc" in ev
    for service in ("User=root\n", "User=nobody\n", "User=svc\nDynamicUser=yes\n",
                    "User=no-such-user\n", "Group=svc\n"):
        ev = by_path(gather([unit(units, "x.service", service)], None, generic=True, root=root))
        assert not [p for p in ev if p.startswith("/etc")], service
    # A user whose primary group is root: only what the user owns.
    ev = by_path(gather([unit(units, "r.service", "User=rootgrp\n")], None, generic=True,
                        root=root))
    assert not [p for p in ev if p.startswith("/etc")]


# --- data owned by the service's users ----------------------------------------------------------


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_what_the_service_users_own_under_var_and_srv_is_its_data(units: Path,
                                                                  tmp_path: Path) -> None:
    """User=svc (4242) and the package's own user (pkg, 4300: its home /var/lib/app is in the
    package's file list) own data wherever it is; a static user (www-data, 33) serves many
    packages, so what it owns is nobody's in particular; the topmost owned entry only, never
    through a link, never /var/tmp."""
    root = tmp_path / "root"
    write(root / "etc/passwd", "root:x:0:0::/root:/bin/sh\nsvc:x:4242:4243::/:/bin/false\n"
                               "pkg:x:4300:4300::/var/lib/app:/bin/false\n"
                               "www-data:x:33:33::/var/lib/app:/bin/false\n"
                               "other:x:4400:4400::/home/other:/bin/sh\n")
    for path, owner in [("var/spool/svc/q/1", (4242, 4243)), ("var/spool/svc/q/2", (0, 0)),
                        ("srv/db/data", (0, 4243)), ("var/lib/app/db", (4300, 4300)),
                        ("var/log/www/access.log", (33, 33)), ("var/tmp/svc.tmp", (4242, 4243)),
                        ("var/lib/other/x", (4400, 4400)), ("var/lib/deep/a/b/c/d", (4242, 0))]:
        os.chown(write(root / path, "x"), *owner)
    os.chown(root / "var/spool/svc", 4242, 4243)
    os.chown(root / "srv/db", 0, 4243)
    (root / "var/lib/link").symlink_to(root / "var/spool/svc")
    write(units / "app.service", "[Service]\nUser=svc\n")
    ev = by_path(gather([load_unit("app.service", [units])], fake_db(), packages=["app"],
                        root=root, generic=True))
    owned = {p: e for p, e in ev.items() if any("the service's data" in r for r in e.reasons)}
    assert set(owned) == {"/var/spool/svc", "/srv/db", "/var/lib/app/db"}
    assert all(e.access is Access.PRIVATE for e in owned.values())
    assert any("user svc (User= of app.service)" in r for r in owned["/var/spool/svc"].reasons)
    assert any("svc's own group" in r for r in owned["/srv/db"].reasons)
    assert any("its home /var/lib/app is in the file list of app" in r
               for r in owned["/var/lib/app/db"].reasons)


def test_paths_the_configuration_names_under_var_and_srv(units: Path, tmp_path: Path) -> None:
    """Named in a conffile or in a file under a directory of /etc the packages ship most of:
    under /var's state trees private, elsewhere (/srv, /var/www) the host's, read-only; not
    what does not exist, a whole tree, a comment, or what a directory everybody ships into
    (/etc/logrotate.d, where other packages' files name their logs) says."""
    root = tmp_path / "root"
    write(root / "etc/app/app.conf", "# old: /var/lib/app/old\ndb = /var/lib/app/db\n"
                                     "log=/var/log/applog.log, root /srv/site/\n"
                                     "tmp /var/tmp/x scratch /var/log\n")
    write(root / "etc/app/sites/admin.conf", "DocumentRoot \"/var/www/admin\"\n")
    write(root / "etc/logrotate.d/other", "/var/log/other.log {\n}\n")
    for path in ("var/lib/app/db/x", "var/lib/app/old/x", "var/log/applog.log", "srv/site/i",
                 "var/tmp/x", "var/www/admin/i", "var/log/other.log"):
        write(root / path, "x")
    db = FakeDB(files={"app": ["/etc/app", "/etc/app/app.conf", "/etc/logrotate.d/app"],
                       "other": ["/etc/logrotate.d/other", "/etc/logrotate.d/more"]},
                conffiles={"app": ["/etc/app/app.conf"]}, owners={})
    write(units / "app.service", "[Service]\nExecStart=/bin/true\n")
    ev = by_path(gather([load_unit("app.service", [units])], db, packages=["app"], root=root,
                        generic=True))
    named = {p: e.access for p, e in ev.items()
             if any(r.startswith("named in /etc/app/") for r in e.reasons)}
    assert named == {"/var/lib/app/db": Access.PRIVATE, "/var/log/applog.log": Access.PRIVATE,
                     "/srv/site": Access.SHARED, "/var/www/admin": Access.SHARED}


def test_the_services_own_generators_are_kept_and_no_other(dpkg: PackageDB) -> None:
    """postfix.service starts postfix@-.service only through postfix's generator: it is named
    (its package's file list) and kept; apache2's sandbox keeps none, so every generator on
    the host (fstab, getty, other packages', this tool's) is masked in it."""
    ev = by_path(gather([load_unit("postfix.service")], dpkg))
    gen = [e for e in ev.values() if os.path.dirname(e.path) in GENERATOR_DIRS]
    assert [(os.path.basename(e.path), e.access, e.reasons) for e in gen] == [
        ("postfix-instance-generator", Access.SHARED,
         (GENERATOR_REASON.format(package="postfix"),))]
    assert kept_generators(tuple(ev.values())) == ("postfix-instance-generator",)
    assert kept_generators(gather([load_unit("apache2.service")], dpkg)) == ()

