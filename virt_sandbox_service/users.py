"""-U UID, -G GID, --username, --homedir: the user a generic sandbox's command runs as.

Ids and names are resolved on the host when the sandbox is created, and the result (numbers,
name, home) is what the config stores: the sandbox's private /etc is a copy of the host's
taken at the same moment, so the ids mean the same inside.

How the command is started: `setpriv --reuid --regid --init-groups` (util-linux) drops root:
its capabilities go with the uid change, and its supplementary groups become the user's own
as the sandbox's /etc/group lists them, never root's. `env -C HOME` then sets the working
directory and HOME, USER and LOGNAME. Both come from the host root the sandbox runs on, so the
same words work as an LXC init's payload and in a KVM guest's chroot.

The passwd entry: if the uid has none in the copied /etc/passwd, the sandbox gets one
(`name:x:uid:gid::home:/bin/sh`), and a group entry for the gid if it has none. This needs no
NSS trickery and shows in `id`, `ls -l` and `getent` like any other user. An entry that
exists keeps its name (a --username naming the uid differently is refused: the sandbox would
show the host's files of that uid under two names); only its home field follows --homedir.

The home directory (see `home_place`):
- under the private /var: made there, owned by the user, mode 0700 (a directory the /var
  skeleton or the evidence already has is refused: it would change owner);
- at or below a `-m host-bind:DST=SRC` target: the admin's shared host directory, used as it
  is (nothing is made or chowned on the host);
- anywhere else: the instance's own directory <state>/home, owned by the user, bound at the
  home path. The host root is read-only in the sandbox, so that path must exist on the host
  as a mount point (e.g. a host user's /home/alice, which the bind then hides).
Default home: the host entry's, where it can be placed by these rules; else /var/home/NAME
(the private /var, the convention of image-based systems for writable homes).
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import re
from dataclasses import dataclass

from .config import IDMAP_COUNT, shown, validate_abs_path
from .errors import UserError
from .pathevidence import under

ID_MAX = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel
NAME_MAX = 32  # useradd's limit
# POSIX portable user names, with '$' at the end for machine accounts as shadow-utils allows.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
HOME_ROOT = "/var/home"
# Trees a home cannot live in: kernel file systems, the host channel, the sandbox's tops.
NOT_HOME = ("/proc", "/sys", "/dev", "/run", "/etc")
TOPS = ("/", "/etc", "/var", "/tmp", "/usr", "/home")
SHELL = "/bin/sh"


@dataclass(frozen=True)
class UserArgs:
    """The options as typed (None: not given)."""

    user: str | None = None
    group: str | None = None
    username: str | None = None
    homedir: str | None = None

    def given(self) -> list[str]:
        names = (("-U", self.user), ("-G", self.group), ("--username", self.username),
                 ("--homedir", self.homedir))
        return [opt for opt, v in names if v is not None]


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    name: str
    home: str


def parse_id(text: str, what: str, userns: bool) -> int | None:
    """A numeric id in range, or None when `text` is a name."""
    if not text.isdigit():
        return None
    value = int(text)
    limit = IDMAP_COUNT - 1 if userns else ID_MAX
    if value > limit:
        raise UserError(f"{what} {text} is out of range (0..{limit})",
                        "with --userns, ids inside map to a block of 65536" if userns
                        else "ids are 0..4294967294")
    return value


def check_name(name: str, what: str) -> str:
    if not name or len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise UserError(f"{what} {shown(name)} is not a valid name",
                        f"letters, digits, '_', '.', '-' (not first), at most {NAME_MAX}")
    return name


def check_homedir(text: str) -> str:
    home = validate_abs_path(text, "--homedir")
    if ":" in home or "\n" in home:
        raise UserError(f"--homedir {shown(text)} contains ':'", "/etc/passwd cannot hold it")
    if home in TOPS or any(under(home, t) for t in NOT_HOME):
        raise UserError(f"--homedir {home} cannot be a home directory",
                        "use a directory of its own, e.g. /var/home/NAME")
    return home


def _host_user(uid: int | None, name: str | None) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(name or "")
    except KeyError:
        return None


def resolve(args: UserArgs, userns: bool = False) -> RunAs | None:
    """The user to run as, from the options and the host's user database; None: root as
    before (no option given). Checks everything; reads only."""
    if not args.given():
        return None
    if args.user is None:
        raise UserError(f"{args.given()[0]} needs -U UID", "e.g. -U 1000 or -U www-data")
    uid = parse_id(args.user, "-U uid", userns)
    if uid is None:
        check_name(args.user, "-U user")
    entry = _host_user(uid, args.user)
    if uid is None:
        if entry is None:
            raise UserError(f"no user {shown(args.user)} on the host",
                            "give a numeric uid, and --username to name it in the sandbox")
        uid = parse_id(str(entry.pw_uid), "-U uid", userns)
        assert uid is not None
    name = _name(args.username, entry, uid)
    gid = _gid(args.group, entry, uid, userns)
    home = check_homedir(args.homedir) if args.homedir is not None else _default_home(entry, name)
    return RunAs(uid, gid, name, home)


def _name(username: str | None, entry: pwd.struct_passwd | None, uid: int) -> str:
    if username is None:
        return entry.pw_name if entry else f"u{uid}"
    check_name(username, "--username")
    if entry is not None and entry.pw_name != username:
        raise UserError(f"uid {uid} is '{entry.pw_name}' on the host; --username "
                        f"{username} would give it a second name in the sandbox",
                        f"leave --username out, or use --username {entry.pw_name}")
    other = _host_user(None, username)
    if other is not None and other.pw_uid != uid:
        raise UserError(f"user '{username}' is uid {other.pw_uid} on the host, not {uid}",
                        f"use -U {other.pw_uid}, or another --username")
    return username


def _gid(group: str | None, entry: pwd.struct_passwd | None, uid: int, userns: bool) -> int:
    if group is None:
        return entry.pw_gid if entry else uid  # a user private group, as useradd makes
    gid = parse_id(group, "-G gid", userns)
    if gid is not None:
        return gid
    check_name(group, "-G group")
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise UserError(f"no group {shown(group)} on the host", "give a numeric gid") from None
    checked = parse_id(str(gid), "-G gid", userns)
    assert checked is not None
    return checked


def _default_home(entry: pwd.struct_passwd | None, name: str) -> str:
    if entry is not None:
        try:
            home = check_homedir(entry.pw_dir)
        except UserError:
            home = ""
        if home and (under(home, "/var") or os.path.isdir(home)):
            return home
    return f"{HOME_ROOT}/{name}"


class HomePlace(enum.StrEnum):
    PRIVATE_TREE = "private-tree"  # made in the private /etc or /var
    SHARED = "shared"  # under an admin's -m host-bind:DST=SRC
    STATE = "state"  # <state>/home bound at the path


def home_place(home: str, bind_targets: tuple[str, ...]) -> HomePlace:
    """Where the home lives (see the module docstring). Pure."""
    if any(under(home, t) for t in bind_targets):
        return HomePlace.SHARED
    if under(home, "/var"):
        return HomePlace.PRIVATE_TREE
    return HomePlace.STATE


def check_home(home: str, binds: tuple[tuple[str, str], ...]) -> None:
    """The home must be able to exist: a home bound from the state dir needs its mount point
    on the (read-only) host root; a home in an admin's host-bind (`binds`: (target, source)
    pairs) must exist in its source, as nothing is made there."""
    place = home_place(home, tuple(t for t, _ in binds))
    if place is HomePlace.SHARED:
        target, source = next((t, s) for t, s in binds if under(home, t))
        on_host = os.path.join(source, os.path.relpath(home, target)) if source else ""
        if source and not os.path.isdir(on_host):
            raise UserError(f"--homedir {home} lies in -m host-bind:{target}={source}, but "
                            f"{on_host} does not exist", "create it (owned by the user) first")
        return
    if place is HomePlace.STATE and not os.path.isdir(home):
        raise UserError(f"--homedir {home} does not exist on the host root, which the "
                        "sandbox sees read-only (the home is bound there)",
                        f"use a home under /var (default {HOME_ROOT}/NAME), or create the "
                        "directory on the host first")


def payload(setpriv: str, env: str, run_as: RunAs | None) -> tuple[str, ...]:
    """The words before the command that make it run as the user (none for root)."""
    if run_as is None:
        return ()
    r = run_as
    return (setpriv, f"--reuid={r.uid}", f"--regid={r.gid}", "--init-groups", "--",
            env, "-C", r.home, f"HOME={r.home}", f"USER={r.name}", f"LOGNAME={r.name}")


def passwd_with(text: str, r: RunAs) -> str:
    """/etc/passwd with an entry for the user: added, or its home field set."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        f = line.split(":")
        if len(f) >= 7 and f[2] == str(r.uid):
            f[5] = r.home
            lines[i] = ":".join(f)
            return "\n".join(lines) + "\n"
    return "\n".join([*lines, f"{r.name}:x:{r.uid}:{r.gid}::{r.home}:{SHELL}"]) + "\n"


def group_with(text: str, r: RunAs) -> str:
    """/etc/group with an entry for the gid (named after the user when that name is free)."""
    lines = text.splitlines()
    fields = [line.split(":") for line in lines]
    if any(len(f) >= 3 and f[2] == str(r.gid) for f in fields):
        return text if text.endswith("\n") or not text else text + "\n"
    names = {f[0] for f in fields}
    name = r.name if r.name not in names else f"g{r.gid}"
    return "\n".join([*lines, f"{name}:x:{r.gid}:"]) + "\n"


def from_config(uid: int | None, gid: int | None, name: str, home: str) -> RunAs | None:
    if uid is None:
        return None
    return RunAs(uid, uid if gid is None else gid, name, home)
