"""apply against the real libvirtd: sandbox files create, converge and (asked) prune sandboxes;
a second apply changes nothing; the Ansible example does the same through ansible-core."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from .conftest import ROOT, Env, need, unique_name

pytestmark = [pytest.mark.root, pytest.mark.libvirt]

SERVER = "Exec=/usr/bin/python3 -m http.server 8000\n"


def sandbox_file(files: Path, name: str, body: str) -> Path:
    files.mkdir(exist_ok=True)
    path = files / f"{name}.sandbox"
    path.write_text(f"[Sandbox]\n{body}")
    return path


def config(env: Env, name: str) -> dict[str, object]:
    return dict(json.loads((env.base / "config" / "sandboxes" / f"{name}.json").read_text()))


def memory_kib(name: str) -> int:
    conn = libvirt.open("lxc:///")
    try:
        return int(conn.lookupByName(name).maxMemory())
    finally:
        conn.close()


def test_apply_creates_and_a_second_apply_changes_nothing(env: Env) -> None:
    name = unique_name("ap")
    files = env.base / "files"
    path = sandbox_file(files, name, SERVER + "Memory=256M\n")
    empty = env.snapshot()
    r = env.run("apply", "--check", str(files))
    assert (r.returncode, r.stdout) == (3, f"{name}: would be created from {path}\n"), r.stderr
    assert env.snapshot() == empty
    r = env.run("apply", str(files), check=True)
    assert r.stdout == f"{name}: created from {path}\n"
    cfg = config(env, name)
    assert cfg["command"] == ["/usr/bin/python3", "-m", "http.server", "8000"]
    assert cfg["memory"] == 256 << 20 and ["sandbox_file", str(path)] in cfg["extra"]
    assert memory_kib(name) == 256 << 10
    before = env.snapshot()
    text = (env.base / "config" / "sandboxes" / f"{name}.json").read_text()
    unit = (env.base / "units" / f"{name}_sandbox.service").read_text()
    for args in (("apply", "--check", str(files)), ("apply", str(path))):
        r = env.run(*args)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{name}: unchanged ({path})\n"
    assert env.snapshot() == before
    assert (env.base / "config" / "sandboxes" / f"{name}.json").read_text() == text
    assert (env.base / "units" / f"{name}_sandbox.service").read_text() == unit


def test_an_edited_value_is_reconciled(env: Env) -> None:
    name = unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, name, SERVER + "Memory=256M\n")
    env.run("apply", str(files), check=True)
    path = sandbox_file(files, name, SERVER + "Memory=512M\nCapabilityAdd=sys_time\n")
    r = env.run("apply", "--dry-run", str(files))
    assert r.returncode == 3, r.stderr
    assert f"{name}: would change Memory: {256 << 20} -> {512 << 20}" in r.stdout
    assert f"{name}: would change CapabilityAdd: (none) -> sys_time" in r.stdout
    assert '+  <memory unit="KiB">524288</memory>' in r.stdout
    assert config(env, name)["memory"] == 256 << 20 and memory_kib(name) == 256 << 10
    r = env.run("apply", str(path))
    assert r.returncode == 0, r.stderr
    assert f"{name}: changed Memory: {256 << 20} -> {512 << 20}" in r.stdout
    assert f"{name}: updated domain {name}" in r.stdout
    assert config(env, name)["memory"] == 512 << 20 and config(env, name)["caps_add"] == \
        ["sys_time"]
    assert memory_kib(name) == 512 << 10
    r = env.run("apply", str(path))
    assert (r.returncode, r.stdout) == (0, f"{name}: unchanged ({path})\n"), r.stderr
    # The tool's definitions follow the file, not a hand edit: upgrade agrees nothing differs.
    assert env.run("upgrade", "--check", name).returncode == 0


def test_a_running_sandbox_takes_a_new_limit_live(env: Env) -> None:
    name = unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, name, SERVER + "Memory=256M\n")
    env.run("apply", str(files), check=True)
    env.run("start", "--detach", name, check=True, timeout=180)
    path = sandbox_file(files, name, SERVER + "Memory=320M\n")
    r = env.run("apply", str(path))
    assert r.returncode == 0, r.stderr
    assert f"{name}: applied live: Memory" in r.stdout
    assert f"{name}: it is running: the new definitions take effect at its next start" in \
        r.stdout
    conn = libvirt.open("lxc:///")
    try:
        dom = conn.lookupByName(name)
        assert dom.isActive()
        live = dom.memoryParameters(libvirt.VIR_DOMAIN_AFFECT_LIVE)["hard_limit"]
        defined = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()
    assert live == 320 << 10 and f"<memory unit='KiB'>{320 << 10}</memory>" in defined
    env.run("stop", name, check=True, timeout=120)


def test_a_change_create_alone_can_make_is_refused(env: Env) -> None:
    name = unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, name, SERVER)
    env.run("apply", str(files), check=True)
    before = env.snapshot()
    path = sandbox_file(files, name, "Unit=apache2.service\nCopy=yes\n")
    r = env.run("apply", str(path))
    assert r.returncode == 2
    assert r.stderr == (
        f"virt-sandbox-service: error: {path}: sandbox '{name}' differs in Copy=, Unit=, "
        "which cannot change in place\n"
        f"virt-sandbox-service: hint: delete it (virt-sandbox-service delete {name}) and "
        "apply again, or set the file back\n")
    assert env.snapshot() == before


def test_a_change_the_host_cannot_take_changes_nothing(env: Env) -> None:
    """A Network= on a libvirt network that does not exist: refused before anything is
    written, naming the file and the network."""
    name = unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, name, SERVER)
    env.run("apply", str(files), check=True)
    before = env.snapshot()
    text = (env.base / "config" / "sandboxes" / f"{name}.json").read_text()
    path = sandbox_file(files, name, SERVER + "Network=source=vss-no-such-net\n")
    r = env.run("apply", str(files))
    assert r.returncode == 2
    assert r.stderr.startswith(f"virt-sandbox-service: error: {path}: libvirt network "
                               "'vss-no-such-net' does not exist\n"), r.stderr
    assert env.snapshot() == before
    assert (env.base / "config" / "sandboxes" / f"{name}.json").read_text() == text


def test_one_bad_file_does_not_stop_the_others(env: Env) -> None:
    good, bad = unique_name("ap"), unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, good, SERVER)
    bad_path = sandbox_file(files, bad, SERVER + "Memory=1G\nMemoryMax=1G\n")
    r = env.run("apply", str(files))
    assert r.returncode == 2
    assert f"{good}: created from" in r.stdout
    assert (f"virt-sandbox-service: error: {bad_path}:4: unknown key 'MemoryMax' in [Sandbox]"
            "\nvirt-sandbox-service: hint: the keys are: Unit, Exec,") in r.stderr
    assert (env.base / "config" / "sandboxes" / f"{good}.json").exists()
    assert not (env.base / "config" / "sandboxes" / f"{bad}.json").exists()
    assert not env.state(bad).exists() and len(env.snapshot()["domains"]) == 1  # type: ignore[arg-type]


def test_prune_deletes_only_what_a_gone_file_made(env: Env) -> None:
    kept, gone, by_hand = unique_name("ap"), unique_name("ap"), unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, kept, SERVER)
    gone_path = sandbox_file(files, gone, SERVER)
    env.run("apply", str(files), check=True)
    env.run("create", by_hand, "--", "/usr/bin/python3", "-m", "http.server", check=True)
    gone_path.unlink()
    r = env.run("apply", str(files))  # absent, but not asked: kept
    assert r.returncode == 0 and gone not in r.stdout, r.stderr
    assert (env.base / "config" / "sandboxes" / f"{gone}.json").exists()
    r = env.run("apply", "--prune", "--check", str(files))
    assert r.returncode == 3
    assert f"{gone}: would be deleted ({gone_path} is gone)" in r.stdout
    assert (env.base / "config" / "sandboxes" / f"{gone}.json").exists()
    r = env.run("apply", "--prune", str(files))
    assert r.returncode == 0, r.stderr
    assert f"{gone}: deleted ({gone_path} is gone)" in r.stdout
    names = sorted(p.stem for p in (env.base / "config" / "sandboxes").glob("*.json"))
    assert names == sorted([kept, by_hand])
    assert not env.state(gone).exists()
    assert sorted(env.snapshot()["domains"]) == sorted([kept, by_hand])  # type: ignore[arg-type]


def test_a_sandbox_made_by_hand_is_adopted_by_its_file(env: Env) -> None:
    """A file for a sandbox create made: apply records the file (so --prune may delete it
    once the file is gone), changes nothing else, and says so."""
    name = unique_name("ap")
    env.run("create", "--memory", "256M", name, "--", "/usr/bin/python3", "-m",
            "http.server", "8000", check=True)
    files = env.base / "files"
    path = sandbox_file(files, name, SERVER + "Memory=256M\n")
    unit = (env.base / "units" / f"{name}_sandbox.service").read_text()
    r = env.run("apply", "--check", str(files))
    assert (r.returncode, r.stdout) == (3, f"{name}: would be managed from {path}\n"), r.stderr
    assert "sandbox_file" not in str(config(env, name)["extra"])
    r = env.run("apply", str(files))
    assert (r.returncode, r.stdout) == (0, f"{name}: now managed from {path}\n"), r.stderr
    assert ["sandbox_file", str(path)] in config(env, name)["extra"]  # type: ignore[operator]
    assert (env.base / "units" / f"{name}_sandbox.service").read_text() == unit
    assert env.run("apply", str(files)).stdout == f"{name}: unchanged ({path})\n"
    path.unlink()
    r = env.run("apply", "--prune", str(files))
    assert (r.returncode, r.stdout) == (0, f"{name}: deleted ({path} is gone)\n"), r.stderr
    assert not (env.base / "config" / "sandboxes" / f"{name}.json").exists()


def test_a_unit_sandbox_gets_the_generators_unit(env: Env, tmp_path: Path) -> None:
    """apply makes a unit sandbox through create; the unit the generator wrote for its file
    before it existed is the one create then writes (the tool's path aside)."""
    need(Path("/lib/systemd/system/apache2.service").exists(), "apache2: scripts/setup.sh")
    name = unique_name("ap")
    files = env.base / "files"
    path = sandbox_file(files, name, "Unit=apache2.service\nTasks=512\n")
    out = [tmp_path / d for d in ("n", "e", "l")]
    for d in out:
        d.mkdir()
    subprocess.run([sys.executable, "-m", "virt_sandbox_service.generator", *map(str, out)],
                   env={**os.environ, **env.vars, "VSS_SANDBOXES_DIR": str(files),
                        "PYTHONPATH": str(ROOT)}, check=True, timeout=60)
    r = env.run("apply", str(path), timeout=300)
    assert r.returncode == 0, r.stderr
    assert config(env, name)["units"] == ["apache2.service"]

    def text(p: Path) -> list[str]:
        return [line for line in p.read_text().splitlines() if not line.startswith("Exec")]

    unit = f"{name}_sandbox.service"
    assert text(out[0] / unit) == text(env.base / "units" / unit)
    r = env.run("apply", str(path), timeout=300)
    assert (r.returncode, r.stdout) == (0, f"{name}: unchanged ({path})\n"), r.stderr


def test_the_generators_exec_start_pre_makes_then_converges_the_sandbox(env: Env,
                                                                        tmp_path: Path) -> None:
    """What systemd runs before each start of the generated unit: the drop-in's
    ExecStartPre=, with the unit's Environment= (its paths). The first start makes the
    sandbox; after an edit of the file, the next start brings it in line; else nothing."""
    name = unique_name("ap")
    files = env.base / "files"
    sandbox_file(files, name, SERVER + "Memory=256M\n")
    out = [tmp_path / d for d in ("n", "e", "l")]
    for d in out:
        d.mkdir()
    subprocess.run([sys.executable, "-m", "virt_sandbox_service.generator", *map(str, out)],
                   env={**os.environ, **env.vars, "VSS_SANDBOXES_DIR": str(files),
                        "PYTHONPATH": str(ROOT)}, check=True, timeout=60)
    unit = (out[0] / f"{name}_sandbox.service").read_text()
    environment = dict(line.removeprefix("Environment=").split("=", 1)
                       for line in unit.splitlines() if line.startswith("Environment="))
    assert environment == env.vars
    dropin = (out[0] / f"{name}_sandbox.service.d" / "50-sandbox-file.conf").read_text()
    (pre,) = [line.removeprefix("ExecStartPre=") for line in dropin.splitlines()
              if line.startswith("ExecStartPre=")]
    argv = shlex.split(pre)
    assert argv[1:3] == ["-q", "apply"]

    def start() -> str:
        # The tool as the generator found it runs this checkout's code (set-up's link).
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                           env={**os.environ, **environment, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert start() == f"{name}: created from {files / name}.sandbox\n"
    assert memory_kib(name) == 256 << 10
    assert "unchanged" in start()
    sandbox_file(files, name, SERVER + "Memory=320M\n")
    assert f"{name}: changed Memory" in start()
    assert memory_kib(name) == 320 << 10


def test_the_ansible_example_ships_a_file_and_applies_it(env: Env) -> None:
    need(shutil.which("ansible-playbook") is not None,
         "ansible-core is installed by scripts/test-daemons.sh")
    name = unique_name("ap")
    src = env.base / "src.sandbox"
    src.write_text("[Sandbox]\n" + SERVER + "Memory=256M\n")
    files = env.base / "files"
    files.mkdir()
    extra = {"sandbox_name": name, "sandbox_src": str(src), "sandbox_dir": str(files),
             "vss": f"{sys.executable} -m virt_sandbox_service.cli", "sandbox_start": False,
             "vss_environment": {**env.vars, "PYTHONPATH": str(ROOT)}}

    def play() -> str:
        r = subprocess.run(["ansible-playbook", "-i", "localhost,", "--connection=local",
                            "-e", json.dumps(extra), str(ROOT / "examples/ansible/sandbox.yml")],
                           capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert "changed=2" in play()  # the file shipped, the sandbox made
    assert (files / f"{name}.sandbox").read_text() == src.read_text()
    assert config(env, name)["memory"] == 256 << 20
    assert "changed=0" in play()
    src.write_text("[Sandbox]\n" + SERVER + "Memory=384M\n")
    assert "changed=2" in play()
    assert config(env, name)["memory"] == 384 << 20 and memory_kib(name) == 384 << 10
