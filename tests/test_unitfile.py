"""unitfile: real Debian units installed on this host, and edge cases written into tmp_path."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from virt_sandbox_service.errors import UserError
from virt_sandbox_service.unitfile import (
    SYSTEM_UNIT_PATH,
    load_unit,
    resolve_unit_name,
)

VENDOR = Path("/lib/systemd/system")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A two-level search path: etc (high priority) and lib (vendor)."""
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    return etc, lib


# --- names --------------------------------------------------------------------------------------


def test_search_path_is_systemds_order() -> None:
    assert [str(p) for p in SYSTEM_UNIT_PATH] == [
        "/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
        "/lib/systemd/system", "/usr/lib/systemd/system",
    ]


@pytest.mark.parametrize(("spec", "expected"), [
    ("apache2", "apache2.service"),
    ("apache2.service", "apache2.service"),
    ("postfix@.service", "postfix@web1.service"),
    ("postfix@", "postfix@web1.service"),
    ("postfix@other.service", "postfix@other.service"),
    ("ssh.socket", "ssh.socket"),
    ("multi-user.target", "multi-user.target"),
    ("logrotate.timer", "logrotate.timer"),
    ("postfix-resolvconf.path", "postfix-resolvconf.path"),
    ("my.app", "my.app.service"),
])
def test_resolve_unit_name(spec: str, expected: str) -> None:
    assert resolve_unit_name(spec, "web1") == expected


def test_resolve_unit_name_escapes_instance_like_systemd_escape() -> None:
    assert resolve_unit_name("foo@.service", "web-1") == "foo@web\\x2d1.service"
    assert resolve_unit_name("foo@.service", "a+b.c") == "foo@a\\x2bb.c.service"
    assert resolve_unit_name("foo@.service", ".hidden") == "foo@\\x2ehidden.service"


@pytest.mark.parametrize("spec", ["", "foo bar", "a@b@c.service", "@.service", "ünï"])
def test_resolve_unit_name_rejects_invalid(spec: str) -> None:
    with pytest.raises(UserError) as e:
        resolve_unit_name(spec, "web1")
    assert e.value.message == f"'{spec}' is not a valid systemd unit name"
    assert e.value.hint is not None and "apache2.service" in e.value.hint


def test_resolve_unit_name_rejects_path() -> None:
    with pytest.raises(UserError, match="is a path, not a unit name"):
        resolve_unit_name("/lib/systemd/system/apache2.service", "web1")


# --- real units shipped by Debian ---------------------------------------------------------------


def test_apache2() -> None:
    unit = load_unit("apache2.service")
    assert unit.name == "apache2.service"
    assert unit.path == VENDOR / "apache2.service"
    assert unit.package_path == VENDOR / "apache2.service"
    assert unit.value("Unit", "Description") == "The Apache HTTP Server"
    assert unit.values("Service", "ExecStart") == ["/usr/sbin/apachectl start"]
    assert unit.value("Service", "PrivateTmp") == "true"
    assert unit.values("Install", "WantedBy") == ["multi-user.target"]
    assert unit.value("Service", "StateDirectory") is None
    assert unit.values("Service", "NoSuchKey") == []
    assert unit.values("NoSuchSection", "Type") == []
    assert [s.name for s in unit.sections] == ["Unit", "Service", "Install"]


def test_nginx_keeps_quotes_and_skips_comment_header() -> None:
    unit = load_unit("nginx.service")
    assert unit.values("Service", "ExecStartPre") == [
        "/usr/sbin/nginx -t -q -g 'daemon on; master_process on;'"]
    assert unit.value("Service", "PIDFile") == "/run/nginx.pid"
    assert unit.value("Service", "ExecStop") == (
        "-/sbin/start-stop-daemon --quiet --stop --retry QUIT/5 --pidfile /run/nginx.pid")
    first = unit.sections[0].entries[0]
    assert (first.key, first.line) == ("Description", 14)  # after 12 comment lines and [Unit]


def test_ssh_repeated_keys_in_order() -> None:
    unit = load_unit("ssh.service")
    assert unit.values("Service", "ExecReload") == ["/usr/sbin/sshd -t", "/bin/kill -HUP $MAINPID"]
    assert unit.value("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit.value("Service", "RuntimeDirectory") == "sshd"
    assert unit.value("Install", "Alias") == "sshd.service"


def test_alias_symlink_is_followed_to_the_real_unit(tmp_path: Path) -> None:
    (tmp_path / "sshd.service").symlink_to(VENDOR / "ssh.service")
    unit = load_unit("sshd.service", [tmp_path, VENDOR])
    assert unit.name == "ssh.service"
    assert unit.path == VENDOR / "ssh.service"
    assert unit.package_path == VENDOR / "ssh.service"
    assert unit.value("Unit", "Description") == "OpenBSD Secure Shell server"


def test_cron() -> None:
    unit = load_unit("cron.service")
    assert unit.values("Service", "EnvironmentFile") == ["-/etc/default/cron"]
    assert unit.value("Service", "ExecStart") == "/usr/sbin/cron -f $EXTRA_OPTS"


def test_postfix_template_instance_expands_i() -> None:
    name = resolve_unit_name("postfix@.service", "web1")
    unit = load_unit(name)
    assert unit.name == "postfix@web1.service"
    assert unit.path == VENDOR / "postfix@.service"
    assert unit.package_path == VENDOR / "postfix@.service"
    assert unit.value("Unit", "Description") == "Postfix Mail Transport Agent (instance web1)"
    assert unit.values("Service", "ExecStart") == ["/usr/sbin/postmulti -i web1 -p start"]
    assert unit.value("Service", "ExecStartPre") == "/usr/lib/postfix/configure-instance.sh web1"


def test_merged_usr_directory_is_read_once() -> None:
    # /lib and /usr/lib are one directory here: the unit is found under the first name.
    unit = load_unit("apache2.service")
    assert unit.search_path.count(Path("/usr/lib/systemd/system")) == (
        0 if os.path.realpath("/lib") == "/usr/lib" else 1)


def test_unknown_unit_message() -> None:
    with pytest.raises(UserError) as e:
        load_unit("no-such-daemon.service")
    assert e.value.message == "unit 'no-such-daemon.service' is not installed on this host"
    assert e.value.hint is not None
    assert "systemctl list-unit-files" in e.value.hint
    assert "install the package" in e.value.hint


def test_unknown_template_instance_message(dirs: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match=r"^unit 'nope@web1\.service' is not installed"):
        load_unit("nope@web1.service", dirs)


def test_template_itself_cannot_be_loaded() -> None:
    with pytest.raises(UserError) as e:
        load_unit("postfix@.service")
    assert e.value.message == "unit 'postfix@.service' is a template"
    assert e.value.hint == "name an instance of it, e.g. postfix@web1.service"


# --- parser edge cases --------------------------------------------------------------------------


def test_comments_continuations_and_quotes(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    write(etc / "x.service", (
        "# comment\n"
        "; another comment\n"
        "[Service]\n"
        "ExecStart=/bin/echo \\\n"
        "  a \\\n"
        "# a comment inside a continuation is skipped\n"
        "  b\n"
        "Environment=\"A=1 2\" 'B=3'   \n"
        "ExecStop=/bin/true \\\\\n"
        "Type=simple\n"
        "   Nice = 5\n"
        ".include /etc/other.service\n"
    ))
    unit = load_unit("x.service", dirs)
    assert unit.value("Service", "ExecStart") == "/bin/echo    a    b"
    assert unit.value("Service", "Environment") == "\"A=1 2\" 'B=3'"
    # An escaped backslash does not continue the line.
    assert unit.value("Service", "ExecStop") == "/bin/true \\\\"
    assert unit.value("Service", "Type") == "simple"
    assert unit.value("Service", "Nice") == "5"
    entries = unit.assignments("Service", "Type")
    assert (entries[0].file, entries[0].line) == (etc / "x.service", 10)


def test_empty_assignment_resets_the_list(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    write(etc / "x.service", "[Service]\nExecStartPre=/a\nExecStartPre=/b\nExecStartPre=\n"
                             "ExecStartPre=/c\n")
    unit = load_unit("x.service", dirs)
    assert unit.values("Service", "ExecStartPre") == ["/c"]


def test_empty_assignment_last_means_unset(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    write(etc / "x.service", "[Service]\nUser=www-data\nUser=\n")
    assert load_unit("x.service", dirs).value("Service", "User") is None


def test_dropins_override_in_systemd_order(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "web.service", "[Service]\nExecStart=/usr/bin/web\nUser=web\nNice=1\n")
    # Same file name in a higher-priority directory replaces the vendor one.
    write(lib / "web.service.d/10-vendor.conf", "[Service]\nUser=vendor\n")
    write(etc / "web.service.d/10-vendor.conf", "[Service]\nUser=admin\n")
    # Files apply sorted by name across directories: lib's 20- after etc's 10-.
    write(lib / "web.service.d/20-later.conf", "[Service]\nExecStart=\nExecStart=/usr/bin/web2\n")
    write(etc / "web.service.d/05-early.conf", "[Service]\nNice=7\n")
    write(etc / "web.service.d/README", "[Service]\nNice=99\n")  # not .conf: ignored
    unit = load_unit("web.service", dirs)
    assert unit.dropins == (
        etc / "web.service.d/05-early.conf",
        etc / "web.service.d/10-vendor.conf",
        lib / "web.service.d/20-later.conf",
    )
    assert unit.value("Service", "User") == "admin"
    assert unit.values("Service", "ExecStart") == ["/usr/bin/web2"]
    assert unit.value("Service", "Nice") == "7"


def test_masked_dropin_hides_the_vendor_one(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "web.service", "[Service]\nUser=web\n")
    write(lib / "web.service.d/10-x.conf", "[Service]\nUser=vendor\n")
    (etc / "web.service.d").mkdir()
    (etc / "web.service.d/10-x.conf").symlink_to("/dev/null")
    unit = load_unit("web.service", dirs)
    assert unit.dropins == ()
    assert unit.value("Service", "User") == "web"


def test_type_template_and_prefix_dropins(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "app-db@.service", "[Service]\nExecStart=/bin/app %i\n")
    write(lib / "service.d/10-type.conf", "[Service]\nA=type\nB=type\nC=type\nD=type\n")
    write(lib / "app-.service.d/10-prefix.conf", "[Service]\nB=prefix\n")
    write(lib / "app-db@.service.d/10-template.conf", "[Service]\nC=template\n")
    write(etc / "app-db@x.service.d/10-instance.conf", "[Service]\nD=instance\n")
    unit = load_unit("app-db@x.service", dirs)
    assert unit.path == lib / "app-db@.service"
    assert [p.name for p in unit.dropins] == [
        "10-instance.conf", "10-prefix.conf", "10-template.conf", "10-type.conf"]
    assert [unit.value("Service", k) for k in "ABCD"] == ["type", "type", "type", "type"]
    # Sorted by name, "10-type.conf" comes last; give the specific ones later names to win.
    write(lib / "app-.service.d/50-prefix.conf", "[Service]\nB=prefix\n")
    write(lib / "app-db@.service.d/60-template.conf", "[Service]\nC=template\n")
    write(etc / "app-db@x.service.d/70-instance.conf", "[Service]\nD=instance\n")
    unit = load_unit("app-db@x.service", dirs)
    assert [unit.value("Service", k) for k in "ABCD"] == ["type", "prefix", "template", "instance"]


def test_same_name_dropin_specific_directory_wins_over_type_level(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "web.service", "[Service]\n")
    write(etc / "service.d/10-x.conf", "[Service]\nUser=type\n")
    write(lib / "web.service.d/10-x.conf", "[Service]\nUser=unit\n")
    unit = load_unit("web.service", dirs)
    assert unit.dropins == (lib / "web.service.d/10-x.conf",)
    assert unit.value("Service", "User") == "unit"


def test_instance_fragment_beats_template(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(etc / "app@.service", "[Service]\nUser=template\n")
    write(lib / "app@x.service", "[Service]\nUser=instance\n")
    unit = load_unit("app@x.service", dirs)
    assert unit.path == lib / "app@x.service"
    assert unit.value("Service", "User") == "instance"
    other = load_unit("app@y.service", dirs)
    assert other.path == etc / "app@.service"


def test_higher_priority_fragment_wins_and_package_path_is_the_vendor_copy(
        dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "web.service", "[Service]\nUser=vendor\n")
    write(etc / "web.service", "[Service]\nUser=admin\n")
    unit = load_unit("web.service", dirs)
    assert unit.path == etc / "web.service"
    assert unit.value("Service", "User") == "admin"
    assert unit.package_path == lib / "web.service"


def test_instance_override_package_path_is_the_template(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "app@.service", "[Service]\n")
    write(etc / "app@x.service", "[Service]\n")
    unit = load_unit("app@x.service", dirs)
    assert unit.path == etc / "app@x.service"
    assert unit.package_path == lib / "app@.service"


def test_alias_to_template_keeps_instance(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "real@.service", "[Service]\nExecStart=/bin/x %i %n\n")
    (etc / "other@.service").symlink_to(lib / "real@.service")
    unit = load_unit("other@a.service", dirs)
    assert unit.name == "real@a.service"
    assert unit.value("Service", "ExecStart") == "/bin/x a real@a.service"


def test_masked_unit_symlink(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "web.service", "[Service]\n")
    (etc / "web.service").symlink_to("/dev/null")
    with pytest.raises(UserError) as e:
        load_unit("web.service", dirs)
    assert e.value.message == (
        f"unit 'web.service' is masked ({etc / 'web.service'} is empty or links to /dev/null)")
    assert e.value.hint == "'systemctl unmask web.service' if the service should run"


def test_masked_unit_empty_file(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    write(etc / "web.service", "")
    with pytest.raises(UserError, match=r"^unit 'web\.service' is masked"):
        load_unit("web.service", dirs)


def test_dangling_symlink(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    (etc / "web.service").symlink_to(etc / "gone.service")
    with pytest.raises(UserError) as e:
        load_unit("web.service", dirs)
    assert e.value.message == (
        f"unit 'web.service': {etc / 'web.service'} does not lead to a readable file")


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("[Service\nUser=x\n", 1, "invalid section header '[Service'"),
    ("User=x\n", 1, "assignment before any [Section]"),
    ("[Service]\n\nUser x\n", 3, "expected Key=value, got 'User x'"),
    ("[Service]\n=value\n", 2, "expected Key=value, got '=value'"),
])
def test_malformed_names_file_and_line(dirs: tuple[Path, Path], text: str, line: int,
                                       problem: str) -> None:
    etc, _ = dirs
    write(etc / "bad.service", text)
    with pytest.raises(UserError) as e:
        load_unit("bad.service", dirs)
    assert e.value.message == f"unit 'bad.service': {etc / 'bad.service'}:{line}: {problem}"
    assert e.value.hint is not None and "systemd.syntax(7)" in e.value.hint


def test_malformed_dropin_is_named(dirs: tuple[Path, Path]) -> None:
    etc, lib = dirs
    write(lib / "web.service", "[Service]\n")
    dropin = write(etc / "web.service.d/x.conf", "[Service]\nbroken\n")
    with pytest.raises(UserError, match=f"^unit 'web.service': {dropin}:2: expected Key=value"):
        load_unit("web.service", dirs)


def test_not_utf8(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    (etc / "bin.service").write_bytes(b"[Service]\nUser=\xff\n")
    with pytest.raises(UserError) as e:
        load_unit("bin.service", dirs)
    assert e.value.message == (
        f"unit 'bin.service': cannot read {etc / 'bin.service'}: not UTF-8 text")


# --- specifiers ---------------------------------------------------------------------------------


def test_specifiers(dirs: tuple[Path, Path]) -> None:
    _, lib = dirs
    write(lib / "my-app@.service", (
        "[Service]\n"
        "A=%i|%I|%n|%N|%p|%P|%f|%j\n"
        "B=%t|%S|%C|%L|%E|%T|%V\n"
        "C=%h|%u|%U|%g|%G|%s|100%%|%y|%Y\n"
    ))
    name = resolve_unit_name("my-app@.service", "web-1")
    unit = load_unit(name, dirs)
    assert unit.value("Service", "A") == (
        "web\\x2d1|web-1|my-app@web\\x2d1.service|my-app@web\\x2d1|my-app|my/app|/web-1|app")
    assert unit.value("Service", "B") == "/run|/var/lib|/var/cache|/var/log|/etc|/tmp|/var/tmp"
    shell = pwd.getpwuid(0).pw_shell  # systemd 252's %h and %s: see test_specifiers.py
    assert unit.value("Service", "C") == (
        f"/|root|0|root|0|{shell}|100%|{lib / 'my-app@.service'}|{lib}")


def test_specifier_f_without_instance(dirs: tuple[Path, Path]) -> None:
    _, lib = dirs
    write(lib / "dev-sda1.service", "[Service]\nA=%f %i.\n")
    assert load_unit("dev-sda1.service", dirs).value("Service", "A") == "/dev/sda1 ."


def test_host_specifiers_need_the_callers_values(dirs: tuple[Path, Path]) -> None:
    _, lib = dirs
    write(lib / "h.service", "[Service]\nA=%H %l %m\nB=plain\n")
    unit = load_unit("h.service", dirs)
    assert unit.value("Service", "B") == "plain"  # other keys still readable
    with pytest.raises(UserError) as e:
        unit.value("Service", "A")
    assert e.value.message == (
        f"unit 'h.service' uses %H in A= ({lib / 'h.service'}:2), "
        "but the sandbox's host name and machine ID are not known here")
    named = load_unit("h.service", dirs, hostname="web1.example.org", machine_id="ab" * 16)
    assert named.value("Service", "A") == f"web1.example.org web1 {'ab' * 16}"


def test_unknown_specifier(dirs: tuple[Path, Path]) -> None:
    _, lib = dirs
    write(lib / "s.service", "[Service]\nA=%z\n")
    with pytest.raises(UserError) as e:
        load_unit("s.service", dirs).values("Service", "A")
    assert e.value.message == (
        f"unit 's.service' uses unknown specifier %z in A= ({lib / 's.service'}:2)")
