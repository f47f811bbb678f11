"""The overlay /etc of LXC sandboxes (plan.py's docstring): what create writes, what the
sandbox sees, and what follows the host. Pure planning tests, file operations as root, and
real sandboxes on libvirt's LXC driver."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from virt_sandbox_service import host
from virt_sandbox_service.apply.files import OPAQUE_XATTR, apply_op, copy_tree, make_whiteout
from virt_sandbox_service.create import CreateRequest, etc_overlay
from virt_sandbox_service.errors import UserError
from virt_sandbox_service.evidence import Access
from virt_sandbox_service.plan import (
    ETC_STAGE,
    AddUser,
    CopyTree,
    MakeDir,
    Opaque,
    Whiteout,
    plan,
)

from .conftest import Env, unique_name
from .test_golden import APACHE_EVIDENCE, FACTS, HIDDEN, config, ev

ETC_EVIDENCE = (
    ev("/etc/apache2"),
    ev("/etc/apache2/apache2.conf", is_dir=False, reason="conffile of apache2"),
    ev("/etc/default"),
    ev("/etc/default/apache-htcacheclean", is_dir=False, reason="conffile of apache2"),
    ev("/etc/logrotate.d/apache2", is_dir=False, reason="conffile of apache2"),
    *APACHE_EVIDENCE,
)
SECRETS = (*HIDDEN,
           ev("/etc/postgresql/15/main/pg_hba.conf", Access.HIDDEN, False, "0640"),
           ev("/etc/systemd/system/secret.conf", Access.HIDDEN, False, "0600"))
STATE = "/var/lib/virt-sandbox-service/web1"


def overlay_plan(**kw: object):  # type: ignore[no-untyped-def]
    cfg = config(etc_overlay=True, **kw)
    return plan(cfg, FACTS, ETC_EVIDENCE, SECRETS, "/c.json", "/run/x",
                (("apache2.service", "/lib/systemd/system/apache2.service"),))


# --- planning (pure) --------------------------------------------------------------------------


def test_upper_layer_holds_only_the_instances_own() -> None:
    p = overlay_plan()
    copies = {op.src: op for op in p.files if isinstance(op, CopyTree)}
    # The service's directories whole (its files in shared ones too), and systemd's; never
    # the whole of /etc.
    assert set(copies) == {"/etc/apache2", "/etc/default", "/etc/logrotate.d/apache2",
                           "/etc/systemd/system"}
    assert copies["/etc/systemd/system"].exclude == (
        "/etc/systemd/system/secret.conf", "/etc/systemd/system/multi-user.target.wants",
        "/etc/systemd/system/getty.target.wants")
    opaque = {op.path for op in p.files if isinstance(op, Opaque)}
    assert opaque == {f"{STATE}/etc/apache2", f"{STATE}/etc/default",
                      f"{STATE}/etc/systemd/system"}  # a file needs no mark
    hidden = {op.hides: op.path for op in p.files if isinstance(op, Whiteout)}
    # Under a copied directory a secret is left out of the copy instead.
    assert hidden == {"/etc/libvirt": f"{STATE}/etc/libvirt",
                      "/etc/shadow": f"{STATE}/etc/shadow",
                      "/etc/postgresql/15/main/pg_hba.conf":
                          f"{STATE}/etc/postgresql/15/main/pg_hba.conf"}
    made = {op.path for op in p.files if isinstance(op, MakeDir)}
    assert {f"{STATE}/etc", f"{STATE}/.etc-work", f"{STATE}/etc/logrotate.d"} <= made


def test_identity_and_systemd_files_come_after_the_copies() -> None:
    p = overlay_plan()
    paths = [getattr(op, "path", getattr(op, "dst", "")) for op in p.files]
    sysd_copy = paths.index(f"{STATE}/etc/systemd/system")
    assert paths.index(f"{STATE}/etc/machine-id") > sysd_copy
    assert paths.index(f"{STATE}/etc/systemd/system/getty.target") > sysd_copy


def test_overlay_mounts_stage_what_belongs_on_etc() -> None:
    p = overlay_plan(mounts=("host-bind:/etc/apache2/sites-enabled=/usr/share/doc",),
                     shared=("/etc/ssl/openssl.cnf",))
    targets = [m.target for m in p.mounts]
    assert "/etc" not in targets
    assert not any(t.startswith("/etc/") for t in targets)
    run = targets.index("/run")
    assert targets[run + 1] == f"{ETC_STAGE}/state"
    staged = [t for t in targets if t.startswith(f"{ETC_STAGE}/mnt/")]
    assert staged == [f"{ETC_STAGE}/mnt/etc/alternatives", f"{ETC_STAGE}/mnt/etc/ssl/certs",
                      f"{ETC_STAGE}/mnt/etc/ld.so.cache", f"{ETC_STAGE}/mnt/etc/ld.so.preload",
                      f"{ETC_STAGE}/mnt/etc/apache2/sites-enabled"]
    assert all(targets.index(t) > run for t in staged)
    ro = {m.target for m in p.mounts if m.readonly}
    assert f"{ETC_STAGE}/mnt/etc/alternatives" in ro


def test_init_mounts_the_overlay_before_anything_runs() -> None:
    p = overlay_plan(mounts=("host-bind:/etc/apache2/sites-enabled=/usr/share/doc",))
    script = p.init[2]
    lines = script.splitlines()
    over = next(i for i, line in enumerate(lines) if "mount -t overlay" in line)
    assert (f"lowerdir=/etc,upperdir={ETC_STAGE}/state/etc,"
            f"workdir={ETC_STAGE}/state/.etc-work") in lines[over]
    assert lines[over].endswith("|| exit 125")
    binds = [i for i, line in enumerate(lines) if line.startswith("mount --rbind")]
    assert binds and all(i > over for i in binds)
    assert "/etc/apache2/sites-enabled" in lines[binds[-1]]
    # Built aside, then moved onto /etc in one step: no program of the init starts with the
    # sandbox's own /etc before the host's loader files are bound on it.
    move = lines.index(f"mount --move {ETC_STAGE}/merged /etc || exit 125")
    assert all(i < move for i in binds) and f"{ETC_STAGE}/merged" in lines[over]
    loader = [i for i in binds if "ld.so." in lines[i]]
    assert len(loader) == 2 and all("rm -rf" in lines[i - 1] for i in loader)
    assert any(line.startswith(f"rm -r --one-file-system {ETC_STAGE}") for line in lines)
    assert lines[-1].startswith("exec /usr/bin/unshare --cgroup")
    assert over > next(i for i, line in enumerate(lines) if "cgroup.procs" in line)


def test_copy_layout_is_unchanged() -> None:
    p = plan(config(), FACTS, ETC_EVIDENCE, SECRETS, "/c.json", "/run/x", ())
    assert [op.src for op in p.files if isinstance(op, CopyTree)] == ["/etc"]
    assert not [op for op in p.files if isinstance(op, (Whiteout, Opaque))]
    assert ("/etc", f"{STATE}/etc") in {(m.target, m.source) for m in p.mounts}
    assert "mount -t overlay" not in p.init[2]


def test_user_of_generic_overlay_sandbox_gets_passwd_copied_up_first() -> None:
    cfg = config(etc_overlay=True, kind=config().kind.GENERIC, units=(), command=("/bin/id",),
                 uid=5000, gid=5000, username="alice", homedir="/var/home/alice")
    p = plan(cfg, FACTS, APACHE_EVIDENCE, SECRETS, "/c.json", "/run/x", ())
    ops = [op for op in p.files if isinstance(op, (CopyTree, AddUser))]
    assert [getattr(op, "src", "add") for op in ops] == ["/etc/passwd", "/etc/group", "add"]


def _req(**kw: object) -> CreateRequest:
    return dataclasses.replace(CreateRequest(name="x", units=("apache2.service",)), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "why"), [
    ({"uri": "qemu:///system"}, "9p or virtiofs"),
    ({"image_size": "64M"}, "-i keeps /etc in an image"),
    ({"userns": True}, "owned by nobody"),
])
def test_overlay_is_refused_where_it_cannot_be(kw: dict[str, object], why: str,
                                               tmp_path: Path) -> None:
    assert etc_overlay(_req(**kw), tmp_path, True, ()) is False
    with pytest.raises(UserError, match=why):
        etc_overlay(_req(etc="overlay", **kw), tmp_path, True, ())


def test_overlay_needs_the_kernels_overlayfs_and_an_upper_capable_fs(tmp_path: Path) -> None:
    assert etc_overlay(_req(), tmp_path, True, ()) is (
        host.fs_type(tmp_path) in host.OVERLAY_UPPER_FS)
    assert etc_overlay(_req(), tmp_path, False, ()) is False
    assert etc_overlay(_req(etc="copy"), tmp_path, True, ()) is False
    with pytest.raises(UserError, match="no overlayfs"):
        etc_overlay(_req(etc="overlay"), tmp_path, False, ())
    whole = (ev("/etc", reason="--private"),)
    assert etc_overlay(_req(), tmp_path, True, whole) is False


def test_fs_type_reads_the_longest_mount_point() -> None:
    assert host.fs_type(Path("/proc/self")) == "proc"
    assert host.fs_type(Path("/proc/no/such/dir")) == "proc"


# --- file operations (root) -------------------------------------------------------------------


@pytest.mark.root
def test_whiteout_makes_parents_like_the_hosts_and_never_replaces(tmp_path: Path) -> None:
    upper = tmp_path / "state" / "etc"
    upper.mkdir(parents=True)
    # /etc/ssl/private: a real host path whose parent /etc/ssl has the host's owner and mode.
    target = str(upper / "ssl" / "private")
    assert make_whiteout(target, "/etc/ssl/private")
    st = os.lstat(target)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    host_ssl, made = os.stat("/etc/ssl"), os.stat(upper / "ssl")
    assert (made.st_mode, made.st_uid, made.st_gid) == (
        host_ssl.st_mode, host_ssl.st_uid, host_ssl.st_gid)
    assert not make_whiteout(target, "/etc/ssl/private")  # there already
    (upper / "shadow").write_text("the sandbox's own\n")
    assert not make_whiteout(str(upper / "shadow"), "/etc/shadow")
    assert (upper / "shadow").read_text() == "the sandbox's own\n"
    (upper / "ssh").write_text("")  # the sandbox replaced a directory by a file
    assert not make_whiteout(str(upper / "ssh" / "ssh_host_rsa_key"), "/etc/ssh/ssh_host_rsa_key")


@pytest.mark.root
def test_tree_copy_keeps_whiteouts_and_opaque_marks(tmp_path: Path) -> None:
    src = tmp_path / "src" / "etc"
    apply_op(MakeDir(str(src / "apache2")))
    apply_op(Opaque(str(src / "apache2")))
    apply_op(Whiteout(str(src / "shadow"), "/etc/shadow"))
    os.mknod(src / "tty", stat.S_IFCHR | 0o600, os.makedev(5, 0))  # a real device: left out
    copy_tree(str(src), str(tmp_path / "dst"), frozenset())
    dst = tmp_path / "dst"
    assert os.getxattr(dst / "apache2", OPAQUE_XATTR) == b"y"
    st = os.lstat(dst / "shadow")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not os.path.lexists(dst / "tty")


# --- real sandboxes ---------------------------------------------------------------------------


@contextlib.contextmanager
def host_file(path: Path, text: str, mode: int) -> Iterator[Path]:
    """A file the test puts into the host's /etc, removed afterwards whatever happens."""
    assert not path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        yield path
    finally:
        path.unlink(missing_ok=True)


def inside(env: Env, name: str, script: str) -> str:
    proc = env.run("execute", name, "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.libvirt
def test_overlay_sandbox_sees_the_host_live_but_not_its_secrets(env: Env) -> None:
    name = unique_name("ov")
    tag = secrets.token_hex(4)
    secret, shown = Path(f"/etc/vss-test-secret-{tag}"), Path(f"/etc/vss-test-shown-{tag}")
    env.run("create", "-u", "apache2.service", name, check=True)
    state = env.state(name)
    files = sum(len(f) + len(d) for _, d, f in os.walk(state))
    assert files < 450, f"{files} entries: the upper layer should hold only the instance's own"
    assert not (state / "etc" / "passwd").exists()  # the host's, through the overlay
    assert (state / "etc" / "apache2" / "apache2.conf").is_file()  # the instance's own
    with host_file(secret, "s3cret\n", 0o600), host_file(shown, "before\n", 0o644):
        env.run("start", "--detach", name, check=True)
        wo = os.lstat(state / "etc" / secret.name)
        assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0  # hidden at start
        out = inside(env, name, f"""
            mount | grep ' on /etc type overlay' >/dev/null && echo overlay
            for f in /etc/shadow /etc/ssl/private /etc/libvirt {secret}; do
              [ -e $f ] && echo "SEES $f"; done
            cat {shown}
            echo mine > /etc/vss-written-inside
            touch /etc/ssl/certs/x 2>/dev/null && echo WROTE-CERTS
            ls /run/.vss-etc 2>/dev/null && echo STAGE-LEFT
            curl -sS -o /dev/null -w '%{{http_code}}\\n' --max-time 5 http://localhost/
        """)
        assert out.split() == ["overlay", "before", "200"], out
        # Live: the host's change to a file that is not the instance's own shows at once.
        shown.write_text("after\n")
        assert inside(env, name, f"cat {shown}").strip() == "after"
        # The instance's own directory is opaque: the host's additions there do not show.
        with host_file(Path(f"/etc/apache2/conf-available/vss-{tag}.conf"), "", 0o644):
            assert inside(env, name, f"ls /etc/apache2/conf-available/vss-{tag}.conf "
                          "2>/dev/null; true").strip() == ""
        env.run("stop", name, check=True)
    assert (state / "etc" / "vss-written-inside").read_text() == "mine\n"
    assert not Path("/etc/vss-written-inside").exists()


@pytest.mark.libvirt
def test_clone_of_an_overlay_sandbox_keeps_its_whiteouts(env: Env) -> None:
    src, dst = unique_name("ovs"), unique_name("ovd")
    env.run("create", "-u", "apache2.service", src, check=True)
    env.run("clone", src, dst, check=True)
    st = os.lstat(env.state(dst) / "etc" / "shadow")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(env.state(dst) / "etc" / "apache2", OPAQUE_XATTR) == b"y"
    assert (env.state(dst) / ".etc-work").is_dir()
    env.run("start", "--detach", dst, check=True)
    out = inside(env, dst, "hostname; [ -e /etc/shadow ] && echo SEES-SHADOW; "
                 "curl -sS -o /dev/null -w '%{http_code}\\n' --max-time 5 http://localhost/")
    assert out.split() == [dst, "200"]
    env.run("stop", dst, check=True)


@pytest.mark.libvirt
def test_etc_copy_is_still_there_on_request(env: Env) -> None:
    name = unique_name("oc")
    env.run("create", "--etc", "copy", "-u", "apache2.service", name, check=True)
    assert (env.state(name) / "etc" / "passwd").is_file()
    assert not (env.state(name) / ".etc-work").exists()
    env.run("start", "--detach", name, check=True)
    out = inside(env, name, "mount | grep -c ' on /etc type overlay'; true")
    assert out.strip() == "0"
    env.run("stop", name, check=True)
    data = env.run("inspect", "--json", name, check=True).stdout
    assert '"layout": "copy"' in data


@pytest.mark.libvirt
def test_etc_overlay_refused_for_kvm_leaves_nothing(env: Env) -> None:
    before = env.snapshot()
    proc = env.run("create", "-c", "qemu:///system", "--etc", "overlay", "-u",
                   "apache2.service", unique_name("ok"))
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 2 and "--etc overlay is not possible here" in proc.stderr
    assert env.snapshot() == before


@pytest.mark.libvirt
def test_mounts_on_etc_sit_on_the_overlay(env: Env, tmp_path: Path) -> None:
    """-m targets and --shared paths under /etc are staged by libvirt and moved onto the
    overlay by the init: each is there, read-only where it should be, and nothing of the
    stage is left in /run."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("hostdata\n")
    name = unique_name("om")
    script = ("cat /etc/vss-m/f; echo x > /etc/vss-ram/y && cat /etc/vss-ram/y; "
              "(echo z >> /etc/ssl/openssl.cnf) 2>/dev/null || echo shared-read-only; "
              "(touch /etc/alternatives/x) 2>/dev/null || echo alternatives-read-only; "
              "mount | grep -c ' on /etc type overlay'; ls -A /run")
    env.run("create", "-m", f"host-bind:/etc/vss-m={data}", "-m", "ram:/etc/vss-ram=1M",
            "--shared", "/etc/ssl/openssl.cnf", name, "--", "/bin/sh", "-c", script,
            check=True)
    proc = env.run("start", name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "is ready" not in line]
    assert lines[:5] == ["hostdata", "x", "shared-read-only", "alternatives-read-only", "1"]
    assert ".vss-etc" not in lines[5:]
    assert not (env.state(name) / "etc" / "vss-ram" / "y").exists()  # it was a tmpfs


@pytest.mark.libvirt
def test_removing_a_host_file_inside_leaves_a_whiteout_not_a_change(env: Env) -> None:
    """libvirt drops mknod from the sandbox's bounding set; overlayfs still makes whiteouts
    (they need no CAP_MKNOD), so removing or renaming a host file inside works, in the upper
    layer only."""
    name = unique_name("orm")
    env.run("create", name, "--", "/bin/sh", "-c",
            "rm /etc/motd && mv /etc/issue /etc/issue.moved && ls /etc/motd 2>/dev/null; "
            "grep CapBnd /proc/self/status", check=True)
    proc = env.run("start", name, timeout=60)
    assert proc.returncode == 0, proc.stderr
    bnd = int(proc.stdout.split("CapBnd:")[1].split()[0], 16)
    assert not bnd >> 27 & 1  # no CAP_MKNOD
    upper = env.state(name) / "etc"
    for gone in ("motd", "issue"):
        st = os.lstat(upper / gone)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert Path(f"/etc/{gone}").is_file()  # the host's own is untouched
    assert (upper / "issue.moved").read_bytes() == Path("/etc/issue").read_bytes()
