"""Benchmark: how long `create` takes, with and without -C, and `clone`.

Prints medians of N runs and writes bench/results/create.md (and .json). Asserts nothing.
    .venv/bin/python bench/create.py [--runs 5]
Floor in the same run: `cp -a` of the private /etc a create makes, plus `virsh define` and
`undefine` of the same domain XML (what libvirt alone costs).
Where `clone` does not exist yet, the script prints "clone: not implemented" and goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
from _common import (
    ROOT,
    median,
    on_sigterm_clean_up,
    ratio,
    raw_copy_xml,
    secs,
    state_dir,
    tool,
    tool_env,
    write_result,
    xml_file,
)

sys.path.insert(0, str(ROOT))
# The calls the tool's set-up answers as done: the floor's by-hand postinst answers the same.
from virt_sandbox_service.create import MADE_BY_POSTINST
from virt_sandbox_service.maintscripts import STUBBED

SETTLE = 1.0  # seconds; see settle()
FRESH_FLOOR = "the same + the postinst by hand"


def settle() -> None:
    """Before each timed step: flush what the previous steps wrote and deleted and give the
    disk a moment, so that a figure is one step on a settled disk (as an admin's single
    create is), not the previous step's writeback and discards (this disk is mounted with
    `discard`). Every step, ours and the floor's, gets the same."""
    os.sync()
    time.sleep(SETTLE)


def one_create(env: dict[str, str], *opts: str) -> tuple[float, float, float]:
    """Seconds of `create [opts] -u apache2.service` and of its `delete`; state size, MiB."""
    name = f"benchcr{secrets.token_hex(3)}"
    settle()
    t0 = time.monotonic()
    tool(env, "create", *opts, "-u", "apache2.service", name)
    create = time.monotonic() - t0
    out = subprocess.run(["du", "-sk", str(state_dir(env, name))], capture_output=True,
                         text=True).stdout.split()
    settle()
    t0 = time.monotonic()
    tool(env, "delete", name)
    return create, time.monotonic() - t0, float(out[0]) / 1024 if out else 0.0


def one_clone(env: dict[str, str], src: str) -> float:
    dest = f"benchcl{secrets.token_hex(3)}"
    settle()
    t0 = time.monotonic()
    tool(env, "clone", src, dest)
    took = time.monotonic() - t0
    tool(env, "delete", dest)
    return took


def one_define(path: str, raw: str) -> float:
    settle()
    t0 = time.monotonic()
    subprocess.run(["virsh", "-q", "-c", "lxc:///", "define", path], check=True,
                   capture_output=True)
    subprocess.run(["virsh", "-q", "-c", "lxc:///", "undefine", raw], check=True,
                   capture_output=True)
    return time.monotonic() - t0


def one_copy_etc(etc: Path) -> float:
    """`cp -a` of exactly the private /etc a create makes: the upper layer of an overlay /etc,
    or the trimmed copy of the host's with --etc copy."""
    tmp = Path(tempfile.mkdtemp(prefix="vss-bench-etc-", dir="/var/tmp"))
    try:
        settle()
        t0 = time.monotonic()
        subprocess.run(["cp", "-a", str(etc), str(tmp / "etc")], check=True,
                       capture_output=True)
        return time.monotonic() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# What a fresh instance's set-up does, by hand: the postinst on overlays of /etc and /var
# (uppers on the disk the state is on) in a mount namespace of its own, with the calls the
# tool answers as done ($STUBBED: maintscripts.STUBBED) answered the same, services refused.
POSTINST_SH = r"""
set -e
for d in etc var; do
  mkdir -p "$B/u$d" "$B/w$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$B/u$d,workdir=$B/w$d" "/$d"
done
mkdir -p "$B/bin"
for c in $STUBBED; do ln -s /bin/true "$B/bin/$c"; done
printf '#!/bin/sh\nexit 101\n' > "$B/policy-rc.d"; chmod +x "$B/policy-rc.d"
export PATH="$B/bin:$PATH" DEBIAN_FRONTEND=noninteractive POLICYRCD="$B/policy-rc.d" \
       DPKG_MAINTSCRIPT_NAME=postinst
for p in "$@"; do DPKG_MAINTSCRIPT_PACKAGE=$p "/var/lib/dpkg/info/$p.postinst" configure ''; done
"""


def fresh_packages(env: dict[str, str], name: str) -> list[str]:
    """The packages whose postinst the create ran, from the sandbox's own evidence record."""
    data = json.loads((state_dir(env, name) / "evidence.json").read_text())
    for e in data["evidence"]:
        for why in map(str, e["reasons"]):
            if why.startswith(MADE_BY_POSTINST):
                return why.removeprefix(MADE_BY_POSTINST).split(" (")[0].split(", ")
    return []


def one_postinst(packages: list[str]) -> float:
    """The floor's share of a fresh instance: the same postinsts, in a bare mount namespace."""
    base = Path(tempfile.mkdtemp(prefix="vss-bench-postinst-", dir="/var/tmp"))
    try:
        settle()
        t0 = time.monotonic()
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", POSTINST_SH,
                        "postinst", *packages], check=True, capture_output=True,
                       env={**os.environ, "B": str(base), "STUBBED": " ".join(STUBBED)})
        return time.monotonic() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def disk_writer(on: bool) -> Iterator[None]:
    """--busy: another process writes 64 MiB files with fsync, over and over, for the whole
    run: the shared disk of a busy host, made on purpose, for ours and the floor alike."""
    if not on:
        yield
        return
    target = Path(tempfile.mkdtemp(prefix="vss-bench-busy-", dir="/var/tmp"))
    proc = subprocess.Popen(["sh", "-c", f"while :; do dd if=/dev/zero of={target}/f bs=1M "
                             "count=64 conv=fsync status=none; done"],
                            start_new_session=True)
    try:
        time.sleep(2)
        yield
    finally:
        os.killpg(proc.pid, 15)  # the group of the shell this run started, by its PID
        proc.wait()
        shutil.rmtree(target, ignore_errors=True)


def main(busy: bool = False) -> None:
    on_sigterm_clean_up()
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with disk_writer(busy):
        run(args.runs, busy)


def run(runs: int, busy: bool) -> None:
    conn = libvirt.open("lxc:///")
    got: dict[str, list[float]] = {k: [] for k in (
        "create", "create del", "create MiB", "create -C", "create -C del", "create -C MiB",
        "create copy", "create copy del", "create copy MiB", "clone", "define", "cp etc",
        "cp etc copy", "postinst")}
    # Interleaved: each run does every step once, so that the shared machine's changing load
    # shifts every figure alike.
    with tool_env() as env:
        has_clone = tool(env, "clone", "--help", check=False).returncode == 0
        src = f"benchsrc{secrets.token_hex(3)}"
        tool(env, "create", "-u", "apache2.service", src)
        src_copy = f"benchsrc{secrets.token_hex(3)}"
        tool(env, "create", "--etc", "copy", "-u", "apache2.service", src_copy)
        raw = src + "x"
        packages = fresh_packages(env, src)
        try:
            with xml_file(raw_copy_xml(conn, src, raw)) as path:
                for _ in range(runs):
                    for key, opts in (("create", ()), ("create -C", ("-C",)),
                                      ("create copy", ("--etc", "copy"))):
                        c, d, mib = one_create(env, *opts)
                        got[key].append(c)
                        got[f"{key} del"].append(d)
                        got[f"{key} MiB"].append(mib)
                    if has_clone:
                        got["clone"].append(one_clone(env, src))
                    got["define"].append(one_define(path, raw))
                    got["cp etc"].append(one_copy_etc(state_dir(env, src) / "etc"))
                    got["cp etc copy"].append(one_copy_etc(state_dir(env, src_copy) / "etc"))
                    got["postinst"].append(one_postinst(packages) if packages else 0.0)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(raw).undefine()
    m = {k: median(v) if v else None for k, v in got.items()}
    plain, plain_del, plain_mb = m["create"], m["create del"], m["create MiB"] or 0.0
    copy, copy_del, copy_mb = m["create -C"], m["create -C del"], m["create -C MiB"] or 0.0
    etc_copy, etc_copy_del, etc_copy_mb = (m["create copy"], m["create copy del"],
                                           m["create copy MiB"] or 0.0)
    clone, define, cp_etc = m["clone"], m["define"] or 0.0, m["cp etc"] or 0.0
    cp_etc_copy = m["cp etc copy"] or 0.0
    if clone is None:
        print("clone: not implemented")
    floor, floor_copy = define + cp_etc, define + cp_etc_copy
    postinst = m["postinst"] or 0.0
    # A create (with or without -C, either /etc) runs the packages' postinst: its own floor
    # does too. A clone copies a made instance and runs none.
    fresh, fresh_copy = floor + postinst, floor_copy + postinst
    body = ["| step | ours (s) | state size (MiB) | floor (s) | ratio ours/floor "
            "| floor incl. postinst (s) | ratio ours/that |",
            "|---|---|---|---|---|---|---|",
            f"| create -u apache2.service | {secs(plain)} | {plain_mb:.1f} | {secs(floor)} | "
            f"{ratio(plain, floor)} | {secs(fresh)} | {ratio(plain, fresh)} |",
            f"| create -C -u apache2.service | {secs(copy)} | {copy_mb:.1f} | {secs(floor)} | "
            f"{ratio(copy, floor)} | {secs(fresh)} | {ratio(copy, fresh)} |",
            f"| create --etc copy -u apache2.service | {secs(etc_copy)} | {etc_copy_mb:.1f} | "
            f"{secs(floor_copy)} | {ratio(etc_copy, floor_copy)} | {secs(fresh_copy)} | "
            f"{ratio(etc_copy, fresh_copy)} |",
            f"| delete (after create) | {secs(plain_del)} | | | | | |",
            f"| delete (after create -C) | {secs(copy_del)} | | | | | |",
            f"| delete (after create --etc copy) | {secs(etc_copy_del)} | | | | | |",
            "| clone | not implemented | | | | | |" if clone is None else
            f"| clone (of a stopped apache2 sandbox) | {secs(clone)} | | {secs(floor)} | "
            f"{ratio(clone, floor)} | | |",
            "", f"Floor = `cp -a` of the private /etc a create makes + `virsh define` and "
            f"`undefine` of the same domain XML ({secs(define)} s). The private /etc is the "
            f"upper layer of the overlay /etc (the default on LXC; {secs(cp_etc)} s), or, for "
            f"--etc copy, the trimmed copy of the host's ({secs(cp_etc_copy)} s).",
            f"Floor incl. postinst: that, plus what every create (with or without -C) also "
            f"does, a fresh instance's set-up: the postinst of {', '.join(packages) or '-'} "
            f"run by hand in a mount namespace of its own on overlays of /etc and /var, with "
            f"the same host-changing calls answered as done ({secs(postinst)} s). A clone "
            f"runs no postinst.",
            "Each of ours is one fresh CLI process (Python start-up and `import libvirt`, "
            "~0.1 s, included). The host has no systemd PID 1, so no daemon-reload is timed.",
            f"Before each timed step (ours and the floor's alike): `sync` and {SETTLE:g} s, so "
            "each figure is one step on a settled disk, not the previous step's writeback and "
            "discards."]
    summary = [{"figure": "create -u apache2.service", "unit": "s", "ours": plain,
                "peers": {"cp -a private /etc + virsh define": floor, FRESH_FLOOR: fresh}},
               {"figure": "create -C -u apache2.service", "unit": "s", "ours": copy,
                "peers": {"cp -a private /etc + virsh define": floor, FRESH_FLOOR: fresh}},
               {"figure": "create --etc copy -u apache2.service", "unit": "s",
                "ours": etc_copy, "peers": {"cp -a private /etc + virsh define": floor_copy,
                                            FRESH_FLOOR: fresh_copy}},
               {"figure": "clone", "unit": "s", "ours": clone,
                "peers": {"cp -a private /etc + virsh define": floor},
                **({"note": "not implemented"} if clone is None else {})}]
    if busy:
        body.append("While every step ran, another process wrote 64 MiB files with fsync in a "
                    "loop (`dd conv=fsync`): a busy disk, made on purpose.")
        write_result("create-busy", "create (and clone) of an apache2 sandbox, on a busy disk",
                     runs, body, [{**f, "figure": f"{f['figure']} (busy disk)"}
                                  for f in summary])
        return
    write_result("create", "create (and clone) of an apache2 sandbox", runs, body, summary)


if __name__ == "__main__":
    main()
