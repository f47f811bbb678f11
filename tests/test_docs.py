"""The man page and README cannot drift from the argparse definitions (pure)."""

from __future__ import annotations

import argparse
import re
import subprocess

from virt_sandbox_service.cli import build_parser

from .conftest import ROOT

MAN = ROOT / "man" / "virt-sandbox-service.1"


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def man_text() -> str:
    # roff escapes "-" as "\-"; compare on the plain text.
    return MAN.read_text().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "") \
        .replace("\\fI", "").replace("\\fP", "")


def test_every_command_and_option_is_in_the_man_page() -> None:
    text = man_text()
    parser = build_parser()
    missing = []
    for name, sub in subparsers(parser).items():
        if not re.search(rf"^\.SS {name}\b", text, re.M):
            missing.append(f"section for {name}")
        for action in sub._actions:
            missing += [f"{name} {opt}" for opt in action.option_strings if opt not in text]
    for action in parser._actions:
        missing += [opt for opt in action.option_strings if opt not in text]
    assert not missing, f"not in {MAN.name}: {missing}"


def test_man_page_renders_without_warnings() -> None:
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = set(subparsers(build_parser()))
    used = set(re.findall(r"virt-sandbox-service ([a-z]+)", readme))
    assert used <= commands | {"doctor"}, used - commands


def test_every_sandbox_file_key_is_in_the_man_page_and_readme() -> None:
    from virt_sandbox_service.sandboxfile import INSTALL_KEYS, KEYS

    section = man_text().split(".SH SANDBOX FILES", 1)[1].split(".SH ", 1)[0]
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in (*KEYS, *INSTALL_KEYS) if f"{k}=" not in section]
    missing += [f"README {k}" for k in KEYS if f"{k}=" not in readme]
    assert not missing, missing
    for key, spec in KEYS.items():  # each key next to its option
        assert re.search(rf"^\.B {key}=\n{re.escape(spec.option)}", section, re.M), key


def test_the_man_pages_key_list_is_the_settings_table(regenerate: bool) -> None:
    """The SANDBOX FILES key list is made from settings.py; --regenerate-output rewrites it."""
    from virt_sandbox_service import settings

    text = MAN.read_text()
    head, _, rest = text.partition(settings.BEGIN_KEYS)
    block, _, tail = rest.partition(settings.END_KEYS)
    assert rest and tail, "the man page lost the key list's markers"
    if regenerate:
        MAN.write_text(head + settings.BEGIN_KEYS + settings.man_keys() + settings.END_KEYS + tail)
        return
    assert block == settings.man_keys(), "pytest --regenerate-output rewrites the key list"
