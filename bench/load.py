"""Benchmark: a hundred apache2 sandboxes at once, each under ab on its own loopback.

All N sandboxes are created and started, then R rounds run `ab -n REQUESTS -c CONCURRENCY`
against every sandbox at the same time (inside each one's network namespace, nsenter -n).
Peers in the same run, under the same load: N `systemd-nspawn --boot` containers of an overlay
of the host root with only apache2 enabled, and N bare `unshare -fpmn` apache2 (no init, no
systemd, no libvirt). For ours and nspawn also: how long the first N-1 take to come up at once,
the N-th alone beside them, and MemAvailable's drop per instance. Prints and writes
bench/results/load.md (and .json); medians over the rounds.
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
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
from _common import (
    BareApache,
    CpuGroup,
    Nspawn,
    domain_init,
    median,
    mem_available_kib,
    on_sigterm_clean_up,
    parallel,
    ratio,
    state_dir,
    tool,
    tool_env,
    wait_http,
    write_result,
)

KINDS = ("ours", "systemd-nspawn", "bare unshare")
BOOT_DEADLINE = 300.0  # seconds for a whole set started at once to answer


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


SETTLE = 2.0  # seconds after the last instance answered, before reading MemAvailable


@dataclass
class Started:
    """How a set of N came up: the first N-1 at once, then the N-th alone beside them."""
    all_but_one: float = 0.0  # seconds from asking until the N-1 all answered HTTP 200
    last: float = 0.0  # seconds from asking for the N-th until it answered
    mem_kib: float = 0.0  # MemAvailable's drop per instance, all N running


def come_up(n: int, rest: Callable[[], None], last: Callable[[], float]) -> Started:
    """`rest()` starts the first n-1 at once and returns once all answer; `last()` starts the
    n-th and returns the time.monotonic() of its first HTTP 200."""
    got = Started()
    before = mem_available_kib()
    t0 = time.monotonic()
    rest()
    got.all_but_one = time.monotonic() - t0
    t0 = time.monotonic()
    got.last = last() - t0
    time.sleep(SETTLE)
    got.mem_kib = (before - mem_available_kib()) / n
    return got


def start_ours(env: dict[str, str], conn: libvirt.virConnect, names: list[str]) -> Started:
    """`start --detach` of all but the last at once, then of the last; each to HTTP 200."""
    def answers(name: str, deadline: float = 30) -> float:
        dom = conn.lookupByName(name)
        return wait_http(lambda: domain_init(dom), deadline)

    def rest() -> None:
        parallel(env, [["start", "--detach", x] for x in names[:-1]])
        for x in names[:-1]:
            answers(x, BOOT_DEADLINE)

    def last() -> float:
        tool(env, "start", "--detach", names[-1])
        return answers(names[-1])
    return come_up(len(names), rest, last)


def start_nspawn(boxes: list[Nspawn]) -> Started:
    """The same for systemd-nspawn: its overlay set-up and boot, to HTTP 200."""
    def rest() -> None:
        for b in boxes[:-1]:
            b.start()
        for b in boxes[:-1]:
            wait_http(b.leader, BOOT_DEADLINE)

    def last() -> float:
        boxes[-1].start()
        return wait_http(boxes[-1].leader)
    return come_up(len(boxes), rest, last)


def stop_all(bare: list[BareApache], boxes: list[Nspawn]) -> None:
    """Every peer instance stopped (again: stopping a stopped one does nothing)."""
    for b in bare:
        b.stop()
    for box in boxes:
        box.stop()


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
    rounds: dict[str, list[tuple[float, float, int]]] = {k: [] for k in KINDS}
    generators = CpuGroup("ab")
    # Like machine/ for the sandboxes: one group for all of a peer's instances.
    servers, nspawn_group = CpuGroup("bare"), CpuGroup("nspawn")
    bare = [BareApache(servers) for _ in range(n)]
    boxes = [Nspawn(nspawn_group) for _ in range(n)]
    try:
        with tool_env() as env:
            names = [f"benchld{i:02d}{secrets.token_hex(2)}" for i in range(n)]
            t0 = time.monotonic()
            parallel(env, [["create", "-u", "apache2.service", x] for x in names])
            timings["create (all, in parallel)"] = time.monotonic() - t0
            try:
                for x in names:
                    (state_dir(env, x) / "var/www/html/index.html").write_text("ok\n")
                # nspawn's set first, on a machine with nothing else running; ours then comes
                # up beside nspawn's idle hundred (any cost of that is ours, not the peer's).
                started = {"systemd-nspawn": start_nspawn(boxes)}
                started["ours"] = start_ours(env, conn, names)
                ours = [p for p in (domain_init(conn.lookupByName(x)) for x in names) if p]
                for b in bare:
                    b.start()
                for b in bare:
                    wait_http(b.leader, BOOT_DEADLINE)
                pids = {"ours": ours,
                        "systemd-nspawn": [p for p in (b.leader() for b in boxes) if p],
                        "bare unshare": [p for p in (b.leader() for b in bare) if p]}
                # Alternate rounds, so that the shared machine's load shifts all alike.
                for _ in range(args.runs):
                    for kind in KINDS:
                        rounds[kind].append(ab_round(pids[kind], args.requests,
                                                     args.concurrency, generators))
            finally:
                stop_all(bare, boxes)
                t0 = time.monotonic()
                parallel(env, [["delete", "--force", x] for x in names])
                timings["delete --force (all, in parallel)"] = time.monotonic() - t0
    finally:
        stop_all(bare, boxes)
        for g in (generators, servers, nspawn_group):
            g.remove()
    report(n, args, rounds, started, timings)


def report(n: int, args: argparse.Namespace, rounds: dict[str, list[tuple[float, float, int]]],
           started: dict[str, Started], timings: dict[str, float]) -> None:
    got = {k: summarise(v) for k, v in rounds.items()}
    ours, nsp, bare = got["ours"], got["systemd-nspawn"], got["bare unshare"]
    so, sn = started["ours"], started["systemd-nspawn"]
    body = [f"{n} instances of each kind running at once, each under `ab -n {args.requests} "
            f"-c {args.concurrency}` on its own loopback, every instance of a kind at the same "
            "time, the kinds in turn; apache2's default page, keep-alive off. Medians over the "
            "rounds.", "",
            "| | ours | systemd-nspawn | bare unshare apache2 | ours/nspawn | ours/bare |",
            "|---|---|---|---|---|---|",
            f"| requests/s, all instances together | {ours['total']:.0f} | {nsp['total']:.0f} "
            f"| {bare['total']:.0f} | {ratio(ours['total'], nsp['total'])} | "
            f"{ratio(ours['total'], bare['total'])} |",
            f"| requests/s, median instance | {ours['per']:.0f} | {nsp['per']:.0f} | "
            f"{bare['per']:.0f} | {ratio(ours['per'], nsp['per'])} | "
            f"{ratio(ours['per'], bare['per'])} |",
            f"| failed requests (all rounds) | {ours['failed']:.0f} | {nsp['failed']:.0f} | "
            f"{bare['failed']:.0f} | | |",
            f"| the first {n - 1} started at once, until all answer HTTP 200 (s) | "
            f"{so.all_but_one:.1f} | {sn.all_but_one:.1f} | | "
            f"{ratio(so.all_but_one, sn.all_but_one)} | |",
            f"| instance {n} started alone beside them, to HTTP 200 (s) | {so.last:.3f} | "
            f"{sn.last:.3f} | | {ratio(so.last, sn.last)} | |",
            f"| MemAvailable's drop per instance, all {n} running (MiB) | "
            f"{so.mem_kib / 1024:.1f} | {sn.mem_kib / 1024:.1f} | | "
            f"{ratio(so.mem_kib, sn.mem_kib)} | |", ""]
    body += [f"- {k}: {v:.1f} s" for k, v in timings.items()]
    body += ["", "Ours: `start --detach` (a CLI process each), timed to HTTP 200. nspawn: "
             "`systemd-nspawn --boot` of an overlay of the host root with only apache2 enabled "
             "(bench/_common.py), its overlay set-up included, timed to HTTP 200. nspawn's "
             f"{n} came up first, on an otherwise idle machine; ours then came up beside them "
             "(idle). MemAvailable's drop includes the kernel's share (page tables, dentries) "
             "and is noisy; bench/density.py has the per-process PSS.",
             "The load generators run on the same 2 cores as the servers: the totals are "
             "bounded by the machine; the ratio is what the sandbox costs under load (higher is "
             "better). CPU fairness: libvirt puts all sandboxes in one cpu cgroup (machine/, "
             "1024 shares); each peer's instances get one such group of their own, and the ab "
             "processes another, so that every set-up fights the load generators alike."]
    peers = ("systemd-nspawn", "bare unshare")
    summary = [{"figure": f"requests/s, {n} apache2 sandboxes under ab at once", "unit": "req/s",
                "ours": ours["total"], "peers": {k: got[k]["total"] for k in peers}},
               {"figure": "failed requests under load", "unit": "", "ours": ours["failed"],
                "peers": {k: got[k]["failed"] for k in peers}},
               {"figure": f"start of apache2 sandbox number {n}, {n - 1} running", "unit": "s",
                "ours": so.last, "peers": {"systemd-nspawn": sn.last}},
               {"figure": f"MemAvailable drop per instance, {n} running", "unit": "MiB",
                "ours": so.mem_kib / 1024, "peers": {"systemd-nspawn": sn.mem_kib / 1024}}]
    write_result("load", f"{n} apache2 sandboxes under load", args.runs, body, summary)


if __name__ == "__main__":
    main()
