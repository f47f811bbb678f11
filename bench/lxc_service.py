"""Benchmark: start-to-HTTP-200 and stop of an apache2 LXC sandbox, against its peers.

Prints medians of N runs and ratios ours/peer, and writes bench/results/lxc-service.md (and
.json). Asserts nothing: figures, not tests. Run as root after scripts/setup.sh:
    .venv/bin/python bench/lxc_service.py [--runs 5]
Peers, in the same run, each timed to the first HTTP 200 on its own loopback (nsenter -n):
- raw libvirt: the same domain XML started by hand through `virsh create` (what libvirt alone
  costs, with our domain's init);
- systemd-nspawn --boot of an overlay of the host root with only apache2 enabled
  (--private-network); "boot" counts from nspawn's exec, after the overlay is set up;
- bare `unshare -fpmn` running apache2 in the foreground (no init, no systemd: the floor).
Create times are in bench/create.py.
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

import libvirt
from _common import (
    BareApache,
    Nspawn,
    domain_init,
    median,
    on_sigterm_clean_up,
    ratio,
    raw_copy_xml,
    secs,
    shutdown_raw,
    state_dir,
    tool,
    tool_env,
    virsh_create,
    wait_gone,
    wait_http,
    write_result,
    xml_file,
)


def one_ours(env: dict[str, str], conn: libvirt.virConnect, name: str) -> dict[str, float]:
    t0 = time.monotonic()
    tool(env, "start", "--detach", name)
    ready = time.monotonic() - t0
    dom = conn.lookupByName(name)
    http = wait_http(lambda: domain_init(dom)) - t0
    t0 = time.monotonic()
    tool(env, "stop", name)
    return {"start (until READY)": ready, "start to HTTP 200": http,
            "stop": time.monotonic() - t0}


def one_raw(conn: libvirt.virConnect, path: str, raw: str) -> dict[str, float]:
    """The same domain, started by hand with `virsh create` of its XML (transient)."""
    try:
        t0 = time.monotonic()
        virsh_create(path)
        dom = conn.lookupByName(raw)
        http = wait_http(lambda: domain_init(dom)) - t0
        t0 = time.monotonic()
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
        gone = wait_gone(conn, raw) - t0
    finally:
        shutdown_raw(conn, raw)  # also removes the cgroups its init left
    return {"start to HTTP 200": http, "stop": gone}


def one_nspawn() -> dict[str, float]:
    n = Nspawn()
    try:
        t0 = time.monotonic()
        n.start()
        t_http = wait_http(n.leader)
        boot = time.time() - (time.monotonic() - t_http) - n.exec_time()
        total = t_http - t0
    finally:
        stop = n.stop()
    return {"start to HTTP 200": boot, "start to HTTP 200 incl. overlay set-up": total,
            "stop": stop}


def one_bare() -> dict[str, float]:
    b = BareApache()
    try:
        t0 = time.monotonic()
        b.start()
        http = wait_http(b.leader) - t0
    finally:
        t0 = time.monotonic()
        b.stop()
    return {"start to HTTP 200": http, "stop": time.monotonic() - t0}


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([s[k] for s in samples]) for k in samples[0]}


def bench_all(runs: int) -> dict[str, dict[str, float]]:
    """Interleaved: each run does ours, raw, nspawn, bare in turn, so that a change in the
    machine's load (it is shared) shifts every column alike."""
    conn = libvirt.open("lxc:///")
    got: dict[str, list[dict[str, float]]] = {"ours": [], "raw virsh": [], "nspawn": [],
                                              "unshare": []}
    with tool_env() as env:
        name = f"bench{secrets.token_hex(3)}"
        src = f"benchraw{secrets.token_hex(3)}"
        for n in (name, src):
            tool(env, "create", "-u", "apache2.service", n)
            (state_dir(env, n) / "var/www/html/index.html").write_text("ok\n")
        (Path(env["VSS_RUN_DIR"]) / src).mkdir(parents=True, exist_ok=True)
        raw = src + "x"
        with xml_file(raw_copy_xml(conn, src, raw)) as path:
            for _ in range(runs):
                got["ours"].append(one_ours(env, conn, name))
                got["raw virsh"].append(one_raw(conn, path, raw))
                got["nspawn"].append(one_nspawn())
                got["unshare"].append(one_bare())
    return {k: medians(v) for k, v in got.items()}


def main() -> None:
    on_sigterm_clean_up()
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    got = bench_all(args.runs)
    ours = got.pop("ours")
    peers = got
    body = ["apache2 from the host, its default page; times in seconds until the first HTTP 200 "
            "answered on the instance's own loopback (polled every 10 ms through nsenter + curl, "
            "which adds ~10-20 ms to every column alike). Runs interleave ours and the peers.",
            "",
            "| step | ours | raw virsh | systemd-nspawn | bare unshare | ours/raw | ours/nspawn "
            "| ours/unshare |", "|---|---|---|---|---|---|---|---|"]
    rows = ["start (until READY)", "start to HTTP 200", "start to HTTP 200 incl. overlay set-up",
            "stop"]
    for row in rows:
        o = ours.get(row)
        cells = [peers[p].get(row) for p in peers]
        body.append(f"| {row} | {secs(o)} | " + " | ".join(secs(c) for c in cells) + " | "
                    + " | ".join(ratio(o, c) for c in cells) + " |")
    body += ["", "- ours: `start --detach` (returns at the sandbox systemd's READY=1) and "
             "`stop` (SIGRTMIN+4 to the sandbox's systemd), each a fresh CLI process (Python "
             "start-up included).",
             "- raw virsh: `virsh create` of our sandbox's own domain XML, renamed; stop is "
             "`shutdown --mode initctl` until the domain is gone.",
             "- systemd-nspawn: `--boot --private-network --register=no` of an overlay "
             "(lowerdir=/, tmpfs upper) with every *.wants trimmed and only apache2 enabled; "
             "stop is SIGTERM to nspawn until it exits.",
             "- bare unshare: `unshare -fpmn --mount-proc` + apache2 -DFOREGROUND (tmpfs /run "
             "and web root, logs in a directory on disk); no init, no systemd."]
    summary = [{"figure": "apache2 start to HTTP 200", "unit": "s",
                "ours": ours["start to HTTP 200"],
                "peers": {p: v.get("start to HTTP 200") for p, v in peers.items()}},
               {"figure": "apache2 stop", "unit": "s", "ours": ours["stop"],
                "peers": {p: v.get("stop") for p, v in peers.items()}}]
    write_result("lxc-service", "LXC apache2 sandbox: start and stop against peers", args.runs,
                 body, summary)


if __name__ == "__main__":
    main()
