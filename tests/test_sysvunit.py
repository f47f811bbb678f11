"""A unit named by -u that has no unit file but an init script: the unit systemd's own sysv
generator makes of it (virt_sandbox_service/sysvunit.py), loaded like any unit. Runs the
host's real generator; the daemon round trip (slapd) is in tests/test_daemons.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from virt_sandbox_service import evidence, sysvunit, unitfile
from virt_sandbox_service.errors import UserError

from .conftest import need

LSB_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          vssprobe
# Required-Start:    $remote_fs $network
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: a probe daemon
### END INIT INFO
exit 0
"""


def script(tmp_path: Path, name: str = "vssprobe") -> Path:
    init = tmp_path / "init.d"
    init.mkdir(exist_ok=True)
    path = init / name
    path.write_text(LSB_SCRIPT.replace("vssprobe", name))
    path.chmod(0o755)
    return init


def test_an_init_script_becomes_the_unit_systemds_generator_makes(tmp_path: Path) -> None:
    need(sysvunit.generator() is not None, "systemd's sysv generator (package systemd)")
    init = script(tmp_path)
    made = sysvunit.generate("vssprobe.service", init)
    assert made is not None
    text, source = made
    assert source == init / "vssprobe"
    assert f"SourcePath={init}/vssprobe" in text
    assert f"ExecStart={init}/vssprobe start" in text
    assert "Type=forking" in text and "RemainAfterExit=yes" in text
    assert "Description=LSB: a probe daemon" in text
    assert "After=network-online.target" in text  # from Required-Start: $network


@pytest.mark.parametrize("name", ["vssnone.service", "vssprobe.socket", "vssprobe@x.service",
                                  "../init.d/vssprobe.service"])
def test_no_unit_without_a_script_of_that_name(tmp_path: Path, name: str) -> None:
    assert sysvunit.generate(name, script(tmp_path)) is None


def test_a_script_with_a_native_unit_gets_no_generated_one(tmp_path: Path) -> None:
    """As systemd: the host's cron.service wins over /etc/init.d/cron."""
    need(sysvunit.generator() is not None, "systemd's sysv generator (package systemd)")
    need(Path("/lib/systemd/system/cron.service").exists(), "cron is installed")
    assert sysvunit.generate("cron.service", script(tmp_path, "cron")) is None


def test_a_name_with_neither_unit_nor_script_is_still_not_installed() -> None:
    with pytest.raises(UserError, match=r"'vss-no-such\.service' is not installed"):
        unitfile.load_unit("vss-no-such.service")


def test_slapd_loads_from_its_init_script_and_its_package_is_the_evidence() -> None:
    need(Path("/etc/init.d/slapd").exists(), "slapd is installed by scripts/test-daemons.sh")
    need(sysvunit.generator() is not None, "systemd's sysv generator (package systemd)")
    unit = unitfile.load_unit("slapd.service")
    assert unit.name == "slapd.service"
    assert unit.path == Path("/run/systemd/generator.late/slapd.service")
    assert unit.value("Service", "ExecStart") == "/etc/init.d/slapd start"
    assert unit.generated is not None and "SourcePath=/etc/init.d/slapd" in unit.generated
    assert unit.package_path == Path("/etc/init.d/slapd")
    pkgdb = evidence.detect_package_db()
    assert pkgdb is not None and pkgdb.owner(str(unit.package_path)) == "slapd"
    found = {e.path: e for e in evidence.gather([unit], pkgdb)}
    assert "package slapd (dpkg file list)" in found["/etc/ldap/schema"].reasons
    assert found["/etc/default/slapd"].access is evidence.Access.PRIVATE
