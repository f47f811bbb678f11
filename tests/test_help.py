"""--help of create and run: usage lines with the NAME -- CMD form, options in groups, and
examples that the parser itself accepts (pure)."""

from __future__ import annotations

import argparse
import shlex
import subprocess

import pytest

from virt_sandbox_service.cli import build_parser

from .conftest import CLI, ROOT
from .test_docs import subparsers

USAGE = {"create": ("create [OPTIONS] -u UNIT", "create [OPTIONS] NAME -- CMD [ARGS]..."),
         "run": ("run [OPTIONS] -- CMD [ARGS]...",)}


def help_text(cmd: str) -> str:
    proc = subprocess.run([*CLI, cmd, "--help"], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "COLUMNS": "100"}, check=True)
    return proc.stdout


def examples(text: str) -> list[list[str]]:
    """The example command lines of a --help's epilog."""
    part = text.split("\nexamples:\n", 1)[1]
    return [shlex.split(line)[1:] for line in part.splitlines()
            if line.startswith("  virt-sandbox-service ")]


@pytest.mark.parametrize("cmd", ["create", "run"])
def test_usage_shows_the_command_forms(cmd: str) -> None:
    text = help_text(cmd)
    usage = text.split("\n\n", 1)[0]
    assert all(f"virt-sandbox-service {form}" in usage for form in USAGE[cmd]), usage


@pytest.mark.parametrize("cmd", ["create", "run"])
def test_every_option_is_in_a_group(cmd: str) -> None:
    sub = subparsers(build_parser())[cmd]
    loose = [a.option_strings for g in sub._action_groups
             if g.title in ("options", "optional arguments") for a in g._group_actions
             if not isinstance(a, argparse._HelpAction) and a.dest != "connect"]
    assert not loose, loose
    assert len([g for g in sub._action_groups if g._group_actions]) >= 4


@pytest.mark.parametrize("cmd", ["create", "run"])
def test_examples_are_accepted_by_the_parser(cmd: str) -> None:
    found = examples(help_text(cmd))
    assert len(found) >= 3
    for words in found:
        assert words[0] == cmd
        args = build_parser().parse_args(words)  # a usage error exits: the test fails
        assert args.cmd == cmd
        assert getattr(args, "unit", None) or args.command, words  # -u UNIT or -- CMD
