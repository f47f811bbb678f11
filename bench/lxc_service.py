"""Benchmark: create and start-to-HTTP-200 of an apache2 LXC sandbox, against raw libvirt.

Prints medians of N runs and ratios ours/peer, and writes bench/results/lxc-service.md.
Asserts nothing: figures, not tests. Run as root after scripts/setup.sh:
    .venv/bin/python bench/lxc_service.py [--runs 5]
The peer is the same domain XML started by hand through `virsh create` (the floor: what
libvirt alone costs), timed to the same first HTTP 200.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def tool(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virt_sandbox_service.cli", *args], env=env,
                          capture_output=True, text=True, check=True, cwd=ROOT)


def init_pid(dom: libvirt.virDomain) -> int:
    ctl = dom.ID()
    children = Path(f"/proc/{ctl}/task/{ctl}/children").read_text().split()
    return int(children[0])


def wait_http(dom: libvirt.virDomain, deadline: float = 20) -> float:
    """Seconds until the sandbox's apache2 answers 200 on its own loopback."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            pid = init_pid(dom)
            r = subprocess.run(["nsenter", "-t", str(pid), "-n", "curl", "-s", "-o", "/dev/null",
                                "-w", "%{http_code}", "--max-time", "1", "http://127.0.0.1/"],
                               capture_output=True, text=True)
            if r.stdout == "200":
                return time.monotonic()
        except (OSError, ValueError, IndexError, libvirt.libvirtError):
            pass
        time.sleep(0.01)
    raise RuntimeError("no HTTP 200")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_ours(env: dict[str, str], conn: libvirt.virConnect, runs: int) -> dict[str, float]:
    create, create_copy, start_ready, start_http, stop = [], [], [], [], []
    for i in range(runs):
        name = f"bench{secrets.token_hex(3)}"
        t0 = time.monotonic()
        tool(env, "create", "-u", "apache2.service", name)
        create.append(time.monotonic() - t0)
        html = Path(env["VSS_STATE_DIR"]) / name / "var/www/html/index.html"
        html.write_text("ok\n")
        t0 = time.monotonic()
        tool(env, "start", "--detach", name)
        start_ready.append(time.monotonic() - t0)
        start_http.append(wait_http(conn.lookupByName(name)) - t0)
        t0 = time.monotonic()
        tool(env, "stop", name)
        stop.append(time.monotonic() - t0)
        tool(env, "delete", name)
        name_c = f"benchc{i}{secrets.token_hex(2)}"
        t0 = time.monotonic()
        tool(env, "create", "-C", "-u", "apache2.service", name_c)
        create_copy.append(time.monotonic() - t0)
        tool(env, "delete", name_c)
    return {"create": median(create), "create -C": median(create_copy),
            "start (until READY)": median(start_ready), "start to HTTP 200": median(start_http),
            "stop": median(stop)}


def bench_raw(env: dict[str, str], conn: libvirt.virConnect, runs: int) -> dict[str, float]:
    """The same domain, started by hand with `virsh create` of its XML (transient)."""
    name = f"benchraw{secrets.token_hex(3)}"
    tool(env, "create", "-u", "apache2.service", name)
    (Path(env["VSS_STATE_DIR"]) / name / "var/www/html/index.html").write_text("ok\n")
    xml = conn.lookupByName(name).XMLDesc(0)
    run_dir = Path(env["VSS_RUN_DIR"]) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    raw_name = name + "x"
    xml = xml.replace(f"<name>{name}</name>", f"<name>{raw_name}</name>")
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(xml)
    http, gone = [], []
    try:
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run(["virsh", "-q", "-c", "lxc:///", "create", f.name], check=True,
                           capture_output=True)
            dom = conn.lookupByName(raw_name)
            http.append(wait_http(dom) - t0)
            t0 = time.monotonic()
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_INITCTL)
            while True:
                try:
                    if not dom.isActive():
                        break
                except libvirt.libvirtError:
                    break
                time.sleep(0.01)
            gone.append(time.monotonic() - t0)
    finally:
        os.unlink(f.name)
        tool(env, "delete", "--force", name)
    return {"start to HTTP 200": median(http), "stop": median(gone)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), "
            f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 2**30} GiB, "
            f"kernel {platform.release()}, libvirt "
            f"{libvirt.getVersion() // 1000000}.{libvirt.getVersion() // 1000 % 1000}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vss-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "VSS_CONFIG_DIR": str(base / "config"), "VSS_STATE_DIR": str(base / "state"),
           "VSS_UNIT_DIR": str(base / "units"), "VSS_RUN_DIR": str(base / "run")}
    conn = libvirt.open("lxc:///")
    try:
        ours = bench_ours(env, conn, args.runs)
        raw = bench_raw(env, conn, args.runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lines = [f"# LXC apache2 sandbox: medians of {args.runs} runs", "", f"Machine: {machine()}",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| step | ours (s) | raw virsh (s) | ratio ours/raw |", "|---|---|---|---|"]
    for key, value in ours.items():
        peer = raw.get(key)
        ratio = f"{value / peer:.2f}" if peer else "-"
        lines.append(f"| {key} | {value:.3f} | {f'{peer:.3f}' if peer else '-'} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lxc-service.md").write_text(text)


if __name__ == "__main__":
    main()
