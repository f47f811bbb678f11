"""Benchmark: start to first HTTP 200 of an apache2 KVM sandbox, beside the same LXC one.

Prints medians of N runs and writes bench/results/kvm-service.md (and .json). Asserts
nothing. On a host without hardware virtualization (this one) the guest runs under TCG, so
the figure is an emulator's, not KVM's; the LXC sandbox of the same service, measured in the
same run, is the peer.
    .venv/bin/python bench/kvm_service.py [--runs 5]
"""

from __future__ import annotations

import argparse
import secrets
import time

from _common import (
    median,
    on_sigterm_clean_up,
    ratio,
    secs,
    state_dir,
    tool,
    tool_env,
    write_result,
)

DEADLINE = 120.0  # seconds; TCG boots slowly


def start_to_http(env: dict[str, str], uri: str) -> float:
    """create (not timed), then `start --detach` until the sandbox's own curl gets 200."""
    name = f"benchkv{secrets.token_hex(3)}"
    tool(env, "create", "-c", uri, "-u", "apache2.service", name)
    (state_dir(env, name) / "var/www/html/index.html").write_text("ok\n")
    try:
        t0 = time.monotonic()
        tool(env, "start", "--detach", name, timeout=DEADLINE)
        while time.monotonic() - t0 < DEADLINE:
            out = tool(env, "execute", name, "--", "curl", "-s", "-o", "/dev/null", "-w",
                       "%{http_code}", "http://127.0.0.1/", check=False)
            if out.stdout.strip() == "200":
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"{uri}: no HTTP 200 within {DEADLINE:g} s")
    finally:
        tool(env, "delete", "--force", name, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    on_sigterm_clean_up()
    kvm: list[float] = []
    lxc: list[float] = []
    with tool_env() as env:
        for _ in range(args.runs):  # alternate, so load changes hit both
            kvm.append(start_to_http(env, "qemu:///system"))
            lxc.append(start_to_http(env, "lxc:///"))
    k, x = median(kvm), median(lxc)
    body = ["| step | KVM sandbox (TCG here) | LXC sandbox | ratio KVM/LXC |", "|---|---|---|---|",
            f"| start to HTTP 200 | {secs(k)} | {secs(x)} | {ratio(k, x)} |", "",
            f"All runs, KVM: {', '.join(secs(v) for v in kvm)}; "
            f"LXC: {', '.join(secs(v) for v in lxc)}.",
            "The HTTP probe is the sandbox's own curl through `execute` (guest agent for KVM),",
            "so each probe adds the agent's round trip to the KVM figure."]
    write_result("kvm-service", "apache2 KVM sandbox: start to HTTP 200", args.runs, body,
                 [{"figure": "KVM (TCG) apache2 start to HTTP 200", "ours": k,
                   "peers": {"LXC sandbox": x}, "unit": "s"}])


if __name__ == "__main__":
    main()
