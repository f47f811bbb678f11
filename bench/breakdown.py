"""Where the time of `start`, `stop` and `run` goes: a breakdown, not a race.

Prints medians of N runs of each phase and writes bench/results/breakdown.md (and .json), so
the next person sees where each millisecond goes before changing anything. Asserts nothing.
Run as root after scripts/setup.sh:
    .venv/bin/python bench/breakdown.py [--runs 5]
Phases:
- the tool's own Python: the interpreter alone, then the imports each command needs;
- stop: the request to the sandbox's systemd (initctl, as libvirt sends it, against
  SIGRTMIN+4 through a pidfd, as `stop` sends it now) until its PID 1 exits; then until
  libvirt's LXC controller exits, until that controller is reaped, and until libvirt reports
  the domain inactive;
- start: the whole `start --detach`, and the host-side scan for new host secrets it does
  first (hide_new_secrets).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import libvirt
from _common import (
    ROOT,
    compile_tool,
    median,
    on_sigterm_clean_up,
    secs,
    tool,
    tool_env,
    write_result,
)

PYTHON = str(ROOT / ".venv" / "bin" / "python")
IMPORTS = {
    "interpreter alone (python -c pass)": "pass",
    "cli (argparse, names and paths; the config module loads on use)":
        "import virt_sandbox_service.cli",
    "cli + the config module (every command that reads a sandbox's config)":
        "import virt_sandbox_service.cli, virt_sandbox_service.config",
    "stop's power-off request (cli, runtime.poweroff; before the config module and libvirt)":
        "import virt_sandbox_service.cli, virt_sandbox_service.runtime.poweroff",
    "cli + the LXC runtime (start, stop)":
        "import virt_sandbox_service.cli, virt_sandbox_service.runtime.lxc",
    "cli + one-shot run (LXC)": "import virt_sandbox_service.cli, "
                                "virt_sandbox_service.runtime.oneshot, "
                                "virt_sandbox_service.domain.lxc",
    "libvirt-python alone": "import libvirt",
}


def python_time(code: str) -> float:
    t0 = time.monotonic()
    subprocess.run([PYTHON, "-c", code], check=True, cwd=ROOT)
    return time.monotonic() - t0


def init_of(dom: libvirt.virDomain) -> int:
    ctl = dom.ID()
    return int(Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()[0])


def stop_phases(conn: libvirt.virConnect, name: str, how: str) -> dict[str, float]:
    dom = conn.lookupByName(name)
    ctl = dom.ID()
    init = os.pidfd_open(init_of(dom))
    ctl_fd = os.pidfd_open(ctl)
    t0 = time.monotonic()
    if how == "initctl":
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
    else:
        signal.pidfd_send_signal(init, signal.SIGRTMIN + 4)
    select.select([init], [], [], 30)
    out = {"request to PID 1 gone": time.monotonic() - t0}
    select.select([ctl_fd], [], [], 30)
    out["controller gone"] = time.monotonic() - t0
    # As `stop` waits: asking libvirt every 5 ms.
    while True:
        if "controller reaped" not in out and not os.path.exists(f"/proc/{ctl}"):
            out["controller reaped"] = time.monotonic() - t0
        if not dom.isActive():
            break
        time.sleep(0.005)
    out.setdefault("controller reaped", time.monotonic() - t0)
    out["libvirt: inactive"] = time.monotonic() - t0
    os.close(init)
    os.close(ctl_fd)
    return out


def drained_phases(conn: libvirt.virConnect, name: str) -> dict[str, float]:
    """`stop` now: SIGRTMIN+4, then, once the sandbox's systemd has stopped every service,
    a pause and destroy of the domain (runtime/lxcstop.Drain)."""
    from virt_sandbox_service.runtime.enter import init_process
    from virt_sandbox_service.runtime.lxcstop import Drain

    dom = conn.lookupByName(name)
    init = init_process(dom)
    assert init is not None
    t0 = time.monotonic()
    init.power_off()
    drain = Drain.of(dom, init)
    assert drain is not None, "no cgroup2 tree of the sandbox's systemd to watch"
    try:
        drained = drain.wait(init, 30)
        out = {"request to services drained": time.monotonic() - t0}
        assert drained and drain.end(dom, init), "the drained end was not taken"
        out["paused, destroyed, cgroups gone: libvirt inactive"] = time.monotonic() - t0
    finally:
        drain.close()
        init.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    on_sigterm_clean_up()
    sys.path.insert(0, str(ROOT))
    compile_tool()
    imports = {k: median([python_time(c) for _ in range(args.runs)])
               for k, c in IMPORTS.items()}
    stops: dict[str, dict[str, list[float]]] = {"initctl": {}, "SIGRTMIN+4": {}}
    drains: dict[str, list[float]] = {}
    cli: dict[str, list[float]] = {"start --detach": [], "stop": [], "new-secrets scan": []}
    with tool_env() as env:
        name = f"bd{os.getpid()}"
        tool(env, "create", "-u", "apache2.service", name)
        conn = libvirt.open("lxc:///")
        try:
            from virt_sandbox_service.config import Paths, load_config
            from virt_sandbox_service.runtime.lxc import hide_new_secrets

            cfg = load_config(Paths.from_env(env), name)
            for _ in range(args.runs):
                for how in stops:
                    tool(env, "start", "--detach", name)
                    time.sleep(0.5)
                    for k, v in stop_phases(conn, name, how).items():
                        stops[how].setdefault(k, []).append(v)
                tool(env, "start", "--detach", name)
                time.sleep(0.5)
                for k, v in drained_phases(conn, name).items():
                    drains.setdefault(k, []).append(v)
                t0 = time.monotonic()
                tool(env, "start", "--detach", name)
                cli["start --detach"].append(time.monotonic() - t0)
                time.sleep(0.5)
                t0 = time.monotonic()
                tool(env, "stop", name)
                cli["stop"].append(time.monotonic() - t0)
                t0 = time.monotonic()
                hide_new_secrets(cfg)
                cli["new-secrets scan"].append(time.monotonic() - t0)
        finally:
            tool(env, "delete", "-f", name, check=False)
            conn.close()
    body = ["Medians; each phase's clock starts where the table says. Python: a fresh "
            "process each time (the venv's interpreter, the checkout installed editable, "
            "whose import finder adds a little).", "",
            "| the tool's Python | seconds |", "|---|---|",
            *[f"| {k} | {secs(v)} |" for k, v in imports.items()], "",
            "| stop, from the request, to the init's exit | initctl (libvirt's) | SIGRTMIN+4 |",
            "|---|---|---|",
            *[f"| {k} | {secs(median(stops['initctl'][k]))} | "
              f"{secs(median(stops['SIGRTMIN+4'][k]))} |" for k in stops["initctl"]], "",
            "| stop as `stop` does it now: SIGRTMIN+4, then the drained domain paused and "
            "destroyed | seconds |", "|---|---|",
            *[f"| {k} | {secs(median(v))} |" for k, v in drains.items()], "",
            "| whole commands and host-side work | seconds |", "|---|---|",
            *[f"| {k} | {secs(median(v))} |" for k, v in cli.items()], "",
            "- Between the controller's exit and libvirt's inactive state lies libvirt's own "
            "teardown: when the controller's monitor socket closes, the controller is still "
            "in the domain's cgroup, so libvirt (9.0, virCgroupKillPainfully) signals it and "
            "sleeps one 200 ms round before it looks again. That round is in every LXC "
            "domain's end, raw virsh's too. (libvirtd runs under `tini -s` here, "
            "scripts/start-daemons.sh, so the controller is reaped at once, as under "
            "systemd; this machine's PID 1 reaps only every ~1.5 s.)",
            "- `stop` now skips that round: once the sandbox's systemd has stopped every "
            "service (its cgroups but init.scope empty), the domain is paused and destroyed, "
            "libvirt's end of a paused container, which has no such round (the third "
            "table). The first two tables wait for the init's own exit, as `stop` did.",
            "- `stop` returns when libvirt reports the domain inactive (so a `start` right "
            "after it works).",
            "- `stop` sends its request before it loads the config module, libvirt and its "
            "runtime (runtime/poweroff.py): the sandbox drains while the rest of `stop` loads, so "
            "of the imports only those before the request (the first table) come before "
            "the drain."]
    figures = [{"figure": f"stop: {k}", "unit": "s", "ours": median(stops["SIGRTMIN+4"][k]),
                "peers": {"initctl": median(stops["initctl"][k])}} for k in stops["initctl"]]
    figures += [{"figure": f"stop (drained): {k}", "unit": "s", "ours": median(v),
                 "peers": {}} for k, v in drains.items()]
    figures += [{"figure": f"imports: {k}", "unit": "s", "ours": v, "peers": {}}
                for k, v in imports.items()]
    figures += [{"figure": k, "unit": "s", "ours": median(v), "peers": {}}
                for k, v in cli.items()]
    write_result("breakdown", "Where start, stop and run spend their time", args.runs, body,
                 figures)
    print("\n".join(body))


if __name__ == "__main__":
    main()
