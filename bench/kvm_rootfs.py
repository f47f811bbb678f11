"""Benchmark: a KVM sandbox's host root over virtio-9p against virtiofs, in the same run.

The tool picks virtiofs where the host has /usr/lib/qemu/virtiofsd (VSS_KVM_ROOT_SHARE=9p
forces 9p): this measures what that choice buys or costs. Runs alternate 9p/virtiofs so that
load from elsewhere hits both alike. Figures, not tests: prints medians and writes
bench/results/kvm-rootfs.md (and .json).
    .venv/bin/python bench/kvm_rootfs.py [--runs 5]

- `run -c qemu:///system -- /bin/false`, end to end (boot, command, power-off);
- `run ... -- python3 -c 'import ...'`: a file-heavy command (hundreds of small reads);
- an apache2 unit sandbox, `start --detach` to its first HTTP 200 (kvm_service.py's probe).
"""

from __future__ import annotations

import argparse
import time

from _common import median, on_sigterm_clean_up, ratio, secs, tool, tool_env, write_result
from kvm_service import start_to_http

URI = "qemu:///system"
IMPORTS = "import asyncio, email.parser, http.server, json, xml.dom.minidom, unittest, decimal"


def run_once(env: dict[str, str], *argv: str, expect: int) -> float:
    t0 = time.monotonic()
    proc = tool(env, "run", "-c", URI, "--", *argv, check=False)
    took = time.monotonic() - t0
    if proc.returncode != expect:
        raise RuntimeError(f"run {argv} gave {proc.returncode}: {proc.stderr.strip()}")
    return took


FIGURES = {
    "run -- /bin/false": lambda env: run_once(env, "/bin/false", expect=1),
    "run -- python3 (imports)": lambda env: run_once(env, "/usr/bin/python3", "-c", IMPORTS,
                                                      expect=0),
    "apache2 start to HTTP 200": lambda env: start_to_http(env, URI),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    on_sigterm_clean_up()
    times: dict[tuple[str, str], list[float]] = {}
    with tool_env() as env:
        shares = {"9p": {**env, "VSS_KVM_ROOT_SHARE": "9p"}, "virtiofs": env}
        for _ in range(args.runs):
            for figure, measure in FIGURES.items():
                for share, share_env in shares.items():
                    times.setdefault((figure, share), []).append(measure(share_env))
    body = ["| figure (TCG here) | 9p | virtiofs | ratio virtiofs/9p |", "|---|---|---|---|"]
    summary = []
    for figure in FIGURES:
        p9, vfs = median(times[(figure, "9p")]), median(times[(figure, "virtiofs")])
        body.append(f"| {figure} | {secs(p9)} | {secs(vfs)} | {ratio(vfs, p9)} |")
        summary.append({"figure": f"KVM root over virtiofs: {figure}", "ours": vfs,
                        "peers": {"9p": p9}, "unit": "s"})
    body += ["", "All runs:"] + [f"- {f} / {s}: {', '.join(secs(v) for v in vs)}"
                                 for (f, s), vs in times.items()]
    write_result("kvm-rootfs", "KVM sandbox root: virtio-9p vs virtiofs", args.runs, body,
                 summary)


if __name__ == "__main__":
    main()
