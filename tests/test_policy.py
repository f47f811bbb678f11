"""policy/: the SELinux module builds with Debian's toolchain and links into Debian's own policy.

Compiling a module (checkmodule) catches syntax errors and types used but neither declared nor
required; a required type that Debian's policy lacks (e.g. container_t) compiles and only fails
when the module is linked into the whole policy, as `semodule -i` does on an SELinux host. So the
module is also linked with Debian's shipped modules (selinux-policy-default) and expanded into a
kernel policy, which is then queried: what a sandbox may do, and what of the host it may not.
None of this needs SELinux enabled. labels.file_contexts is checked against the built .fc.
"""

from __future__ import annotations

import bz2
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from virt_sandbox_service.labels import Level, file_contexts

from .conftest import ROOT, need

POLICY = ROOT / "policy"
MODULE = "virt_sandbox_service"
DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")
DEBIAN_MODULES = Path("/usr/share/selinux/default")
TOOLS_HINT = ("needs selinux-policy-dev, checkpolicy, semodule-utils, selinux-policy-default "
              "and setools (scripts/setup.sh)")
LEVEL = Level("s0", 12, 345)


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def need_tools() -> None:
    need(DEVEL_MAKEFILE.is_file() and DEBIAN_MODULES.is_dir()
         and all(shutil.which(t) for t in ("checkmodule", "semodule_package", "semodule_link",
                                           "semodule_expand", "semodule_unpackage", "sesearch",
                                           "seinfo", "setfiles", "selabel_lookup")),
         TOOLS_HINT)


def build(src: Path) -> subprocess.CompletedProcess[str]:
    """The documented build, in a copy of the source (make writes tmp/ and the .pp there)."""
    return run(["make", "-f", str(DEVEL_MAKEFILE), f"{MODULE}.pp"], cwd=src)


def copy_policy(dest: Path, extra_te: str = "") -> Path:
    shutil.copytree(POLICY, dest)
    if extra_te:
        te = dest / f"{MODULE}.te"
        te.write_text(te.read_text() + extra_te)
    return dest


def link(pp: Path, debian: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Link the module with every module Debian ships (base first), as semodule would."""
    others = sorted(p for p in debian.glob("*.pp") if p.name != "base.pp")
    return run(["semodule_link", "-o", str(out), str(debian / "base.pp"), *map(str, others),
                str(pp)])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools()
    src = copy_policy(tmp_path_factory.mktemp("policy") / "policy")
    proc = build(src)
    assert proc.returncode == 0, f"policy build failed:\n{proc.stdout}{proc.stderr}"
    return src / f"{MODULE}.pp"


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's policy modules, unpacked (semodule_link reads no bzip2)."""
    need_tools()
    out = tmp_path_factory.mktemp("debian")
    for packed in DEBIAN_MODULES.glob("*.pp.bz2"):
        (out / packed.name.removesuffix(".bz2")).write_bytes(bz2.decompress(packed.read_bytes()))
    assert (out / "base.pp").is_file(), f"no base.pp in {DEBIAN_MODULES}"
    return out


@pytest.fixture(scope="module")
def kernel_policy(built: Path, debian: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("link")
    proc = link(built, debian, work / "linked.lnk")
    assert proc.returncode == 0, f"linking into Debian's policy failed:\n{proc.stderr}"
    out = work / "policy.bin"
    proc = run(["semodule_expand", str(work / "linked.lnk"), str(out)])
    assert proc.returncode == 0, f"expanding the linked policy failed:\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def module_fc(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file contexts as packaged in the .pp (m4-expanded), not the source."""
    work = tmp_path_factory.mktemp("fc")
    proc = run(["semodule_unpackage", str(built), str(work / "mod"), str(work / "fc")])
    assert proc.returncode == 0, proc.stderr
    return work / "fc"


def test_module_builds_with_debian_toolchain(built: Path) -> None:
    assert built.is_file() and built.stat().st_size > 0


def test_reference_to_undefined_type_fails_the_build(tmp_path: Path) -> None:
    need_tools()
    src = copy_policy(tmp_path / "policy",
                      "\nallow svirt_lxc_net_t no_such_type_t:file read;\n")
    proc = build(src)
    assert proc.returncode != 0
    assert "unknown type no_such_type_t" in proc.stdout + proc.stderr
    assert not (src / f"{MODULE}.pp").exists()


def test_module_links_into_debian_policy(kernel_policy: Path) -> None:
    assert kernel_policy.is_file() and kernel_policy.stat().st_size > 0


def test_type_debian_lacks_compiles_but_fails_to_link(debian: Path, tmp_path: Path) -> None:
    """Why the link step exists: requiring a type Debian's policy does not have is no
    compile error."""
    src = copy_policy(tmp_path / "policy", "\ngen_require(`\n\ttype container_t;\n')\n"
                      "allow svirt_lxc_net_t container_t:process signal;\n")
    proc = build(src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = link(src / f"{MODULE}.pp", debian, tmp_path / "linked.lnk")
    assert proc.returncode != 0
    assert "container_t" in proc.stderr


def test_file_contexts_are_valid_in_debian_policy(kernel_policy: Path, module_fc: Path) -> None:
    proc = run(["setfiles", "-c", str(kernel_policy), str(module_fc)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# (source, target, class, permission): what a sandbox needs to run, and what starts it.
ALLOWED = [
    # libvirt_lxc execs the init (/bin/sh) with the static label, kills it on destroy.
    ("virtd_lxc_t", "svirt_lxc_net_t", "process", "transition"),
    ("virtd_lxc_t", "svirt_lxc_net_t", "process", "sigkill"),
    ("svirt_lxc_net_t", "shell_exec_t", "file", "entrypoint"),
    # ... and mounts its tmpfs and devpts with context=svirt_sandbox_file_t.
    ("virtd_lxc_t", "tmpfs_t", "filesystem", "relabelfrom"),
    ("virtd_lxc_t", "svirt_sandbox_file_t", "filesystem", "relabelto"),
    ("virtd_lxc_t", "svirt_sandbox_file_t", "chr_file", "create"),
    ("svirt_sandbox_file_t", "svirt_sandbox_file_t", "filesystem", "associate"),
    # The host root, read-only: programs, libraries, unit files, the shared bits of /etc.
    ("svirt_lxc_net_t", "bin_t", "file", "execute_no_trans"),
    ("svirt_lxc_net_t", "init_exec_t", "file", "execute_no_trans"),
    ("svirt_lxc_net_t", "httpd_exec_t", "file", "execute_no_trans"),
    ("svirt_lxc_net_t", "httpd_modules_t", "file", "map"),
    ("svirt_lxc_net_t", "lib_t", "file", "map"),
    ("svirt_lxc_net_t", "usr_t", "file", "read"),
    ("svirt_lxc_net_t", "etc_t", "file", "read"),
    ("svirt_lxc_net_t", "systemd_unit_t", "file", "read"),
    # Its private trees, read-write; their files live on ext4 and on its tmpfs.
    ("svirt_lxc_net_t", "svirt_sandbox_file_t", "file", "create"),
    ("svirt_lxc_net_t", "svirt_sandbox_file_t", "file", "write"),
    ("svirt_lxc_net_t", "svirt_sandbox_file_t", "dir", "mounton"),
    ("svirt_sandbox_file_t", "fs_t", "filesystem", "associate"),
    ("svirt_lxc_net_t", "cgroup_t", "file", "write"),
    # The host side: start receives READY=1; execute enters with the sandbox's label.
    ("svirt_lxc_net_t", "initrc_t", "unix_dgram_socket", "sendto"),
    ("svirt_lxc_net_t", "unconfined_t", "unix_dgram_socket", "sendto"),
    ("unconfined_t", "svirt_lxc_net_t", "process", "transition"),
    # libvirt's LXC driver, which Debian 12's policy leaves short (policy/AVC-debian12.txt).
    ("virtd_t", "virtd_lxc_t", "process", "siginh"),
    ("virtd_lxc_t", "systemd_machined_t", "dbus", "send_msg"),
    ("systemd_machined_t", "virtd_lxc_t", "dbus", "send_msg"),
    ("virtd_lxc_t", "virtd_lxc_t", "bpf", "prog_load"),
    ("virtd_lxc_t", "fuse_device_t", "chr_file", "open"),
    ("virtd_t", "unconfined_t", "fd", "use"),
    ("svirt_lxc_net_t", "systemd_unit_t", "file", "open"),
    ("svirt_lxc_net_t", "fs_t", "filesystem", "mount"),
    # Its overlay /etc, mounted with context= its own file context (initscript.py).
    ("svirt_lxc_net_t", "fs_t", "filesystem", "relabelfrom"),
    ("svirt_lxc_net_t", "svirt_sandbox_file_t", "filesystem", "relabelto"),
    # execute's stdio, relayed through sockets the administrator made at s0.
    ("svirt_lxc_net_t", "unconfined_t", "unix_stream_socket", "write"),
    # run's: the same sockets, handed to the sandbox through libvirtd and its controller.
    ("virtd_t", "unconfined_t", "unix_stream_socket", "read"),
    ("virtd_t", "unconfined_t", "unix_stream_socket", "write"),
    ("virtd_lxc_t", "unconfined_t", "unix_stream_socket", "write"),
]

# What the sandbox must not do, although it runs as root over the host's root filesystem.
DENIED = [
    ("svirt_lxc_net_t", "shadow_t", "file", "read"),
    ("svirt_lxc_net_t", "sshd_key_t", "file", "read"),
    ("svirt_lxc_net_t", "user_home_t", "file", "read"),
    ("svirt_lxc_net_t", "virt_image_t", "file", "read"),
    ("svirt_lxc_net_t", "virt_sandbox_service_var_lib_t", "file", "read"),
    ("svirt_lxc_net_t", "usr_t", "file", "write"),
    ("svirt_lxc_net_t", "bin_t", "file", "write"),
    ("svirt_lxc_net_t", "etc_t", "file", "write"),
    ("svirt_lxc_net_t", "svirt_sandbox_file_t", "file", "execute"),
    ("svirt_lxc_net_t", "svirt_lxc_net_t", "capability", "sys_module"),
    ("svirt_lxc_net_t", "svirt_lxc_net_t", "capability", "sys_time"),
    ("svirt_lxc_net_t", "svirt_lxc_net_t", "capability", "mknod"),
    ("svirt_lxc_net_t", "sysctl_fs_t", "file", "write"),
    ("svirt_lxc_net_t", "ld_so_cache_t", "file", "unlink"),
    ("svirt_lxc_net_t", "user_home_dir_t", "dir", "search"),
    # The tool loads what the init mounts (apply/kernelfs.py); the sandbox loads no module.
    ("svirt_lxc_net_t", "kernel_t", "system", "module_request"),
]


# One setools session answers every query (sesearch would scan the policy once per rule). It
# runs under sesearch's own interpreter, the one Debian's python3-setools is installed for.
QUERY = """
import json, sys, setools
policy = setools.SELinuxPolicy(sys.argv[1])
by_source = {}  # one scan of the policy per source type
def allowed(src, tgt, cls, perm):
    if src not in by_source:
        by_source[src] = list(setools.TERuleQuery(policy, ruletype=["allow"], source=src).results())
    return [str(r) for r in by_source[src] if str(r.tclass) == cls and perm in r.perms
            and tgt in {str(t) for t in r.target.expand()}]
transitions = setools.TERuleQuery(policy, ruletype=["type_transition"], tclass=["process"],
                                  default=sys.argv[2])
print(json.dumps({"allowed": [allowed(*rule) for rule in json.load(sys.stdin)],
                  "transitions_into": [str(r) for r in transitions.results()]}))
"""

Rule = tuple[str, str, str, str]


@pytest.fixture(scope="module")
def analysis(kernel_policy: Path) -> tuple[dict[Rule, list[str]], list[str]]:
    """The rules granting each of ALLOWED and DENIED, and the type transitions into the
    sandbox domain."""
    sesearch = shutil.which("sesearch")
    assert sesearch
    first = Path(sesearch).read_text(errors="replace").splitlines()[0]
    python = first.removeprefix("#!").split() if first.startswith("#!") else ["python3"]
    queries = ALLOWED + DENIED
    proc = subprocess.run([*python, "-c", QUERY, str(kernel_policy), "svirt_lxc_net_t"],
                          input=json.dumps(queries), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return dict(zip(queries, out["allowed"], strict=True)), out["transitions_into"]


@pytest.mark.parametrize("rule", ALLOWED, ids=" ".join)
def test_policy_allows(analysis: tuple[dict[Rule, list[str]], list[str]], rule: Rule) -> None:
    assert analysis[0][rule], f"no rule allows {rule}"


@pytest.mark.parametrize("rule", DENIED, ids=" ".join)
def test_policy_denies(analysis: tuple[dict[Rule, list[str]], list[str]], rule: Rule) -> None:
    assert analysis[0][rule] == []


def test_nothing_enters_a_sandbox_by_type_transition(
        analysis: tuple[dict[Rule, list[str]], list[str]]) -> None:
    """Only an explicit label (libvirt_lxc, execute) puts a process in a sandbox: running an
    ordinary program must never land an administrator or a daemon in one."""
    assert analysis[1] == []


def test_sandbox_domain_is_mcs_constrained(kernel_policy: Path) -> None:
    """Without the attribute the categories bind nothing: one sandbox could write another's
    files, whatever their pair."""
    proc = run(["seinfo", "-x", "-t", "svirt_lxc_net_t", str(kernel_policy)])
    assert proc.returncode == 0, proc.stderr
    assert "mcs_constrained_type" in proc.stdout


# labels.file_contexts


def test_file_contexts_lists_state_private_trees_and_run_dir() -> None:
    private = "system_u:object_r:svirt_sandbox_file_t:s0:c12,c345"
    assert file_contexts("/var/lib/virt-sandbox-service/web1", LEVEL,
                         "/run/virt-sandbox-service/web1") == [
        ("/var/lib/virt-sandbox-service/web1",
         "system_u:object_r:virt_sandbox_service_var_lib_t:s0"),
        ("/var/lib/virt-sandbox-service/web1/etc", private),
        ("/var/lib/virt-sandbox-service/web1/var", private),
        ("/var/lib/virt-sandbox-service/web1/paths", private),
        ("/var/lib/virt-sandbox-service/web1/mounts", private),
        ("/run/virt-sandbox-service/web1", private),
    ]


def test_file_contexts_follow_a_custom_state_dir_and_omit_run_dir() -> None:
    got = file_contexts("/srv/sandboxes/mail.example", Level("s0", 0, 1023))
    assert [p for p, _ in got] == ["/srv/sandboxes/mail.example",
                                   "/srv/sandboxes/mail.example/etc",
                                   "/srv/sandboxes/mail.example/var",
                                   "/srv/sandboxes/mail.example/paths",
                                   "/srv/sandboxes/mail.example/mounts"]
    assert all(ctx.endswith(":s0:c0,c1023") for _, ctx in got[1:])


def fc_type(fc: Path, path: str) -> str:
    """The type libselinux's own matcher gives `path` from the module's file contexts."""
    proc = run(["selabel_lookup", "-b", "file", "-k", path, "-f", str(fc)])
    assert proc.returncode == 0, f"{path}: {proc.stdout}{proc.stderr}"
    return proc.stdout.split()[-1].split(":")[2]


def test_file_contexts_agree_with_the_fc(module_fc: Path) -> None:
    """Same types as the .fc for each path and what lies below it, so restorecon (which, without
    -F, changes only types) keeps the labels the tool sets."""
    for path, ctx in file_contexts("/var/lib/virt-sandbox-service/web1", LEVEL,
                                   "/run/virt-sandbox-service/web1"):
        want = ctx.split(":")[2]
        for p in (path, f"{path}/lib/systemd/x.service"):
            assert fc_type(module_fc, p) == want, p
    # The tool's own records next to the trees stay host-only.
    assert fc_type(module_fc, "/var/lib/virt-sandbox-service/web1/evidence.json") == \
        "virt_sandbox_service_var_lib_t"


def test_a_changed_source_makes_the_loaded_module_stale(tmp_path: Path) -> None:
    """doctor reloads the module when its sources changed since it was loaded (semodule keeps
    no version): the digest written at load time no longer matches."""
    from virt_sandbox_service.apply import selinux_policy as sp

    src = tmp_path / "policy"
    shutil.copytree(ROOT / "policy", src)
    marker = tmp_path / "digest"
    assert not sp.module_current(src, marker)  # loaded before digests were kept: reload
    marker.write_text(sp.sources_digest(src) + "\n")
    assert sp.module_current(src, marker)
    (src / "README.md").write_text("not a source")  # other files do not count
    assert sp.module_current(src, marker)
    te = src / f"{sp.MODULE}.te"
    te.write_text(te.read_text() + "\n# a new rule\n")
    assert not sp.module_current(src, marker)
    assert sp.module_current(None, marker)  # no sources installed: nothing to compare
