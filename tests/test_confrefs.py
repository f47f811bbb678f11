"""Host secrets named in the service's own configuration, readable by its user on the host,
are the service's (virt_sandbox_service/confrefs.py): freeradius's snakeoil key, read through
its supplementary group ssl-cert. Real files with real owners under a temporary root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virt_sandbox_service import confrefs, evidence, unitfile
from virt_sandbox_service.confrefs import Reader

from .conftest import need

SSL_CERT_GID = 4242
FREERAD = Reader(4100, frozenset({4100, SSL_CERT_GID}))
OTHER = Reader(4200, frozenset({4200}))
EAP = """eap {
\t# private_key_file = /etc/ssl/private/commented.key
\tprivate_key_file = /etc/ssl/private/snakeoil.key
\tcertificate_file = "/etc/ssl/certs/snakeoil.pem";
\tshadow = /etc/shadow
\tlink = /etc/ssl/private/link.key
}
"""


def test_named_paths_skip_comments_and_trim_punctuation() -> None:
    assert confrefs.named_paths(EAP) == ["/etc/ssl/private/snakeoil.key",
                                         "/etc/ssl/certs/snakeoil.pem", "/etc/shadow",
                                         "/etc/ssl/private/link.key"]
    assert confrefs.named_paths("; path = /etc/x\n// /etc/y\nv=${x}/etc/z a/etc/q") == []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    need(os.geteuid() == 0, "needs root (chown)")
    private = tmp_path / "etc/ssl/private"
    private.mkdir(parents=True)
    (tmp_path / "etc/ssl/certs").mkdir()
    os.chown(private, 0, SSL_CERT_GID)
    private.chmod(0o710)
    for name in ("snakeoil.key", "commented.key"):
        (private / name).write_text("KEY\n")
        os.chown(private / name, 0, SSL_CERT_GID)
        (private / name).chmod(0o640)
    (private / "link.key").symlink_to("snakeoil.key")
    (tmp_path / "etc/ssl/certs/snakeoil.pem").write_text("CERT\n")
    (tmp_path / "etc/shadow").write_text("root:*:1::::::\n")
    (tmp_path / "etc/shadow").chmod(0o640)
    os.chown(tmp_path / "etc/shadow", 0, SSL_CERT_GID)
    (tmp_path / "etc/radius").mkdir()
    (tmp_path / "etc/radius/eap").write_text(EAP)
    return tmp_path


def test_a_key_its_user_reads_through_a_supplementary_group_is_named(root: Path) -> None:
    found = confrefs.secrets_named(["/etc/radius/eap"], FREERAD, root)
    # Not the commented one, not the world-readable certificate (seen anyway), not the
    # account database, not a link.
    assert [(n.path, n.where, n.is_dir) for n in found] == [
        ("/etc/ssl/private/snakeoil.key", "/etc/radius/eap", False)]


def test_nothing_a_user_cannot_read_on_the_host(root: Path) -> None:
    assert confrefs.secrets_named(["/etc/radius/eap"], OTHER, root) == []


def test_root_reads_everything_named_but_never_the_account_databases(root: Path) -> None:
    found = confrefs.secrets_named(["/etc/radius/eap"], Reader(0, frozenset({0})), root)
    assert [n.path for n in found] == ["/etc/ssl/private/snakeoil.key"]


def test_the_reader_has_the_users_supplementary_groups(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                     "freerad:x:110:118::/etc/freeradius:/usr/sbin/nologin\n")
    (tmp_path / "group").write_text("freerad:x:118:\nssl-cert:x:103:postgres,freerad\n"
                                    "shadow:x:42:\n")
    assert confrefs.reader("freerad", tmp_path) == Reader(110, frozenset({118, 103}))
    assert confrefs.reader("110", tmp_path) == Reader(110, frozenset({118, 103}))
    assert confrefs.reader(None, tmp_path) == Reader(0, frozenset({0}))
    assert confrefs.reader("nobody-here", tmp_path) is None


def test_freeradius_evidence_gives_it_the_snakeoil_key() -> None:
    need(Path("/lib/systemd/system/freeradius.service").exists(),
         "freeradius is installed by scripts/test-daemons.sh")
    need(Path("/etc/ssl/private/ssl-cert-snakeoil.key").exists(), "ssl-cert made its key")
    unit = unitfile.load_unit("freeradius.service")
    pkgdb = evidence.detect_package_db()
    found = {e.path: e for e in evidence.gather([unit], pkgdb)}
    key = found["/etc/ssl/private/ssl-cert-snakeoil.key"]
    assert key.access is evidence.Access.PRIVATE
    assert key.reasons == ("named in /etc/freeradius/3.0/mods-available/eap (the service's "
                           "configuration), readable by freerad on the host",)
    hidden = evidence.hidden_secrets(Path("/etc"), [p for p in found if p.startswith("/etc")])
    assert "/etc/ssl/private/ssl-cert-snakeoil.key" not in {h.path for h in hidden}
    assert "/etc/shadow" in {h.path for h in hidden}  # freerad is in group shadow too


def test_a_unit_run_as_root_gets_no_secret_its_configuration_names() -> None:
    """apache2 (root) names the snakeoil key in its disabled default-ssl site: no evidence."""
    need(Path("/lib/systemd/system/apache2.service").exists(), "apache2 is installed")
    need(Path("/etc/ssl/private/ssl-cert-snakeoil.key").exists(), "ssl-cert made its key")
    found = {e.path for e in evidence.gather([unitfile.load_unit("apache2.service")],
                                             evidence.detect_package_db())}
    assert "/etc/ssl/private/ssl-cert-snakeoil.key" not in found
