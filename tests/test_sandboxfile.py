"""Sandbox files (sandboxfile.py) and their generator (generator.py): no libvirt needed.

The generator is run as systemd runs it (three output directories) and its output passes
`systemd-analyze verify`, with the drop-in loaded (SYSTEMD_UNIT_PATH)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virt_sandbox_service import cli, sandboxfile
from virt_sandbox_service.errors import UserError

from .conftest import ROOT, Env, need, unique_name


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.sandbox"
    path.write_text(text)
    return path


def request(path: Path) -> object:
    sf = sandboxfile.parse(path)
    sandboxfile.check_values(sf)
    return cli.create_request(sandboxfile.namespace(sf))


def test_every_create_option_has_its_key() -> None:
    """The file cannot fall behind the CLI: each of create's options (but the plan's output
    and the name) is a key, and each key is an option of create."""
    create = next(a for a in cli.build_parser()._subparsers._group_actions  # type: ignore[union-attr]
                  ).choices["create"]
    dests = {a.dest for a in create._actions} - {"help", "dry_run", "json", "name"}
    keys = {k.dest for k in sandboxfile.KEYS.values()}
    assert dests == keys, (f"create options without a sandbox-file key: {dests - keys} (add "
                           "them to sandboxfile.KEYS, the man page's SANDBOX FILES and the "
                           f"README's key list); keys of no option: {keys - dests}")


def test_the_fields_apply_cannot_change_in_place_are_config_fields() -> None:
    import dataclasses

    from virt_sandbox_service import declare
    from virt_sandbox_service.config import SandboxConfig

    fields = {f.name for f in dataclasses.fields(SandboxConfig)}
    assert fields >= declare.FIXED and "memory" not in declare.FIXED
    assert set(declare.FIELD_KEYS) <= fields


def test_a_file_is_the_request_create_would_build(tmp_path: Path) -> None:
    path = write(tmp_path, "web9", """# comment
[Sandbox]
Unit=apache2.service
Unit=ssh.service
; another comment
Memory = 512M
CPUQuota=50
CapabilityAdd=sys_time
Mount=ram:/var/cache/x=16M
Copy=yes
Etc=copy
""")
    words = ["create", "-u", "apache2.service", "-u", "ssh.service", "--memory", "512M",
             "--cpu-quota", "50", "--cap-add", "sys_time", "-m", "ram:/var/cache/x=16M", "-C",
             "--etc", "copy", "web9"]
    assert request(path) == cli.create_request(cli.build_parser().parse_args(words))


def test_exec_continuation_and_list_reset(tmp_path: Path) -> None:
    path = write(tmp_path, "gen1", """[Sandbox]
Exec=/usr/bin/python3 -m \\
  http.server "8000"
Mount=ram:/var/a=1M
Mount=
Mount=ram:/var/b=1M
""")
    req = request(path)
    assert req.command == ("/usr/bin/python3", "-m", "http.server", "8000")  # type: ignore[attr-defined]
    assert [m.text for m in req.mounts] == ["ram:/var/b=1048576"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "message"), [
    ("[Sandbox]\nUnit=apache2.service\nMemmory=1G\n",
     r"bad\.sandbox:3: unknown key 'Memmory' in \[Sandbox\]"),
    ("[Sandbox]\nUnit=apache2.service\n[Service]\nUser=x\n",
     r"bad\.sandbox:3: unknown section \[Service\]"),
    ("Unit=apache2.service\n", r"bad\.sandbox:1: expected KEY=VALUE in a section"),
    ("[Sandbox]\nUnit=apache2.service\n\nMemory=lots\n",
     r"bad\.sandbox:4: Memory=lots: --memory 'lots' is not a size"),
    ("[Sandbox]\nUnit=apache2.service\nCopy=perhaps\n", r"bad\.sandbox:3: Copy=perhaps: not a "
     "boolean"),
    ("[Sandbox]\nUnit=apache2.service\nConnect=xen:///\n",
     r"bad\.sandbox:3: Connect=xen:///: URI 'xen:///' is not a libvirt LXC or QEMU URI"),
    ("[Sandbox]\nUnit=apache2.service\nMount=host-bind:/mnt\n", r"bad\.sandbox:3: Mount="),
    ("[Sandbox]\nUnit=apache2.service\nEtc=both\n",
     r"bad\.sandbox:3: Etc=both: 'both' is not a valid --etc value \(overlay, copy\)"),
    ("[Sandbox]\nUnit=apache2.service\n[Install]\nAlias=x\n",
     r"bad\.sandbox:4: unknown key 'Alias' in \[Install\]"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        request(write(tmp_path, "bad", text))
    assert e.value.exit_status == 2


def test_the_name_is_the_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"sandbox name 'a\+b' has characters"):
        sandboxfile.parse(write(tmp_path, "a+b", "[Sandbox]\nUnit=x.service\n"))
    other = tmp_path / "web1.conf"
    other.write_text("[Sandbox]\n")
    with pytest.raises(UserError, match=r"a sandbox file's name ends in \.sandbox"):
        sandboxfile.parse(other)


# --- the generator -------------------------------------------------------------------------------


def run_generator(tmp_path: Path, files: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = [tmp_path / d for d in ("normal", "early", "late")]
    for d in out:
        d.mkdir()
    env = {**os.environ, "VSS_SANDBOXES_DIR": str(files), "PYTHONPATH": str(ROOT),
           "VSS_CONFIG_DIR": str(tmp_path / "config"), "VSS_STATE_DIR": str(tmp_path / "st"),
           "VSS_UNIT_DIR": str(tmp_path / "units"), "VSS_RUN_DIR": str(tmp_path / "run")}
    r = subprocess.run([sys.executable, "-m", "virt_sandbox_service.generator",
                        *map(str, out)], capture_output=True, text=True, env=env, timeout=60)
    assert not any(out[1].iterdir()) and not any(out[2].iterdir())
    return r, out[0]


def test_generator_writes_units_and_links_and_they_verify(tmp_path: Path) -> None:
    need(shutil.which("systemd-analyze") is not None
         and Path("/lib/systemd/system/apache2.service").exists(),
         "systemd-analyze and apache2 are installed by scripts/setup.sh")
    files = tmp_path / "sandboxes.d"
    files.mkdir()
    write(files, "gweb", "[Sandbox]\nUnit=apache2.service\n[Install]\n"
                         "WantedBy=multi-user.target\n")
    write(files, "ggen", "[Sandbox]\nExec=/usr/bin/python3 -m http.server 8000\n")
    write(files, "gbad", "[Sandbox]\nUnit=apache2.service\nTypo=1\n")
    (files / "README").write_text("not a sandbox file\n")
    r, out = run_generator(tmp_path, files)
    assert r.returncode == 1  # gbad
    assert "gbad.sandbox:3: unknown key 'Typo'" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ggen_sandbox.service", "ggen_sandbox.service.d", "gweb_sandbox.service",
        "gweb_sandbox.service.d", "multi-user.target.wants"]
    assert os.readlink(out / "multi-user.target.wants" / "gweb_sandbox.service") == \
        "../gweb_sandbox.service"
    unit = (out / "gweb_sandbox.service").read_text()
    assert "ExecStart=" in unit and " start gweb" in unit
    assert "ReloadPropagatedFrom=apache2.service" in unit
    dropin = (out / "gweb_sandbox.service.d" / "50-sandbox-file.conf").read_text()
    assert f"SourcePath={files}/gweb.sandbox" in dropin
    assert f" -q apply {files}/gweb.sandbox\n" in dropin
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{out}:"}
    for name in ("gweb_sandbox.service", "ggen_sandbox.service"):
        v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(out / name)],
                           capture_output=True, text=True, env=env, timeout=120)
        ours = [line for line in (v.stdout + v.stderr).splitlines() if str(tmp_path) in line]
        assert v.returncode == 0 and not ours, v.stdout + v.stderr


def test_generator_verify_catches_a_broken_dropin(tmp_path: Path) -> None:
    """The check above can fail: a drop-in systemd cannot use is reported by verify."""
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze: scripts/setup.sh")
    files = tmp_path / "sandboxes.d"
    files.mkdir()
    write(files, "gx", "[Sandbox]\nExec=/usr/bin/true\n")
    _, out = run_generator(tmp_path, files)
    (out / "gx_sandbox.service.d" / "50-sandbox-file.conf").write_text(
        "[Service]\nExecStartPre=relative/path\n")
    v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(out / "gx_sandbox.service")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SYSTEMD_UNIT_PATH": f"{out}:"})
    assert "relative/path" in v.stdout + v.stderr


def test_the_generator_makes_no_units_inside_a_sandbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An LXC sandbox's systemd runs the host's generators, ours too: inside, the host's
    sandbox files must not become units that start sandboxes from within one. Inside is
    where the host channel exists (below: it does in a real sandbox); outside, the same
    file makes the unit."""
    from virt_sandbox_service import generator

    files = tmp_path / "sandboxes.d"
    files.mkdir()
    write(files, "gx", "[Sandbox]\nExec=/bin/true\n")
    monkeypatch.setenv("VSS_SANDBOXES_DIR", str(files))
    outside, inside = tmp_path / "outside", tmp_path / "inside"
    for out in (outside, inside):
        out.mkdir()
    channel = tmp_path / "sandbox-host"
    assert generator.main([str(outside)], channel=channel) == 0
    assert (outside / "gx_sandbox.service").exists()
    channel.mkdir()
    assert generator.main([str(inside)], channel=channel) == 0
    assert not any(inside.iterdir())


@pytest.mark.root
@pytest.mark.libvirt
def test_the_host_channel_exists_inside_every_lxc_sandbox(env: Env) -> None:
    """What the generator's guard relies on."""
    from virt_sandbox_service.plantypes import HOST_CHANNEL

    name = unique_name("gen")
    env.run("create", name, "--", "/bin/sleep", "infinity", check=True)
    try:
        env.run("start", "--detach", name, check=True)
        r = env.run("execute", name, "--", "/bin/sh", "-c",
                    f"test -d {HOST_CHANNEL} && echo inside")
        assert r.stdout.strip() == "inside", r
    finally:
        env.run("stop", name)
        env.run("delete", name)


def test_generator_without_files_writes_nothing(tmp_path: Path) -> None:
    r, out = run_generator(tmp_path, tmp_path / "absent")
    assert r.returncode == 0 and not any(out.iterdir()), r.stderr
