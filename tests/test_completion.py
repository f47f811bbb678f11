"""Bash completion: generated from the parser, and exercised in a real bash (pure)."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from virt_sandbox_service import completion
from virt_sandbox_service.cli import build_parser

from .conftest import ROOT, need

SCRIPT = ROOT / "completion" / "virt-sandbox-service.bash"
HOW = ("regenerate it: virt-sandbox-service completion bash > completion/virt-sandbox-service."
       "bash (or pytest --regenerate-output)")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    return completion.subcommands(build_parser())


def complete(*words: str, env: dict[str, str] | None = None) -> list[str]:
    """COMPREPLY of the completion function for the command line `words` (the last word is
    the one being completed), in a real bash."""
    code = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            '_virt_sandbox_service; printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "-c", code, "bash", str(SCRIPT), "virt-sandbox-service",
                           *words], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    assert proc.stderr == "", proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_the_script_is_generated_from_the_parser(regenerate: bool) -> None:
    text = completion.bash(build_parser())
    if regenerate:
        SCRIPT.write_text(text)
    assert SCRIPT.read_text() == text, f"{SCRIPT.name} differs from the parser: {HOW}"
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_every_value_and_positional_has_a_deliberate_completer() -> None:
    for name, sub in subparsers().items():
        for a in sub._actions:
            if a.option_strings and a.nargs != 0 and not a.choices:
                assert completion.metavar(a) in completion.VALUE_COMPLETERS, \
                    f"{name} {a.option_strings[0]}: add its metavar to VALUE_COMPLETERS"
            if not a.option_strings and not a.choices:
                assert (name, a.dest) in completion.POSITIONAL_OVERRIDES \
                    or a.dest in completion.POSITIONAL_COMPLETERS, \
                    f"{name} {a.dest}: add it to POSITIONAL_COMPLETERS"


def test_every_subcommand_and_option_is_completed() -> None:
    assert complete("") == list(subparsers())
    assert complete("-") == ["-h", "--help", "--version", "--debug", "-q", "--quiet"]
    assert complete("--debug", "ins") == ["inspect"]
    for name, sub in subparsers().items():
        options = [o for a in sub._actions for o in a.option_strings]
        first = next((a for a in sub._actions if not a.option_strings), None)
        if first is not None and first.nargs == argparse.REMAINDER:
            options.append("--")  # where the command line of its own may begin
        assert complete(name, "-") == options, name


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, str]:
    sandboxes = tmp_path / "config" / "sandboxes"
    sandboxes.mkdir(parents=True)
    for name in ("web1", "web2", "mail"):
        (sandboxes / f"{name}.json").write_text("{}")
    return {"VSS_CONFIG_DIR": str(tmp_path / "config")}


def test_sandbox_names_for_commands_that_take_one(configs: dict[str, str]) -> None:
    for command in ("start", "stop", "delete", "inspect", "execute", "connect", "upgrade", "learn",
                    "limit", "reload"):
        assert complete(command, "we", env=configs) == ["web1", "web2"], command
    assert complete("start", "", env=configs) == ["mail", "web1", "web2"]
    assert complete("stop", "--timeout", "5", "w", env=configs) == ["web1", "web2"]
    assert complete("start", "web1", "w", env=configs) == []  # one NAME only
    assert complete("create", "-u", "x.service", "we", env=configs) == []  # a new name
    assert complete("clone", "we", env=configs) == ["web1", "web2"]
    assert complete("delete", "--force", "m", env=configs) == ["mail"]


def test_unit_names_after_unit_options(tmp_path: Path) -> None:
    units = tmp_path / "units"
    (units / "multi-user.target.wants").mkdir(parents=True)
    for unit in ("apache2.service", "apache-htcacheclean.service", "postfix@.service"):
        (units / unit).write_text("[Unit]\n")
    (units / "httpd.service").symlink_to(units / "apache2.service")  # an alias
    dirs = {"_VSS_UNIT_DIRS": str(units)}
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs here: completion asks systemctl, not the directories")
    assert complete("create", "-u", "apa", env=dirs) == ["apache-htcacheclean.service",
                                                       "apache2.service"]
    assert complete("create", "--unit", "=", "po", env=dirs) == ["postfix@.service"]
    assert complete("create", "--unit=ht", env=dirs) == ["httpd.service"]
    assert complete("reload", "web1", "-u", "m", env=dirs) == []  # no .wants directories
    assert complete("create", "-u", "x", "-u", "apache2", env=dirs) == ["apache2.service"]


def test_units_of_the_real_host() -> None:
    need(Path("/lib/systemd/system/apache2.service").exists(),
         "apache2 is installed by scripts/setup.sh")
    assert "apache2.service" in complete("create", "-u", "apache2")


def test_other_values_and_command_lines(tmp_path: Path) -> None:
    assert complete("create", "-c", "q") == ["qemu:///system"]
    assert complete("create", "--cap-drop", "sys_mo") == ["sys_module"]
    assert complete("create", "-s", "s") == ["static,label="]
    assert complete("create", "--memory", "") == []  # free text
    assert complete("completion", "") == ["bash"]
    (tmp_path / "state-here").mkdir()
    assert complete("create", "-p", f"{tmp_path}/sta") == [f"{tmp_path}/state-here"]
    # After NAME: a command line of its own, whose options are not ours.
    assert complete("execute", "web1", "--", "ech") == ["echo"]
    assert "--" in complete("execute", "web1", "")
    assert complete("create", "web3", "--", "/bin/sh", "-c", f"{tmp_path}/st") == \
        [f"{tmp_path}/state-here"]
    assert complete("run", "--", "tru") == ["true", "truncate"]


def test_setup_installs_the_script() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert ('install -D -m 644 "$here/completion/virt-sandbox-service.bash" '
            "/usr/share/bash-completion/completions/virt-sandbox-service") in setup
