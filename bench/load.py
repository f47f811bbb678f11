"""Benchmark: a hundred apache2 sandboxes at once, each under ab on its own loopback.

All N sandboxes are created and started, then R rounds run `ab -n REQUESTS -c CONCURRENCY`
against every sandbox at the same time (inside each one's network namespace, nsenter -n).
Peer in the same run: N bare `unshare -fpmn` apache2 (no init, no systemd, no libvirt) under
the same load. Prints and writes bench/results/load.md (and .json); medians over the rounds.
Asserts nothing (tests/test_reliability.py asserts zero failed requests).
    .venv/bin/python bench/load.py [--runs 5] [--sandboxes 100] [--requests 500]
More than about 20 unit sandboxes need root's inotify room raised (doctor --fix).
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import subprocess
import time

import libvirt
from _common import (
    BareApache,
    CpuGroup,
    domain_init,
    median,
    on_sigterm_clean_up,
    parallel,
    ratio,
    state_dir,
    tool_env,
    wait_http,
    write_result,
)


def ab_round(pids: list[int], requests: int, concurrency: int,
             group: CpuGroup) -> tuple[float, float, int]:
    """One round against every pid's netns at once: (sum req/s, median req/s, failures)."""
    procs = [subprocess.Popen(group.wrap(["nsenter", "-t", str(p), "-n", "ab", "-q", "-n",
                                          str(requests), "-c", str(concurrency),
                                          "http://127.0.0.1/"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for p in pids]
    rps, failed = [], 0
    for p in procs:
        out, _err = p.communicate(timeout=600)
        if p.returncode != 0:
            failed += requests
            continue
        m = re.search(r"^Requests per second:\s+([0-9.]+)", out, re.M)
        rps.append(float(m.group(1)) if m else 0.0)
        for label in ("Failed requests", "Non-2xx responses"):
            f = re.search(rf"^{label}:\s+([0-9]+)", out, re.M)
            failed += int(f.group(1)) if f else 0
        c = re.search(r"^Complete requests:\s+([0-9]+)", out, re.M)
        failed += requests - (int(c.group(1)) if c else 0)
    return sum(rps), median(rps) if rps else 0.0, failed


def summarise(rounds: list[tuple[float, float, int]]) -> dict[str, float]:
    return {"total": median([r[0] for r in rounds]), "per": median([r[1] for r in rounds]),
            "failed": sum(r[2] for r in rounds)}


def main() -> None:
    on_sigterm_clean_up()
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5, help="load rounds")
    ap.add_argument("--sandboxes", type=int, default=100)
    ap.add_argument("--requests", type=int, default=500, help="per sandbox and round")
    ap.add_argument("--concurrency", type=int, default=10)
    args = ap.parse_args()
    if shutil.which("ab") is None:
        print("ab is not installed (Debian: apache2-utils; scripts/setup.sh installs it)")
        return
    n = args.sandboxes
    conn = libvirt.open("lxc:///")
    timings: dict[str, float] = {}
    ours_rounds: list[tuple[float, float, int]] = []
    bare_rounds: list[tuple[float, float, int]] = []
    generators = CpuGroup("ab")
    servers = CpuGroup("bare")  # like machine/ for the sandboxes: one group for them all
    bare = [BareApache(servers) for _ in range(n)]
    try:
        with tool_env() as env:
            names = [f"benchld{i:02d}{secrets.token_hex(2)}" for i in range(n)]
            t0 = time.monotonic()
            parallel(env, [["create", "-u", "apache2.service", x] for x in names])
            timings["create (all, in parallel)"] = time.monotonic() - t0
            try:
                for x in names:
                    (state_dir(env, x) / "var/www/html/index.html").write_text("ok\n")
                t0 = time.monotonic()
                parallel(env, [["start", "--detach", x] for x in names])
                timings["start --detach (all, in parallel)"] = time.monotonic() - t0
                ours = []
                for x in names:
                    dom = conn.lookupByName(x)
                    wait_http(lambda d=dom: domain_init(d))
                    pid = domain_init(dom)
                    assert pid is not None
                    ours.append(pid)
                for b in bare:
                    b.start()
                for b in bare:
                    wait_http(b.leader)
                peers = [p for p in (b.leader() for b in bare) if p]
                # Alternate rounds, so that the shared machine's load shifts both alike.
                for _ in range(args.runs):
                    ours_rounds.append(ab_round(ours, args.requests, args.concurrency,
                                                generators))
                    bare_rounds.append(ab_round(peers, args.requests, args.concurrency,
                                                generators))
            finally:
                for b in bare:
                    b.stop()
                t0 = time.monotonic()
                parallel(env, [["delete", "--force", x] for x in names])
                timings["delete --force (all, in parallel)"] = time.monotonic() - t0
    finally:
        for b in bare:
            b.stop()
        generators.remove()
        servers.remove()
    ours_f, peer = summarise(ours_rounds), summarise(bare_rounds)
    body = [f"{n} instances at once, each under `ab -n {args.requests} -c {args.concurrency}` "
            "on its own loopback, all rounds in parallel; apache2's default page, keep-alive "
            "off. Medians over the rounds.", "",
            "| | ours | bare unshare apache2 | ratio ours/bare |", "|---|---|---|---|",
            f"| requests/s, all instances together | {ours_f['total']:.0f} | {peer['total']:.0f} "
            f"| {ratio(ours_f['total'], peer['total'])} |",
            f"| requests/s, median instance | {ours_f['per']:.0f} | {peer['per']:.0f} | "
            f"{ratio(ours_f['per'], peer['per'])} |",
            f"| failed requests (all rounds) | {ours_f['failed']:.0f} | {peer['failed']:.0f} | |",
            ""]
    body += [f"- {k}: {v:.1f} s" for k, v in timings.items()]
    body += ["", "The load generators run on the same 2 cores as the servers: the totals are "
             "bounded by the machine; the ratio is what the sandbox costs under load (higher is "
             "better). CPU fairness: libvirt puts all sandboxes in one cpu cgroup (machine/, "
             "1024 shares); the bare servers get one such group of their own, and the ab "
             "processes another, so that both set-ups fight the load generators alike."]
    summary = [{"figure": f"requests/s, {n} apache2 sandboxes under ab at once", "unit": "req/s",
                "ours": ours_f["total"], "peers": {"unshare": peer["total"]}},
               {"figure": "failed requests under load", "unit": "", "ours": ours_f["failed"],
                "peers": {"unshare": peer["failed"]}}]
    write_result("load", f"{n} apache2 sandboxes under load", args.runs, body, summary)


if __name__ == "__main__":
    main()
