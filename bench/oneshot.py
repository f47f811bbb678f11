"""Benchmark: a one-shot /bin/true in a sandbox, against its peers.

Prints medians of N runs and ratios, writes bench/results/oneshot.md (and .json).
    .venv/bin/python bench/oneshot.py [--runs 5]
- ours: `virt-sandbox-service run -- /bin/true` (a transient sandbox; "run: not implemented" if
  this version lacks it), and `start NAME` of a generic sandbox created beforehand with
  `create NAME -- /bin/true` (foreground, returns the command's status);
- raw libvirt: the generic sandbox's own domain XML through `virsh create`, until it is gone;
- podman (installed by scripts/bench-peers.sh): `podman run --rm --rootfs /:O --network=none
  /bin/true`, with the ulimits and cgroup manager this machine needs (HOST-NOTES.md), the
  rootless-free root of the host as an overlay, as our run shares it;
- bare `unshare -fpm --mount-proc /bin/true` (the namespace floor);
- the CLI's own start-up: `python3 -c 'import libvirt'` from the venv (no sandbox at all).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import libvirt
from _common import (
    median,
    on_sigterm_clean_up,
    ratio,
    raw_copy_xml,
    secs,
    shutdown_raw,
    tool,
    tool_env,
    virsh_create,
    wait_gone,
    write_result,
    xml_file,
)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, env=env, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode()}")
    return took


def one_raw(conn: libvirt.virConnect, path: str, raw: str) -> float:
    try:
        t0 = time.monotonic()
        virsh_create(path)
        return wait_gone(conn, raw) - t0
    finally:
        shutdown_raw(conn, raw)  # only removes the cgroups its init left


RUN = "ours: run -- /bin/true"
START = "ours: start of a generic sandbox (/bin/true)"
RAW = "raw virsh create (same XML), until gone"
BARE = "bare unshare -fpm --mount-proc /bin/true"
PY = "CLI start-up only: python3 -c 'import libvirt'"
PODMAN = "podman run --rm --rootfs /:O --network=none /bin/true"
PODMAN_ARGV = ["podman", "run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit",
               "nproc=1024:1024", "--cgroup-manager=cgroupfs", "--network=none", "--rootfs",
               "/:O", "/bin/true"]


def main() -> None:
    on_sigterm_clean_up()
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cli = [sys.executable, "-m", "virt_sandbox_service.cli"]
    conn = libvirt.open("lxc:///")
    podman = shutil.which("podman") is not None
    got: dict[str, list[float]] = {k: [] for k in (RUN, START, RAW, PODMAN, BARE, PY)}
    with tool_env() as env:
        has_run = tool(env, "run", "--help", check=False).returncode == 0
        if not has_run:
            print("run: not implemented (the `run` command does not exist yet)")
        name = f"benchone{secrets.token_hex(3)}"
        tool(env, "create", name, "--", "/bin/true")
        (Path(env["VSS_RUN_DIR"]) / name).mkdir(parents=True, exist_ok=True)
        raw = name + "x"
        with xml_file(raw_copy_xml(conn, name, raw)) as path:
            # Interleaved, so that the shared machine's load shifts every figure alike.
            for _ in range(args.runs):
                if has_run:
                    got[RUN].append(timed([*cli, "run", "--", "/bin/true"], env))
                got[START].append(timed([*cli, "start", name], env))
                got[RAW].append(one_raw(conn, path, raw))
                if podman:
                    got[PODMAN].append(timed(PODMAN_ARGV))
                got[BARE].append(timed(["unshare", "-fpm", "--mount-proc", "/bin/true"]))
                got[PY].append(timed([sys.executable, "-c", "import libvirt"]))
    figures = {k: median(v) if v else None for k, v in got.items()}
    ours, raw_t, bare, pod = figures[RUN], figures[RAW], figures[BARE], figures[PODMAN]
    body = ["| what | seconds | ratio ours(run)/this |", "|---|---|---|"]
    for key, value in figures.items():
        shown = "not implemented" if value is None else secs(value)
        body.append(f"| {key} | {shown} | {ratio(ours, value) if value else '-'} |")
    body += ["", "Wall time of the whole command, from fork to exit status, each a fresh "
             "process. `run` returns as soon as the status is known (the transient domain goes "
             "away after it); the raw virsh figure waits until the domain is gone. podman: "
             + (" ".join(PODMAN_ARGV) if podman else
                "not installed (scripts/bench-peers.sh installs it)") + "."]
    summary = [{"figure": "one-shot /bin/true", "unit": "s", "ours": ours,
                "peers": {"raw virsh": raw_t, "podman": pod, "unshare": bare}}]
    write_result("oneshot", "one-shot /bin/true against peers", args.runs, body, summary)


if __name__ == "__main__":
    main()
