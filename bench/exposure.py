"""`systemd-analyze security` exposure of each daemon's unit on the host, against the same
unit as its sandbox's systemd loads it (the host's fragment and drop-ins, then ours).

Each sandbox is made by the real `create` (private config/state dirs, deleted after); the
sandbox's view of the unit is read offline from its private /etc/systemd/system. The score
rates the unit's own settings only: what the sandbox adds around it (read-only host root,
private /etc, /var and /tmp, no network, its own PID namespace, and the same seccomp filter
and capability set applied to its systemd) is not in it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

from _common import on_sigterm_clean_up, state_dir, tool, tool_env, write_result

# Daemons the tests and the demo run, and others when installed; cap-add as a daemon needs.
DAEMONS = (("apache2.service", ()), ("nginx.service", ()),
           ("chrony.service", ("--cap-add", "sys_time")), ("ssh.service", ()),
           ("cron.service", ()), ("postfix@-.service", ()))
SCORE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def exposure(unit: str, unit_path: str | None = None) -> float | None:
    env = dict(os.environ)
    if unit_path:
        env["SYSTEMD_UNIT_PATH"] = f"{unit_path}:"  # first, then the default path
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit],
                          capture_output=True, text=True, env=env, check=False)
    m = SCORE.search(proc.stdout + proc.stderr)
    return float(m.group(1)) if m else None


def installed(unit: str) -> bool:
    template = re.sub(r"@[^.]*\.", "@.", unit)
    return any(Path(d, n).exists() for d in ("/lib/systemd/system", "/etc/systemd/system")
               for n in (unit, template))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)  # one: the score is deterministic
    ap.parse_args()
    on_sigterm_clean_up()
    rows, summary = [], []
    with tool_env() as env:
        for i, (unit, extra) in enumerate(DAEMONS):
            if not installed(unit):
                continue
            name = f"exp{i}"
            tool(env, "create", *extra, "-u", unit, name)
            inner = state_dir(env, name) / "etc" / "systemd" / "system"
            host, ours = exposure(unit), exposure(unit, str(inner))
            tool(env, "delete", name)
            flags = " ".join(extra) or "-"
            rows.append(f"| {unit} | {flags} | {host} | {ours} |")
            summary.append({"figure": f"systemd-analyze security exposure: {unit}",
                            "unit": "", "ours": ours, "peers": {"host unit": host}})
    body = ["| unit | options | exposure on the host | exposure in its sandbox |",
            "|---|---|---|---|", *rows, "",
            "Lower is better (0-10). The score counts the unit's own settings only; the "
            "sandbox's read-only host root, private trees, network and PID namespaces are "
            "around it and not counted."]
    write_result("exposure", "systemd-analyze security exposure, host unit vs sandboxed unit",
                 1, body, summary)


if __name__ == "__main__":
    main()
