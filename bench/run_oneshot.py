"""Benchmark: one-shot `run` on both backends against hand-made peers of the same guest.

    .venv/bin/python bench/run_oneshot.py [--runs 5] [--only lxc|kvm]

LXC: `run -c lxc:/// -- /bin/true`, end to end (a new process each time, as a user runs it),
against `virsh -c lxc:/// create` of the same domain (host root read-only, privnet, tmpfs
/run /tmp /dev/shm, init /bin/true) waited until the domain is gone.
KVM: `run -c qemu:///system -- /bin/false`, end to end, against a hand-tuned qemu command line
booting the same kernel, initrd and kernel command line (microvm, TCG here), the same
virtio-serial ports (stdout, stderr, status to files), timed until qemu exits. The peer shares
the root over 9p; ours over whatever the tool chooses (virtiofs where the host has virtiofsd;
bench/kvm_rootfs.py compares the two).

Runs alternate ours/peer so that load from elsewhere hits both alike; medians are printed
with the ratio ours/peer and written to bench/results/run-oneshot.md. Figures, not tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from virt_sandbox_service import host, initrd  # noqa: E402
from virt_sandbox_service.config import Kind, SandboxConfig  # noqa: E402
from virt_sandbox_service.domain import kvm  # noqa: E402
from virt_sandbox_service.planner import Inputs, build  # noqa: E402


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(ROOT)}


def ours(uri: str, argv: list[str], expect: int) -> float:
    exe = shutil.which("virt-sandbox-service") or str(ROOT / ".venv/bin/virt-sandbox-service")
    t0 = time.monotonic()
    proc = subprocess.run([exe, "run", "-c", uri, "--", *argv], env=tool_env(),
                          stdin=subprocess.DEVNULL, capture_output=True)
    took = time.monotonic() - t0
    if proc.returncode != expect:
        raise RuntimeError(f"run {argv} gave {proc.returncode}: {proc.stderr.decode()}")
    return took


def lxc_peer(conn: libvirt.virConnect, xml_path: str, name: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["virsh", "-q", "-c", "lxc:///", "create", xml_path], check=True,
                   capture_output=True)
    while True:
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError:
            return time.monotonic() - t0
        time.sleep(0.002)


def lxc_xml(name: str) -> str:
    cfg = SandboxConfig(name=name, kind=Kind.GENERIC, uri="lxc:///", state_dir="",
                        command=("/bin/true",))
    # The plan binds our confine.py into every LXC domain: from where this checkout has it.
    facts = host.HostFacts(memory_kib=host._mem_total_kib(), confine=host.confine_script())
    return build(cfg, facts, Inputs(init=("/bin/true",))).domain_xml


def qemu_argv(tmp: Path) -> list[str]:
    boot = initrd.ensure()
    kf = host.kvm_facts()
    facts = host.HostFacts(kvm=kf.kvm, tsc_khz=kf.tsc_khz, kvm_kernel=str(boot.kernel),
                           kvm_initrd=str(boot.initrd))
    cfg = SandboxConfig(name="vss-raw", kind=Kind.GENERIC, uri="qemu:///system", state_dir="",
                        command=("/bin/false",))
    cmdline = kvm.kernel_cmdline(build(cfg, facts, Inputs(run_dir="/nonexistent")), facts, "run",
                                 cfg.command)
    ports = []
    for port in kvm.RUN_PORTS:
        backend = "null" if port == "stdin" else f"file,path={tmp}/{port}"
        ports += ["-chardev", f"{backend},id={port}",
                  "-device", f"virtserialport,chardev={port},name=vss.{port}"]
    return [
        "qemu-system-x86_64", "-M", "microvm", "-accel", "kvm" if kf.kvm else "tcg",
        "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-kernel", str(boot.kernel), "-initrd", str(boot.initrd),
        "-append", cmdline, "-serial", f"file:{tmp}/console",
        "-fsdev", "local,id=root,path=/,security_model=passthrough,readonly=on,"
                  "multidevs=remap",
        "-device", "virtio-9p-device,fsdev=root,mount_tag=vss0",
        "-device", "virtio-serial-device", *ports,
    ]


def kvm_peer(argv: list[str], tmp: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    status = (tmp / "status").read_text().split()
    if status[:1] != ["1"]:
        raise RuntimeError(f"raw qemu guest reported {status}")
    return took


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    ok, why = host.kvm_choice()
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), kernel {platform.release()}, "
            f"libvirt {libvirt.getVersion() // 1000000}.{libvirt.getVersion() // 1000 % 1000}, "
            f"{'KVM' if ok else 'TCG'} ({why}), load average {os.getloadavg()[0]:.1f}")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_lxc(runs: int) -> list[tuple[str, float, float]]:
    conn = libvirt.open("lxc:///")
    name = f"vss-bench-raw{os.getpid()}"
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
        f.write(lxc_xml(name))
    a, b = [], []
    try:
        ours("lxc:///", ["/bin/true"], 0)  # warm caches (bytecode, libvirt)
        for _ in range(runs):
            a.append(ours("lxc:///", ["/bin/true"], 0))
            time.sleep(0.3)  # let libvirt finish tearing the last one down
            b.append(lxc_peer(conn, f.name, name))
            time.sleep(0.3)
    finally:
        os.unlink(f.name)
    return [("run -c lxc:/// -- /bin/true, end to end", median(a), median(b))]


def bench_kvm(runs: int) -> list[tuple[str, float, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="vss-bench-"))
    a, b = [], []
    try:
        argv = qemu_argv(tmp)
        ours("qemu:///system", ["/bin/false"], 1)  # warm: builds the boot files if needed
        for _ in range(runs):
            a.append(ours("qemu:///system", ["/bin/false"], 1))
            b.append(kvm_peer(argv, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [("run -c qemu:///system -- /bin/false, end to end", median(a), median(b))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=("lxc", "kvm"))
    args = ap.parse_args()
    rows = []
    if args.only in (None, "lxc"):
        rows += [(*r, "raw virsh create, until the domain is gone") for r in bench_lxc(args.runs)]
    if args.only in (None, "kvm"):
        rows += [(*r, "hand-tuned qemu command line, same guest, until qemu exits")
                 for r in bench_kvm(args.runs)]
    lines = [f"# One-shot run: medians of {args.runs} runs", "", f"Machine: {machine()}",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| what | ours (s) | peer (s) | ratio ours/peer | peer |", "|---|---|---|---|---|"]
    lines += [f"| {w} | {o:.3f} | {p:.3f} | {o / p:.2f} | {peer} |" for w, o, p, peer in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "run-oneshot.md").write_text(text)


if __name__ == "__main__":
    main()
