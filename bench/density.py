"""Benchmark: memory per running apache2 sandbox, and how many would fit in this machine.

K instances of each kind run at once (default 5, so shared pages are shared as in real use);
for each instance, after one HTTP request and a short settle:
- PSS summed over its processes (/proc/PID/smaps_rollup): the payload (init and everything
  under it) and the supervisor (libvirt_lxc controller, systemd-nspawn, unshare);
- for libvirt domains, memory.usage_in_bytes of its cgroup in the v1 memory hierarchy
  (machine/lxc-PID-NAME.libvirt-lxc; read only, page cache included);
- the drop of MemAvailable per instance while the set runs (kernel memory included; noisy on a
  shared machine).
Medians over the K instances; peers in the same run: raw libvirt (our XML through virsh),
systemd-nspawn (overlay boot, only apache2), bare unshare apache2. Writes
bench/results/density.md (and .json). Asserts nothing.
    .venv/bin/python bench/density.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libvirt
from _common import (
    BareApache,
    Nspawn,
    descendants,
    domain_init,
    median,
    mem_available_kib,
    memcg_usage,
    on_sigterm_clean_up,
    parallel,
    pss_kib,
    ratio,
    raw_copy_xml,
    shutdown_raw,
    state_dir,
    tool,
    tool_env,
    virsh_create,
    wait_http,
    write_result,
    xml_file,
)

SETTLE = 2.0  # seconds after the last instance answered, before measuring


@dataclass
class Sample:
    payload_kib: int
    supervisor_kib: int
    cgroup_bytes: int | None


def measure_domain(dom: libvirt.virDomain) -> Sample:
    ctl = dom.ID()
    init = domain_init(dom)
    payload = [init, *descendants(init)] if init else []
    return Sample(pss_kib(payload), pss_kib([ctl]), memcg_usage(ctl))


def settle_and_measure(instances: list[Callable[[], Sample]], avail_before: int,
                       ) -> tuple[list[Sample], float]:
    time.sleep(SETTLE)
    samples = [m() for m in instances]
    drop = (avail_before - mem_available_kib()) / max(len(instances), 1)
    return samples, drop


def kind_ours(env: dict[str, str], conn: libvirt.virConnect, k: int,
              ) -> tuple[list[Sample], float]:
    names = [f"benchden{i}{secrets.token_hex(2)}" for i in range(k)]
    parallel(env, [["create", "-u", "apache2.service", n] for n in names])
    for n in names:
        (state_dir(env, n) / "var/www/html/index.html").write_text("ok\n")
    before = mem_available_kib()
    try:
        for n in names:
            tool(env, "start", "--detach", n)
        doms = [conn.lookupByName(n) for n in names]
        for d in doms:
            wait_http(lambda d=d: domain_init(d))
        return settle_and_measure([lambda d=d: measure_domain(d) for d in doms], before)
    finally:
        parallel(env, [["delete", "--force", n] for n in names])


def kind_raw(env: dict[str, str], conn: libvirt.virConnect, k: int,
             ) -> tuple[list[Sample], float]:
    names = [f"benchdr{i}{secrets.token_hex(2)}" for i in range(k)]
    parallel(env, [["create", "-u", "apache2.service", n] for n in names])
    raws = [n + "x" for n in names]
    try:
        files = []
        with contextlib.ExitStack() as stack:
            for n, r in zip(names, raws, strict=True):
                (state_dir(env, n) / "var/www/html/index.html").write_text("ok\n")
                (Path(env["VSS_RUN_DIR"]) / n).mkdir(parents=True, exist_ok=True)
                files.append(stack.enter_context(xml_file(raw_copy_xml(conn, n, r))))
            before = mem_available_kib()
            for f in files:
                virsh_create(f)
        doms = [conn.lookupByName(r) for r in raws]
        for d in doms:
            wait_http(lambda d=d: domain_init(d))
        return settle_and_measure([lambda d=d: measure_domain(d) for d in doms], before)
    finally:
        for r in raws:
            shutdown_raw(conn, r)
        parallel(env, [["delete", "--force", n] for n in names])


def kind_nspawn(k: int) -> tuple[list[Sample], float]:
    boxes = [Nspawn() for _ in range(k)]
    before = mem_available_kib()
    try:
        for b in boxes:
            b.start()
        for b in boxes:
            wait_http(b.leader, 60)

        def one(b: Nspawn) -> Sample:
            lead = b.leader()
            payload = [lead, *descendants(lead)] if lead else []
            return Sample(pss_kib(payload), pss_kib(b.supervisor_pids()), None)
        return settle_and_measure([lambda b=b: one(b) for b in boxes], before)
    finally:
        for b in boxes:
            b.stop()


def kind_bare(k: int) -> tuple[list[Sample], float]:
    boxes = [BareApache() for _ in range(k)]
    before = mem_available_kib()
    try:
        for b in boxes:
            b.start()
        for b in boxes:
            wait_http(b.leader)

        def one(b: BareApache) -> Sample:
            lead = b.leader()
            payload = [lead, *descendants(lead)] if lead else []
            sup = [b.proc.pid] if b.proc else []
            return Sample(pss_kib(payload), pss_kib(sup), None)
        return settle_and_measure([lambda b=b: one(b) for b in boxes], before)
    finally:
        for b in boxes:
            b.stop()


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def main() -> None:
    on_sigterm_clean_up()
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5, help="instances of each kind at once")
    args = ap.parse_args()
    k = max(args.runs, 1)
    conn = libvirt.open("lxc:///")
    avail = mem_available_kib()
    results: dict[str, tuple[list[Sample], float]] = {}
    with tool_env() as env:
        results["ours"] = kind_ours(env, conn, k)
        results["raw virsh"] = kind_raw(env, conn, k)
    results["systemd-nspawn"] = kind_nspawn(k)
    results["bare unshare"] = kind_bare(k)
    med: dict[str, dict[str, float | None]] = {}
    for kind, (samples, drop) in results.items():
        cg = [s.cgroup_bytes for s in samples if s.cgroup_bytes is not None]
        med[kind] = {
            "payload": median([s.payload_kib for s in samples]),
            "supervisor": median([s.supervisor_kib for s in samples]),
            "total": median([s.payload_kib + s.supervisor_kib for s in samples]),
            "cgroup": median(cg) / 1024 if cg else None,
            "drop": drop,
        }
    ours = med["ours"]
    body = [f"{k} instances of each kind running at once; apache2 with its default config "
            "(mpm_event), after one request. MiB; medians over the instances.", "",
            "| kind | PSS payload | PSS supervisor | PSS total | memcg usage | MemAvailable "
            "drop | ours/this (PSS total) |", "|---|---|---|---|---|---|---|"]
    for kind, m in med.items():
        body.append(f"| {kind} | {mib(m['payload'])} | {mib(m['supervisor'])} | "
                    f"{mib(m['total'])} | {mib(m['cgroup'])} | {mib(m['drop'])} | "
                    f"{ratio(ours['total'], m['total'])} |")
    drop = ours["drop"] if ours["drop"] and ours["drop"] > 512 else None  # else: noise
    fits = {what: int(avail / v) if v else None
            for what, v in (("PSS total", ours["total"]), ("memcg usage", ours["cgroup"]),
                            ("MemAvailable drop", drop))}
    body += ["", f"MemAvailable before: {avail / 1024 / 1024:.1f} GiB. Sandboxes of ours that "
             "would fit, by each measure (memory only; CPU, PIDs and the kernel's per-namespace "
             "limits not counted):", ""]
    body += [f"- by {what}: ~{n}" if n else f"- by {what}: - (too noisy on this shared "
             "machine: other work started or ended meanwhile)" for what, n in fits.items()]
    body += ["", "PSS payload: the sandbox's init and every process under it. Supervisor: the "
             "libvirt_lxc controller (ours, raw), systemd-nspawn, or unshare. memcg usage: the "
             "domain's v1 memory cgroup, page cache included (its private /etc and journal)."]
    summary = [{"figure": "memory per running apache2 sandbox (PSS incl. supervisor)",
                "unit": "MiB", "ours": (ours["total"] or 0) / 1024,
                "peers": {kind: (m["total"] or 0) / 1024 for kind, m in med.items()
                          if kind != "ours"}},
               {"figure": "apache2 sandboxes that fit in RAM (by PSS)", "unit": "",
                "ours": fits["PSS total"], "peers": {}}]
    write_result("density", "memory per running apache2 sandbox", k, body, summary)


if __name__ == "__main__":
    main()
