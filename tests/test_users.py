"""-U UID, -G GID, --username, --homedir for generic sandboxes.

Pure: resolution against the host's user database, the passwd/group edits, where the home
lives, the command's wrapper, the config round trip. Real: an LXC sandbox whose command
reports its ids and writes its home; bad input refused before any side effect.
"""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
from pathlib import Path

import pytest

from virt_sandbox_service.config import Kind, SandboxConfig
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.host import HostFacts
from virt_sandbox_service.plan import AddUser, MakeDir, plan
from virt_sandbox_service.users import (
    HomePlace,
    RunAs,
    UserArgs,
    group_with,
    home_place,
    passwd_with,
    payload,
    resolve,
)

from .conftest import Env, need, unique_name

WWW = pwd.getpwnam("www-data")


def _free_uid() -> int:
    for uid in range(5000, 6000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            try:
                grp.getgrgid(uid)
            except KeyError:
                return uid
    raise AssertionError("no free uid in 5000..5999")


# --- resolution (reads the host's user database) -------------------------------------------


def test_no_option_means_root_as_before() -> None:
    assert resolve(UserArgs()) is None


def test_host_user_by_name_takes_its_ids_and_home() -> None:
    r = resolve(UserArgs(user="www-data"))
    assert r == RunAs(WWW.pw_uid, WWW.pw_gid, "www-data", WWW.pw_dir)


def test_host_uid_by_number_is_the_same_user() -> None:
    assert resolve(UserArgs(user=str(WWW.pw_uid))) == resolve(UserArgs(user="www-data"))


def test_unknown_uid_gets_defaults_of_its_own() -> None:
    uid = _free_uid()
    assert resolve(UserArgs(user=str(uid))) == RunAs(uid, uid, f"u{uid}", f"/var/home/u{uid}")
    r = resolve(UserArgs(user=str(uid), group="0", username="alice", homedir="/var/lib/al"))
    assert r == RunAs(uid, 0, "alice", "/var/lib/al")


def test_group_by_host_name() -> None:
    r = resolve(UserArgs(user=str(_free_uid()), group="www-data"))
    assert r is not None and r.gid == grp.getgrnam("www-data").gr_gid


def test_unusable_host_home_falls_back_to_var_home() -> None:
    # nobody's home is /nonexistent: it cannot be bound (the host root is read-only there)
    assert resolve(UserArgs(user="nobody")) == RunAs(65534, 65534, "nobody", "/var/home/nobody")


@pytest.mark.parametrize(("args", "userns", "needle"), [
    (UserArgs(user="4294967295"), False, "-U uid 4294967295 is out of range"),
    (UserArgs(user="70000"), True, "-U uid 70000 is out of range (0..65535)"),
    (UserArgs(user="1", group="99999999999"), False, "-G gid 99999999999 is out of range"),
    (UserArgs(user="no-such-user-vss"), False, "no user 'no-such-user-vss' on the host"),
    (UserArgs(user="-5"), False, "-U user '-5' is not a valid name"),
    (UserArgs(user="a b"), False, "-U user 'a b' is not a valid name"),
    (UserArgs(user="5000", group="no-such-group-vss"), False, "no group 'no-such-group-vss'"),
    (UserArgs(user="5000", username="Bad Name"), False, "--username 'Bad Name' is not valid"),
    (UserArgs(user="5000", username="x" * 33), False, "is not a valid name"),
    (UserArgs(user="www-data", username="web"), False, "uid 33 is 'www-data' on the host"),
    (UserArgs(user="5000", username="www-data"), False, "user 'www-data' is uid 33"),
    (UserArgs(user="5000", homedir="home/x"), False, "is not an absolute path"),
    (UserArgs(user="5000", homedir="/var/x/../y"), False, "must not contain '..'"),
    (UserArgs(user="5000", homedir="/var/a:b"), False, "contains ':'"),
    (UserArgs(user="5000", homedir="/"), False, "cannot be a home directory"),
    (UserArgs(user="5000", homedir="/var"), False, "cannot be a home directory"),
    (UserArgs(user="5000", homedir="/etc/x"), False, "cannot be a home directory"),
    (UserArgs(user="5000", homedir="/proc/x"), False, "cannot be a home directory"),
    (UserArgs(username="alice"), False, "--username needs -U UID"),
    (UserArgs(group="0"), False, "-G needs -U UID"),
])
def test_bad_user_options(args: UserArgs, userns: bool, needle: str) -> None:
    with pytest.raises(UserError) as e:
        resolve(args, userns)
    assert needle.replace(" is not valid", " is not a valid name") in e.value.message


# --- pure pieces ----------------------------------------------------------------------------

ALICE = RunAs(5000, 5000, "alice", "/var/home/alice")


def test_passwd_gets_an_entry_only_where_the_uid_has_none() -> None:
    text = "root:x:0:0:root:/root:/bin/bash\n"
    assert passwd_with(text, ALICE) == text + "alice:x:5000:5000::/var/home/alice:/bin/sh\n"
    www = "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    r = RunAs(33, 33, "www-data", "/srv/home")
    assert passwd_with(www, r) == "www-data:x:33:33:www-data:/srv/home:/usr/sbin/nologin\n"


def test_group_entry_named_after_the_user_unless_taken() -> None:
    assert group_with("root:x:0:\n", ALICE) == "root:x:0:\nalice:x:5000:\n"
    assert group_with("alice:x:7:\n", ALICE) == "alice:x:7:\ng5000:x:5000:\n"
    assert group_with("users:x:5000:\n", ALICE) == "users:x:5000:\n"


def test_home_place() -> None:
    assert home_place("/var/home/alice", ()) is HomePlace.PRIVATE_TREE
    assert home_place("/home/alice", ()) is HomePlace.STATE
    assert home_place("/srv/data/alice", ("/srv/data",)) is HomePlace.SHARED


def test_payload_drops_root_and_sets_the_environment() -> None:
    assert payload("/usr/bin/setpriv", "/usr/bin/env", None) == ()
    assert payload("/usr/bin/setpriv", "/usr/bin/env", ALICE) == (
        "/usr/bin/setpriv", "--reuid=5000", "--regid=5000", "--init-groups", "--",
        "/usr/bin/env", "-C", "/var/home/alice", "HOME=/var/home/alice", "USER=alice",
        "LOGNAME=alice")


def generic(**kw: object) -> SandboxConfig:
    base = SandboxConfig(name="g", kind=Kind.GENERIC, uri="lxc:///", state_dir="/s/g",
                         command=("/bin/id",), uid=5000, gid=100, username="alice",
                         homedir="/var/home/alice")
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_config_round_trips_the_user() -> None:
    cfg = generic()
    assert SandboxConfig.from_json(cfg.to_json()) == cfg
    old = json.loads(cfg.to_json())
    for key in ("uid", "gid", "username", "homedir", "image_size"):
        del old[key]  # a file written before these fields: still loads, as root
    loaded = SandboxConfig.from_json(json.dumps(old))
    assert (loaded.uid, loaded.username, loaded.image_size) == (None, "", None)


def test_plan_makes_the_home_in_the_private_var() -> None:
    p = plan(generic(), HostFacts(), (), (), "/c/g.json", "/r/g")
    assert AddUser("/s/g/etc", 5000, 100, "alice", "/var/home/alice",
                   reason="the user of -U 5000 (alice), if /etc lacks it") in p.files
    dirs = {op.path: (op.mode, op.uid, op.gid) for op in p.files if isinstance(op, MakeDir)}
    assert dirs["/s/g/var/home"] == (0o755, 0, 0)
    assert dirs["/s/g/var/home/alice"] == (0o700, 5000, 100)
    assert "setpriv" in " ".join(p.init) and p.init[-1] == "/bin/id"


def test_plan_binds_a_state_home_elsewhere() -> None:
    p = plan(generic(homedir="/home/alice"), HostFacts(), (), (), "/c/g.json", "/r/g")
    assert [(m.target, m.source) for m in p.mounts][-1] == ("/home/alice", "/s/g/home")
    assert MakeDir("/s/g/home", 0o700, 5000, 100, reason="home of alice, writable by it") \
        in p.files


def test_plan_refuses_a_home_the_var_skeleton_has() -> None:
    from virt_sandbox_service.evidence import Access, PathEvidence

    tmp = PathEvidence("/var/tmp", Access.PRIVATE, True, ("skeleton",), (0, 0), 0o1777)
    with pytest.raises(UserError, match="/var/tmp is a directory the sandbox's /var"):
        plan(generic(homedir="/var/tmp"), HostFacts(), (tmp,), (), "/c/g.json", "/r/g")


# --- real sandboxes -------------------------------------------------------------------------

PROBE = ("id -u; id -g; id -G; echo $HOME; pwd; id -un; touch $HOME/x && echo wrote; "
         "cat /proc/self/status | grep ^CapEff")


def run_probe(env: Env, name: str, *options: str) -> list[str]:
    env.run("create", *options, name, "--", "/bin/sh", "-c",
            f"({PROBE}) > /var/tmp/probe 2>&1", check=True)
    proc = env.run("start", name, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return (env.state(name) / "var" / "tmp" / "probe").read_text().splitlines()


@pytest.mark.root
@pytest.mark.libvirt
def test_generic_sandbox_runs_as_the_user_with_a_writable_home(env: Env) -> None:
    uid = _free_uid()
    name = unique_name("usr")
    out = run_probe(env, name, "-U", str(uid), "-G", "www-data", "--username", "alice")
    gid = grp.getgrnam("www-data").gr_gid
    assert out == [str(uid), str(gid), str(gid), "/var/home/alice", "/var/home/alice",
                   "alice", "wrote", "CapEff:\t0000000000000000"]
    home = env.state(name) / "var" / "home" / "alice"
    st = os.stat(home)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o700)
    assert (home / "x").stat().st_uid == uid
    passwd = (env.state(name) / "etc" / "passwd").read_text()
    assert f"alice:x:{uid}:{gid}::/var/home/alice:/bin/sh\n" in passwd
    assert "alice" not in Path("/etc/passwd").read_text()  # the host's is untouched
    data = json.loads(env.run("inspect", "--json", name, check=True).stdout)
    assert data["user"] == {"uid": uid, "gid": gid, "name": "alice", "home": "/var/home/alice"}
    assert f"user:        alice (uid {uid}, gid {gid}), home /var/home/alice" in \
        env.run("inspect", name, check=True).stdout


@pytest.mark.root
@pytest.mark.libvirt
def test_host_user_gets_its_groups_never_roots(env: Env) -> None:
    name = unique_name("usr")
    out = run_probe(env, name, "-U", "www-data", "--homedir", "/var/lib/www-home")
    assert out[:5] == ["33", "33", "33", "/var/lib/www-home", "/var/lib/www-home"]
    assert out[5:7] == ["www-data", "wrote"]
    # the host's entry is kept, its home field set to --homedir in the instance's copy only
    assert "www-data:x:33:33:www-data:/var/lib/www-home:" in \
        (env.state(name) / "etc" / "passwd").read_text()


@pytest.mark.root
@pytest.mark.libvirt
def test_home_outside_var_is_the_instances_own_dir(env: Env) -> None:
    name = unique_name("usr")
    host_home = Path("/root")  # exists on the host; the sandbox must not see the host's
    out = run_probe(env, name, "-U", str(_free_uid()), "--homedir", str(host_home))
    assert out[3:5] == ["/root", "/root"] and "wrote" in out
    assert (env.state(name) / "home" / "x").exists()
    assert not (host_home / "x").exists()


@pytest.mark.root
@pytest.mark.libvirt
@pytest.mark.parametrize(("options", "needle"), [
    (("-U", "5000", "--homedir", "/no/such/home"), "does not exist on the host root"),
    (("-U", "5000", "--homedir", "/var/tmp"), "is a directory the sandbox's /var already"),
    (("-U", "no-such-user-vss"), "no user 'no-such-user-vss' on the host"),
])
def test_bad_user_input_changes_nothing(env: Env, options: tuple[str, ...],
                                        needle: str) -> None:
    before = env.snapshot()
    proc = env.run("create", *options, unique_name("bad"), "--", "/bin/true")
    assert proc.returncode == 2
    assert needle in proc.stderr.splitlines()[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert env.snapshot() == before


@pytest.mark.root
@pytest.mark.libvirt
def test_unit_sandboxes_refuse_user_options(env: Env) -> None:
    before = env.snapshot()
    proc = env.run("create", "-u", "apache2.service", "-U", "33", unique_name("bad"))
    assert proc.returncode == 2
    assert "-U is for generic sandboxes" in proc.stderr.splitlines()[0]
    assert "User=" in proc.stderr
    assert env.snapshot() == before


@pytest.mark.root
@pytest.mark.kvm
def test_kvm_generic_sandbox_runs_as_the_user(env: Env) -> None:
    from .test_run import reachable

    need(reachable("qemu:///system"), "needs libvirtd with the QEMU driver (scripts/setup.sh)")
    uid = _free_uid()
    name = unique_name("kusr")
    env.run("create", "-c", "qemu:///system", "-U", str(uid), "-G", "www-data", name, "--",
            "/bin/sh", "-c", f"({PROBE}) > /var/tmp/probe 2>&1", check=True)
    proc = env.run("start", name, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = (env.state(name) / "var" / "tmp" / "probe").read_text().splitlines()
    gid = grp.getgrnam("www-data").gr_gid
    assert out[:7] == [str(uid), str(gid), str(gid), f"/var/home/u{uid}", f"/var/home/u{uid}",
                       f"u{uid}", "wrote"]
    assert out[7] == "CapEff:\t0000000000000000"


def test_completion_offers_host_users_and_groups() -> None:
    from .test_completion import complete

    assert "www-data" in complete("create", "-U", "www-")
    assert "www-data" in complete("create", "--gid", "www-")


def test_a_home_in_an_admins_host_bind_must_exist_there(tmp_path: Path) -> None:
    from virt_sandbox_service.users import check_home

    binds = (("/srv/homes", str(tmp_path)),)
    with pytest.raises(UserError, match=f"{tmp_path}/alice does not exist"):
        check_home("/srv/homes/alice", binds)
    (tmp_path / "alice").mkdir()
    check_home("/srv/homes/alice", binds)
    check_home("/srv/homes/alice", (("/srv/homes", ""),))  # the instance's own: made empty
