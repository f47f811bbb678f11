"""A unit for a SysV init script, made as systemd itself makes it.

Some packages still ship only /etc/init.d/NAME (Debian 12's slapd). systemd runs such a
script through the unit its sysv generator makes at boot (/run/systemd/generator.late/
NAME.service), so `systemctl start slapd` works; `create -u slapd.service` must work the same.

Why the host's own generator, run into a temporary directory, and not a parser of the LSB
header of our own: the unit is then exactly the one systemd would run on this host (the
header's Required-Start/X-Start-Before mapped to After=/Before=, its `# pidfile:`, Type=forking,
RemainAfterExit=, SuccessExitStatus=5 6, the timeouts), including the generator's fixes and
quirks of this systemd version, with nothing of ours to drift from it. It writes only into the
directories it is given, takes ~30 ms, and it is on every host whose systemd can run SysV
scripts at all; where it is missing, systemd could not run the script either, and the unit is
"not installed" as before. The generator skips every script that has a native unit, so it
makes a unit only where systemd would.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

GENERATORS = ("/lib/systemd/system-generators/systemd-sysv-generator",
              "/usr/lib/systemd/system-generators/systemd-sysv-generator")
INIT_DIR = Path("/etc/init.d")
# Where systemd puts the units of late generators: what a generated unit's path is shown as.
GENERATOR_LATE = Path("/run/systemd/generator.late")


def generator() -> str | None:
    return next((g for g in GENERATORS if os.access(g, os.X_OK)), None)


def script_for(name: str, init_dir: Path = INIT_DIR) -> Path | None:
    """/etc/init.d/PREFIX for PREFIX.service, if it is an executable file."""
    prefix, dot, kind = name.rpartition(".")
    if not dot or kind != "service" or "@" in prefix or "/" in prefix or not prefix:
        return None
    script = init_dir / prefix
    return script if script.is_file() and os.access(script, os.X_OK) else None


def generate(name: str, init_dir: Path = INIT_DIR) -> tuple[str, Path] | None:
    """(the unit's text, its init script) for `name`, or None where systemd has none."""
    script = script_for(name, init_dir)
    gen = generator()
    if script is None or gen is None:
        return None
    with tempfile.TemporaryDirectory(prefix="vss-sysv-") as tmp:
        out = [os.path.join(tmp, d) for d in ("normal", "early", "late")]
        for d in (*out, os.path.join(tmp, "rc")):
            os.mkdir(d)
        # Its own paths: the init scripts, and an empty rc directory (nothing is enabled).
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_LEVEL": "err",
               "SYSTEMD_SYSVINIT_PATH": str(init_dir),
               "SYSTEMD_SYSVRC_PATH": os.path.join(tmp, "rc")}
        proc = subprocess.run([gen, *out], env=env, capture_output=True, text=True,
                              check=False, timeout=30)
        unit = Path(out[2]) / name
        if proc.returncode != 0 or not unit.is_file() or unit.is_symlink():
            return None
        return unit.read_text(), script
