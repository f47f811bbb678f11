"""The command line: argparse, one function per subcommand, errors turned into exit codes.

Errors print one line ("virt-sandbox-service: error: ...") and a hint; tracebacks only with
--debug. Exit statuses (errors.EXIT_STATUS): 2 for usage and bad input, 1 for a host or runtime
failure, 130 after Ctrl-C once the running step rolled back what it did; `run` answers 125 for
any failure of its own, since every other status may be its command's.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from . import __version__, progress
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    SandboxError,
    UserError,
)
from .hostpaths import DEFAULT_URI, Paths, shown

if TYPE_CHECKING:
    from .config import SandboxConfig
    from .create import CreateRequest
    from .limits import LimitArgs
    from .mounts import MountSpec
    from .network import NetSpec
    from .settings import Options

PROG = "virt-sandbox-service"
Handler = Callable[[argparse.Namespace, Paths], int]


def cmd_create(args: argparse.Namespace, paths: Paths) -> int:
    from .create import create

    req = create_request(args)
    if args.json and not args.dry_run:
        raise UserError("--json goes with --dry-run", "create --dry-run --json ... prints the "
                        "plan as JSON; a create itself prints one line")
    plan = create(req, paths, dry_run=args.dry_run)
    if args.dry_run:
        from .planprint import format_plan, plan_json

        print(json.dumps(plan_json(plan), indent=2) if args.json else format_plan(plan))
    else:
        print(f"created sandbox {args.name}: start it with 'virt-sandbox-service start "
              f"{args.name}' or 'systemctl start {args.name}_sandbox.service'")
    return 0


def create_request(args: argparse.Namespace) -> CreateRequest:
    """create's options as its request; a sandbox file (sandboxfile.py) comes here too."""
    from .create import CreateRequest
    from .users import UserArgs

    command = after_dashes(args.command, "create NAME -- CMD ARGS")
    return CreateRequest(
        name=args.name, uri=args.connect, units=tuple(args.unit or ()), command=command,
        state_parent=args.path, packages=tuple(args.package or ()),
        private=tuple(args.private or ()), shared=tuple(args.shared or ()), copy=args.copy,
        security=args.security, limits=_limit_args(args),
        cap_drop=tuple(args.cap_drop or ()), cap_add=tuple(args.cap_add or ()),
        syscall_allow=tuple(args.syscall_allow or ()),
        userns=args.userns, mounts=_mounts(args), networks=_networks(args),
        user=UserArgs(args.uid, args.gid, args.username, args.homedir),
        image_size=args.imagesize, etc=args.etc, devices=tuple(args.device or ()),
        graphics=args.graphics, graphics_listen=args.graphics_listen,
    )


def _mounts(args: argparse.Namespace) -> tuple[MountSpec, ...]:
    """-m specs, parsed once here: what comes after works on the parsed specs."""
    if not args.mount:
        return ()  # (a plain run imports no more than it needs)
    from .mounts import parse_mount
    return tuple(map(parse_mount, args.mount))


def _networks(args: argparse.Namespace) -> tuple[NetSpec, ...]:
    if not args.network:
        return ()
    from .network import parse_network
    return tuple(map(parse_network, args.network))


def _limit_args(args: argparse.Namespace) -> LimitArgs:
    from .limits import LimitArgs

    return LimitArgs(memory=args.memory, cpu_weight=args.cpu_weight, cpu_quota=args.cpu_quota,
                     blkio_weight=args.blkio_weight, tasks=args.tasks,
                     memory_soft=args.memory_soft, memory_swap=args.memory_swap,
                     cpuset=args.cpuset, numa_nodes=args.numa_nodes,
                     device_read_bps=tuple(args.device_read_bps or ()),
                     device_write_bps=tuple(args.device_write_bps or ()),
                     device_read_iops=tuple(args.device_read_iops or ()),
                     device_write_iops=tuple(args.device_write_iops or ()),
                     inbound=tuple(getattr(args, "inbound", None) or ()),
                     outbound=tuple(getattr(args, "outbound", None) or ()))


def cmd_limit(args: argparse.Namespace, paths: Paths) -> int:
    from .manage import set_limits

    given = _limit_args(args)
    changed = set_limits(paths, args.name, given)
    if changed:
        print(f"{args.name}: " + ", ".join(changed))
    elif any(v not in (None, ()) for v in vars(given).values()):
        print(f"{args.name}: already as given; nothing changed")
    else:
        print(f"{args.name}: no limit given; nothing changed")
    return 0


def cmd_clone(args: argparse.Namespace, paths: Paths) -> int:
    from .clone import CloneRequest, clone

    clone(CloneRequest(args.source, args.dest, args.path, args.security), paths)
    print(f"cloned sandbox {args.source} as {args.dest}")
    return 0


def after_dashes(words: list[str], usage: str) -> tuple[str, ...]:
    """The command after NAME (argparse has dropped a `--` there). An option after NAME,
    say --dry-run, would silently become the command: a command is an absolute path, so a
    first word starting with '-' is refused instead."""
    if words and words[0] == "--":
        words = words[1:]
    if words and words[0].startswith("-"):
        raise UserError(f"unexpected {shown(words[0])} after the sandbox name",
                        f"options go before the name; a command goes after --: {usage}")
    return tuple(words)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' must be a positive number of seconds")
    return value


def cmd_start(args: argparse.Namespace, paths: Paths) -> int:
    from .apply.libvirt import connect
    from .runtime import backend

    cfg = load_config(paths, args.name)
    if args.tty:
        from .runtime.console import check_start_tty

        check_start_tty(cfg, args.detach)
    return int(backend(cfg).start(connect(cfg.uri), cfg, paths, detach=args.detach,
                                  timeout=args.timeout, tty=args.tty))


def cmd_stop(args: argparse.Namespace, paths: Paths) -> int:
    from .hostpaths import read_config_text
    from .runtime import poweroff

    path, text = read_config_text(paths, args.name)  # read once: the request, then the config
    # First of all (a local LXC sandbox): the request, so that its services drain while the
    # config module, libvirt's binding and the runtime load (issue 16: 0.05-0.1 s of every
    # stop).
    asked = poweroff.request(paths, args.name, text)
    from .config import SandboxConfig

    cfg = SandboxConfig.from_json(text, str(path))
    from .apply.libvirt import connect
    from .runtime import backend

    if not backend(cfg).stop(connect(cfg.uri), cfg, paths, timeout=args.timeout, asked=asked):
        print(f"sandbox {args.name} was not running")
    return 0


def cmd_delete(args: argparse.Namespace, paths: Paths) -> int:
    from .manage import delete

    delete(paths, args.name, force=args.force)
    print(f"deleted sandbox {args.name}")
    return 0


def cmd_list(args: argparse.Namespace, paths: Paths) -> int:
    from .manage import format_list, sandbox_rows

    rows = sandbox_rows(paths)
    print(json.dumps(rows, indent=2) if args.json else format_list(rows))
    return 0


def cmd_inspect(args: argparse.Namespace, paths: Paths) -> int:
    from .manage import format_inspect, inspect_data

    data = inspect_data(paths, args.name)
    print(json.dumps(data, indent=2) if args.json else format_inspect(data))
    return 0


def cmd_execute(args: argparse.Namespace, paths: Paths) -> int:
    from .apply.libvirt import connect
    from .limits import jail
    from .runtime import backend

    cfg = load_config(paths, args.name)
    rt = backend(cfg)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("execute needs a command after --", "e.g. execute web1 -- apachectl -S")
    dom = rt.domain(connect(cfg.uri), cfg)
    sys.stdout.flush()
    return int(rt.execute(dom, command, rt.sandbox_env(cfg), jail=jail(cfg)))


def cmd_run(args: argparse.Namespace, paths: Paths) -> int:
    from .runtime.oneshot import RunOptions, run

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.graphics is None and (args.graphics_listen or args.graphics_password_file):
        raise UserError("--graphics-listen and --graphics-password-file go with --graphics",
                        "add --graphics vnc (or spice)")
    display = None
    if args.graphics is not None:
        from .graphics import request

        display = request(args.graphics, args.graphics_listen, args.graphics_password_file)
    return run(args.connect, command, paths, RunOptions(
        limits=_limit_args(args), cap_drop=tuple(args.cap_drop or ()),
        cap_add=tuple(args.cap_add or ()), syscall_allow=tuple(args.syscall_allow or ()),
        mounts=_mounts(args), networks=_networks(args)), tty=args.tty, graphics=display)


def cmd_connect(args: argparse.Namespace, paths: Paths) -> int:
    from .runtime.connect import connect

    return connect(load_config(paths, args.name))


def cmd_upgrade(args: argparse.Namespace, paths: Paths) -> int:
    from .upgrade import all_names, command

    if bool(args.name) == args.all:
        raise UserError("give a sandbox NAME or --all", "e.g. upgrade web1, or upgrade --all")
    return command(paths, [args.name] if args.name else all_names(paths),
                   apply_host_changes=args.apply_host_changes, check=args.check,
                   as_json=args.json, single=bool(args.name))


def cmd_apply(args: argparse.Namespace, paths: Paths) -> int:
    from .declare import command

    return command(paths, args.paths, check=args.check, prune=args.prune)


def cmd_learn(args: argparse.Namespace, paths: Paths) -> int:
    from .learn import command

    return command(paths, args.name, add=args.add, seconds=args.seconds)


def cmd_completion(args: argparse.Namespace, paths: Paths) -> int:
    from .completion import bash

    sys.stdout.write(bash(build_parser()))
    return 0


def cmd_reload(args: argparse.Namespace, paths: Paths) -> int:
    from .apply.libvirt import connect
    from .runtime import backend

    cfg = load_config(paths, args.name)
    rt = backend(cfg)
    return int(rt.reload(rt.domain(connect(cfg.uri), cfg), cfg, list(args.unit or ())))


def cmd_doctor(args: argparse.Namespace, paths: Paths) -> int:
    from .doctor import checks, checks_json, format_checks

    result = checks(fix=args.fix)
    print(json.dumps(checks_json(result), indent=2) if args.json else format_checks(result))
    return 0 if all(c.ok for c in result) else 1


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. `only`: the one subcommand about to run (main's case). The others
    are then listed by name and help without their options: defining them all costs about
    10 ms, which every command paid before doing anything (issue 16)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Confine installed system daemons in persistent per-instance libvirt "
                    "sandboxes managed by systemd.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="log each step; show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines for long steps (shown only on a terminal anyway)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (help_text, define) in COMMANDS.items():
        if only is None or name == only:
            define(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return p


Subparsers = argparse._SubParsersAction  # what add_subparsers returns
Definer = Callable[["Subparsers[argparse.ArgumentParser]", str, str], None]


def _def_clone(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    cl = sub.add_parser(name, help=help_text,
                        description="copy a sandbox's private content into a new sandbox with "
                                    "a new name, hostname, machine-id, label, domain and unit")
    cl.add_argument("-p", "--path", metavar="PATH",
                    help="directory for the new state (default: beside the source's)")
    cl.add_argument("-s", "--security", metavar="SECURITY",
                    help="dynamic (default) or static,label=USER:ROLE:TYPE:LEVEL")
    cl.add_argument("source", help="existing sandbox")
    cl.add_argument("dest", help="new sandbox name")
    cl.set_defaults(func=cmd_clone)


def _def_start(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    sp = _named(sub, name, help_text, cmd_start)
    sp.add_argument("--detach", action="store_true",
                    help="return once the sandbox is ready instead of staying in the "
                         "foreground (the unit's ExecStart stays in the foreground)")
    sp.add_argument("--timeout", type=positive_seconds, default=90,
                    help="seconds to wait for ready")
    sp.add_argument("-t", "--tty", action="store_true",
                    help="a generic LXC sandbox in the foreground: its command's terminal "
                         "(the sandbox's console) is ours, raw, with our window size")


def _def_stop(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    _named(sub, name, help_text, cmd_stop).add_argument(
        "--timeout", type=positive_seconds, default=30,
        help="seconds for a clean shutdown before the domain is destroyed")


def _def_delete(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    _named(sub, name, help_text, cmd_delete).add_argument(
        "-f", "--force", action="store_true", help="stop it first if it runs")


def _def_list(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    lst = sub.add_parser(name, help=help_text)
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=cmd_list)


def _def_inspect(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    _named(sub, name, help_text, cmd_inspect).add_argument(
        "--json", action="store_true", help="machine-readable output")


def _def_execute(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    _named(sub, name, help_text, cmd_execute).add_argument(
        "command", nargs=argparse.REMAINDER, help="-- CMD ARGS")


def _def_connect(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    _named(sub, name, help_text, cmd_connect)


def _def_upgrade(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    up = sub.add_parser(name, help=help_text,
                        description="bring sandboxes up to date after the host's packages or "
                                    "this tool changed: re-derive their definitions from their "
                                    "configs and replace what differs; never the instance's "
                                    "data or an admin's edit")
    up.add_argument("name", nargs="?", help="sandbox name")
    up.add_argument("--all", action="store_true", help="every sandbox")
    up.add_argument("--apply-host-changes", action="store_true",
                    help="copy the host's version over conffiles the instance did not edit")
    up.add_argument("--check", action="store_true",
                    help="change nothing; exit 3 if anything differs from this version's")
    up.add_argument("--json", action="store_true", help="machine-readable output")
    up.set_defaults(func=cmd_upgrade)


def _def_learn(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    lrn = _named(sub, name, help_text, cmd_learn)
    lrn.add_argument("--seconds", type=positive_seconds, default=10, metavar="N",
                     help="how long to watch the units from their first open (default 10)")
    lrn.add_argument("--add", action="store_true",
                     help="also copy what it lacks under /var from the host into the "
                          "instance (the sandbox must be stopped)")


def _def_limit(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    from . import settings

    lim = _named(sub, name, help_text, cmd_limit)
    settings.add(lim, "limits")
    for direction, way in (("inbound", "into"), ("outbound", "out of")):
        lim.add_argument(f"--{direction}", action="append", metavar="[NET=]RATE",
                         help=f"bandwidth {way} the sandbox on its interface on network NET "
                              "(NET may be left out where it has one): AVG[:PEAK[:BURST]], "
                              "e.g. 1M or default=1M:4M:256K; 0 removes it (repeatable: one "
                              "an interface)")


def _def_reload(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    _named(sub, name, help_text, cmd_reload).add_argument(
        "-u", "--unit", action="append", metavar="UNIT",
        help="only this confined unit (default: all of them)")


def _def_completion(sub: Subparsers[argparse.ArgumentParser], name: str,
                    help_text: str) -> None:
    comp = sub.add_parser(name, help=help_text,
                          description="print the completion script for SHELL, generated from "
                                      "these very command line definitions")
    comp.add_argument("shell", choices=["bash"], help="the shell: bash")
    comp.set_defaults(func=cmd_completion)


def _def_doctor(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    doc = sub.add_parser(name, help=help_text)
    doc.add_argument("--fix", action="store_true",
                     help="apply the additive host fixes doctor names (cgroup layout)")
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.set_defaults(func=cmd_doctor)


def _named(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str,
           func: Handler) -> argparse.ArgumentParser:
    """A subcommand taking a sandbox's name."""
    sp = sub.add_parser(name, help=help_text, description=help_text)
    sp.add_argument("name", help="sandbox name")
    sp.set_defaults(func=func)
    return sp


CREATE_USAGE = ("%(prog)s [OPTIONS] -u UNIT [-u UNIT]... NAME\n"
                "       %(prog)s [OPTIONS] NAME -- CMD [ARGS]...")
CREATE_EXAMPLES = """examples:
  virt-sandbox-service create -u apache2.service web1
      confine the host's apache2 in sandbox web1: a fresh instance of its packages
  virt-sandbox-service create -C -u apache2.service web2
      the same, starting from the host's current data (its sites, its keys)
  virt-sandbox-service create --dry-run -u nginx.service web3
      show the plan: what is private, shared and hidden, and why; change nothing
  virt-sandbox-service create -c qemu:///system -u apache2.service vm1
      the same as a micro-VM booting the host's kernel
  virt-sandbox-service create -U www-data -i 256M web4 -- /usr/bin/python3 -m http.server 8000
      a generic sandbox running one command as www-data, its state in a 256M image
  virt-sandbox-service create --memory 512M --cap-add sys_time -u chrony.service ntp1
      with a memory limit, and the capability a time daemon needs
  virt-sandbox-service create --graphics vnc -c qemu:///system term1 -- /usr/bin/xterm
      a micro-VM with a display: start runs the host's X server and xterm on it, and
      prints the address for virt-viewer

then: virt-sandbox-service start NAME, or systemctl start NAME_sandbox.service"""
RUN_USAGE = "%(prog)s [OPTIONS] -- CMD [ARGS]..."
RUN_EXAMPLES = """examples:
  virt-sandbox-service run -- /bin/sh -c 'echo out; echo err >&2; exit 7'
      exits 7; out on stdout, err on stderr
  virt-sandbox-service run --memory 256M -m host-bind:/mnt=/srv/data -- /usr/bin/python3 /mnt/job.py
      with a memory limit and a host directory at /mnt
  virt-sandbox-service run -c qemu:///system -- /bin/uname -r
      in a micro-VM
  virt-sandbox-service run -c qemu:///session -- /bin/id
      in a micro-VM of a normal user's own libvirt, as that user (no network)
  virt-sandbox-service run -t -- /bin/bash
      an interactive shell on a terminal of its own (job control, window size, Ctrl-C)
  virt-sandbox-service run --graphics vnc -c qemu:///system -- /usr/bin/xterm
      a micro-VM with a display running the host's X server; open the address it prints
      with virt-viewer

exit status: the command's; 125 when run itself failed, 126 when the command cannot be
executed, 127 when it was not found"""


def _def_create(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    from . import settings

    c = sub.add_parser(name, help=help_text, usage=CREATE_USAGE,
                       description="create a unit sandbox (-u UNIT NAME) or a generic one "
                                   "(NAME -- CMD ARGS)",
                       epilog=CREATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The options themselves are rows of the settings table (settings.py).
    settings.add(c.add_argument_group("what it runs"), "what")
    settings.add(c.add_argument_group("its private data"), "data")
    conf = c.add_argument_group("identity and confinement")
    for group in ("identity", "caps", "device"):
        settings.add(conf, group)
    settings.add(c.add_argument_group("limits (change them later with limit)"), "limits")
    settings.add(c.add_argument_group("mounts and networks"), "mounts", fresh="a dir of its own")
    settings.add(c.add_argument_group("the command's user (generic sandboxes)"), "user")
    settings.add(c.add_argument_group("display (generic KVM sandboxes)"), "display",
                 display="start prints the address for virt-viewer on stderr, inspect shows "
                 "it (no password option: see the man page)")
    out = c.add_argument_group("output")
    out.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    out.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    c.add_argument("name", help="sandbox name")
    c.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS (generic sandbox)")
    c.set_defaults(func=cmd_create)


APPLY_EXAMPLES = """examples:
  virt-sandbox-service apply
      converge to every /etc/virt-sandbox-service/sandboxes.d/NAME.sandbox
  virt-sandbox-service apply --check web1.sandbox
      show what applying web1.sandbox would change; exit 3 if anything
  virt-sandbox-service apply --prune /etc/virt-sandbox-service/sandboxes.d
      also delete the sandboxes made from files there that are gone

a file holds create's options as keys of a [Sandbox] section, e.g.
  [Sandbox]
  Unit=apache2.service
  Memory=512M
see the man page, SANDBOX FILES"""


def _def_apply(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    a = sub.add_parser(name, help=help_text,
                       description="create the sandboxes the files describe that are missing, "
                                   "bring those that differ in line (as upgrade does), leave "
                                   "the rest; a bad file is reported and does not stop the "
                                   "others", epilog=APPLY_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("paths", nargs="*", metavar="PATH",
                   help="sandbox files, or directories of them (default: the sandboxes.d "
                        "directory, /etc/virt-sandbox-service/sandboxes.d)")
    a.add_argument("--check", "--dry-run", action="store_true",
                   help="change nothing; show what would change, exit 3 if anything would")
    a.add_argument("--prune", action="store_true",
                   help="also delete (stopping it) each sandbox made from a file in a given "
                        "directory, or a given file, that is no longer there")
    a.set_defaults(func=cmd_apply)


def _def_run(sub: Subparsers[argparse.ArgumentParser], name: str, help_text: str) -> None:
    from . import settings

    r = sub.add_parser(name, help=help_text, usage=RUN_USAGE,
                       description="run a command in a transient sandbox (host root "
                                   "read-only, private /run /tmp, no network unless -N) and "
                                   "return its exit status; its stdout and stderr stay apart. "
                                   "Limits, capabilities, -m and -N work as for create",
                       epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("-c", "--connect", default=DEFAULT_URI, metavar="URI",
                   help=f"libvirt URI: lxc:/// or qemu:///system (root), or qemu:///session "
                        f"(a normal user's own daemon) (default {DEFAULT_URI})")
    r.add_argument_group("terminal").add_argument(
        "-t", "--tty", action="store_true",
        help="give the command a terminal of its own, relayed to ours (raw; window size, "
             "Ctrl-C, Ctrl-Z are the command's; KVM: the size at its start only); stdout and "
             "stderr then share it")
    _add_display(r.add_argument_group("display (KVM)"))
    settings.add(r.add_argument_group("limits"), "limits")
    settings.add(r.add_argument_group("confinement"), "caps")
    settings.add(r.add_argument_group("mounts and networks"), "mounts",
                 fresh="a temporary dir, removed after")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS")
    r.set_defaults(func=cmd_run)


def _add_display(g: Options) -> None:
    from . import settings

    settings.add(g, "display", display="the address for virt-viewer is printed on stderr")
    g.add_argument("--graphics-password-file", metavar="FILE",
                   help="the display's password, the first line of FILE (never on the "
                        "command line, where ps shows it)")


# Every subcommand, in --help's order: its help line and what defines its options.
COMMANDS: dict[str, tuple[str, Definer]] = {
    "create": ("create a sandbox", _def_create),
    "clone": ("a new sandbox from an existing one, with its own identity", _def_clone),
    "start": ("start a sandbox (foreground unless --detach)", _def_start),
    "stop": ("stop a running sandbox", _def_stop),
    "delete": ("delete a sandbox: unit, domain, state, config", _def_delete),
    "list": ("list sandboxes", _def_list),
    "inspect": ("what is private, shared and hidden, and why; label, network, limits",
                _def_inspect),
    "execute": ("run a command inside a running sandbox", _def_execute),
    "connect": ("an interactive login shell in a running sandbox (a KVM sandbox's root "
                "login console); Ctrl-] detaches, the sandbox keeps running", _def_connect),
    "upgrade": ("after host package or tool changes: migrate the config, add newly needed "
                "private paths, report conffile drift, bring the domain, init, host unit and "
                "the tool's own files up to date", _def_upgrade),
    "apply": ("converge sandboxes to their sandbox files (NAME.sandbox)", _def_apply),
    "learn": ("start the units once over copy-up overlays of the host's /etc, /var and /srv, "
              "record what they open (fanotify) as evidence, show what the sandbox lacks",
              _def_learn),
    "limit": ("change a sandbox's limits, live if it runs and for its next start", _def_limit),
    "run": ("run a command in a transient sandbox", _def_run),
    "reload": ("reload the confined units inside the sandbox", _def_reload),
    "completion": ("print the shell completion script", _def_completion),
    "doctor": ("check this host's readiness for sandboxes", _def_doctor),
}


def load_config(paths: Paths, name: str) -> SandboxConfig:
    """config.load_config, loaded only by the commands that read a config, and by `stop`
    only after its request (the config module is the heaviest of the tool's own)."""
    from . import config

    return config.load_config(paths, name)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Treat SIGTERM like Ctrl-C: the running step's Transaction rolls back.
    raise KeyboardInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        command = _subcommand(words)
        args = build_parser(command if command in COMMANDS else None).parse_args(words)
    except SystemExit as e:  # argparse printed the usage error; run keeps 125 for its own
        if e.code == EXIT_USAGE and _subcommand(words) == "run":
            return EXIT_RUN_FAILED
        raise
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format=f"{PROG}: %(message)s")
    signal.signal(signal.SIGTERM, _sigterm)
    progress.set_quiet(args.quiet or args.cmd == "run")  # run's stderr is its command's
    own = (lambda status: EXIT_RUN_FAILED) if args.cmd == "run" else (lambda status: status)
    try:
        return int(args.func(args, Paths.from_env()))
    except SandboxError as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
        return own(e.exit_status)
    except KeyboardInterrupt:
        # A create or clone has rolled back by now; start/stop leave the sandbox consistent.
        print(f"{PROG}: interrupted", file=sys.stderr)
        # CPython 3.11: a Ctrl-C that passed through an exec() of a string (dataclasses and
        # namedtuples build their methods so, as a lazily imported module loads) marks the
        # interpreter as ended by an unhandled Ctrl-C, and `python -m` then kills itself
        # with SIGINT at exit instead of our status. An exec() of a string clears the mark.
        exec("")
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug or an unexpected host failure: one line, details on --debug
        if args.debug:
            raise
        print(f"{PROG}: error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        print(f"{PROG}: hint: rerun with --debug for the traceback, and report it",
              file=sys.stderr)
        return own(EXIT_FAILURE)


def _subcommand(words: Sequence[str]) -> str | None:
    """The subcommand of a command line argparse refused: the first word that is not one of
    the top-level options (none of which takes a value)."""
    return next((w for w in words if not w.startswith("-")), None)


if __name__ == "__main__":
    sys.exit(main())
