"""Option groups several subcommands share (create, clone, run, limit): one declaration each,
so their spelling and help cannot drift apart between commands."""

from __future__ import annotations

import argparse

Options = argparse._ActionsContainer  # a parser or one of its argument groups


def add_limit_options(p: Options) -> None:
    p.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 512M or 2G")
    p.add_argument("--cpu-weight", metavar="N", help="relative CPU weight (shares), 2..262144")
    p.add_argument("--cpu-quota", metavar="PERCENT",
                   help="CPU time cap in percent of one CPU, e.g. 50 or 150")
    p.add_argument("--blkio-weight", metavar="N", help="relative block I/O weight, 100..1000")
    p.add_argument("--tasks", metavar="N",
                   help="most processes plus threads at once (pids.max), 32..4194304")
    p.add_argument("--memory-soft", metavar="SIZE",
                   help="memory it is pushed back to under host memory pressure (soft limit)")
    p.add_argument("--memory-swap", metavar="SIZE",
                   help="memory plus swap limit (with --memory; equal to it: no swap)")
    p.add_argument("--cpuset", metavar="LIST",
                   help="run only on these host CPUs, e.g. 1 or 0-1,3 (KVM: vCPU and qemu "
                        "pinned)")
    p.add_argument("--numa-nodes", metavar="LIST",
                   help="take memory only from these host NUMA nodes (strict), e.g. 0")
    for kind, unit in (("read-bps", "RATE"), ("write-bps", "RATE"), ("read-iops", "N"),
                       ("write-iops", "N")):
        what = "bytes" if unit == "RATE" else "I/O operations"
        p.add_argument(f"--device-{kind}", action="append", metavar=f"DEV:{unit}",
                       help=f"at most this many {kind.split('-')[0]} {what} a second on host "
                            f"disk DEV, e.g. /dev/vda:{'10M' if unit == 'RATE' else '100'} "
                            "(repeatable; limit: 0 removes)")


def add_cap_options(p: Options) -> None:
    p.add_argument("--cap-drop", action="append", metavar="CAP",
                   help="also drop this capability (the sandbox's processes keep only chown, "
                        "dac_override, fowner, fsetid, kill, net_bind_service, setfcap, "
                        "setgid, setpcap, setuid, sys_chroot, audit_write; see inspect)")
    p.add_argument("--cap-add", action="append", metavar="CAP",
                   help="give the sandbox's processes this capability too (e.g. sys_time "
                        "for a time daemon; it also allows the calls that exist for it)")
    p.add_argument("--syscall-allow", action="append", metavar="GROUP|CALL",
                   help="let a call the sandbox's seccomp filter denies through: a group "
                        "(@mount, @keyring, @bpf, @io_uring, ...; see the man page) or one "
                        "call")


def add_device_option(p: Options) -> None:
    p.add_argument("--device", action="append", metavar="PATH",
                   help="give the sandbox this host device node (a character or block device "
                        "under /dev, e.g. /dev/net/tun), at the same path; LXC only "
                        "(repeatable)")


def add_mount_network_options(p: Options, fresh: str) -> None:
    p.add_argument("-m", "--mount", action="append", metavar="TYPE:DST=SRC",
                   help=f"host-bind:DST=SRC (empty SRC: {fresh}), host-image:DST=IMG, "
                        "guest-bind:DST=SRC, ram:DST=SIZE")
    p.add_argument("-N", "--network", action="append", metavar="OPTS",
                   help="an interface: source=NET[,address=IP/PREFIX][,route=NET/PREFIX%%GW]"
                        "[,mac=MAC][,dhcp][,filter=NAME[,port=N]...][,inbound=AVG[:PEAK[:BURST]]]"
                        "[,outbound=...] (default: loopback only)")
