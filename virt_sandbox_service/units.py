"""Plan -> host systemd unit text, rendered from the Jinja2 templates in units/.

One complete unit per sandbox, `NAME_sandbox.service`: its dependencies (ReloadPropagatedFrom=
the confined units) differ per sandbox, and a self-contained file is what `systemctl cat`
shows and what `delete` removes, with no shared template whose lifetime belongs to no sandbox.
Every value passes through a filter that escapes it for unit-file syntax; StrictUndefined turns
a missing field into an error instead of an empty line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Paths, SandboxConfig
from .errors import EXIT_INTERRUPTED as EXIT_INTERRUPTED  # re-exported: runtime, tests
from .errors import EXIT_NOT_CONFIGURED as EXIT_NOT_CONFIGURED
from .errors import EXIT_USAGE
from .resources import data_path

if TYPE_CHECKING:
    import jinja2

TEMPLATES = data_path("units")
UNIT_SUFFIX = "_sandbox.service"
START_TIMEOUT = 90
STOP_TIMEOUT = 60
# `start` exits with EXIT_NOT_CONFIGURED when a confined unit failed while the sandbox started
# (shown by systemd as 6/NOTCONFIGURED). A configuration error does not go away by retrying, so
# the unit does not restart on it; a crash later exits 1 and restarts.
# `start` exits with EXIT_INTERRUPTED after SIGTERM/SIGINT (cli.main's status for an
# interruption): when systemd stops a unit that is still starting, `start` stops the domain and
# exits 130. That is the stop systemd asked for, not a failure (systemd itself counts a death by
# SIGTERM as clean).


def unit_name(name: str) -> str:
    return f"{name}{UNIT_SUFFIX}"


def unit_text(value: str) -> str:
    """A free-text value (Description=): no line breaks; '%' and '\\' escaped."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"unit value contains a line break: {value!r}")
    return value.replace("\\", "\\\\").replace("%", "%%")


def unit_arg(value: str) -> str:
    """One word of an Exec*= or Environment= line, quoted when it needs it."""
    text = unit_text(value).replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _env() -> jinja2.Environment:
    import jinja2  # here, not at the top: `start` imports this module and needs no templates

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["unit_text"] = unit_text
    env.filters["unit_arg"] = unit_arg
    return env


def _template_dir() -> Path:
    return TEMPLATES


def path_environment(paths: Paths) -> list[tuple[str, str]]:
    """Environment= lines for the paths that differ from the defaults (tests, -p is separate)."""
    default = Paths()
    out = []
    for key, attr in (("VSS_CONFIG_DIR", "config_dir"), ("VSS_STATE_DIR", "state_parent"),
                      ("VSS_UNIT_DIR", "unit_dir"), ("VSS_RUN_DIR", "run_dir")):
        if getattr(paths, attr) != getattr(default, attr):
            out.append((key, str(getattr(paths, attr))))
    return out


def render_sandbox_unit(config: SandboxConfig, exe: str, paths: Paths) -> str:
    what = config.summary
    return _env().get_template("sandbox.service.j2").render(
        name=config.name,
        what=what,
        units=config.units,
        exe=exe,
        environment=path_environment(paths),
        start_timeout=START_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
        not_configured=EXIT_NOT_CONFIGURED,
        usage=EXIT_USAGE,
        interrupted=EXIT_INTERRUPTED,
    )
