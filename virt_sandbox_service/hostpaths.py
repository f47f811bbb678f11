"""What every command needs first, kept light: sandbox names, the tool's paths on the host,
a sandbox's config file as text, and the two enums that say what a sandbox is.

Light on purpose: `stop` asks a sandbox to power off before anything heavy is loaded
(runtime/poweroff.py, issue 16), from this module alone; config.py, which defines the frozen
SandboxConfig dataclass (the dataclasses module and ~50 generated fields, ~10 ms), loads
after. config.py re-exports all of this: elsewhere, import it from there.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path
from typing import NamedTuple

from .errors import UserError

FORMAT_VERSION = 1  # of the config file (config.py; upgrade.py brings older ones up)
DEFAULT_URI = "lxc:///"
# No "+": the name is part of a systemd unit name, which does not allow it.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# 64 keeps the name usable as a hostname, a cgroup component and a unit instance.
NAME_MAX = 64


class Driver(enum.StrEnum):
    LXC = "lxc"
    KVM = "kvm"


class Kind(enum.StrEnum):
    SERVICE = "service"  # systemd as PID 1 running the host's installed unit(s)
    GENERIC = "generic"  # one command as the sandbox's init


def shown(text: str) -> str:
    """A user's string, quoted for a one-line message: control characters escaped."""
    if text.isprintable():
        return f"'{text}'"
    return "'" + text.encode("unicode_escape").decode("ascii") + "'"


def validate_name(name: str) -> str:
    """Check a sandbox name: it becomes a directory, a libvirt domain, a hostname and a unit."""
    hint = "use letters, digits, '_', '.', '-', starting with a letter or digit"
    if not name:
        raise UserError("sandbox name is empty", hint)
    if "/" in name or name in (".", "..") or ".." in name:
        raise UserError(f"sandbox name {shown(name)} must not contain '/' or '..'", hint)
    if len(name) > NAME_MAX:
        raise UserError(f"sandbox name is {len(name)} characters long (at most {NAME_MAX})", hint)
    if not NAME_RE.fullmatch(name):
        raise UserError(f"sandbox name {shown(name)} has characters that are not allowed",
                        hint)
    return name


class Paths(NamedTuple):
    """Where the tool keeps things on the host. Environment overrides exist for tests.

    A NamedTuple, not a dataclass: every command needs it before anything else, and `stop`
    before it loads the dataclasses module (see the module's docstring)."""

    config_dir: Path = Path("/etc/virt-sandbox-service")
    state_parent: Path = Path("/var/lib/virt-sandbox-service")
    unit_dir: Path = Path("/etc/systemd/system")
    run_dir: Path = Path("/run/virt-sandbox-service")
    # The sandbox files `apply` and the generator read (sandboxfile.py); None: sandboxes.d in
    # config_dir.
    files_dir: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Paths:
        env = dict(os.environ) if env is None else env
        d = cls()
        return cls(
            config_dir=Path(env.get("VSS_CONFIG_DIR", str(d.config_dir))),
            state_parent=Path(env.get("VSS_STATE_DIR", str(d.state_parent))),
            unit_dir=Path(env.get("VSS_UNIT_DIR", str(d.unit_dir))),
            run_dir=Path(env.get("VSS_RUN_DIR", str(d.run_dir))),
            files_dir=Path(env["VSS_SANDBOXES_DIR"]) if env.get("VSS_SANDBOXES_DIR") else None,
        )

    @property
    def sandbox_files_dir(self) -> Path:
        return self.files_dir or self.config_dir / "sandboxes.d"

    @property
    def sandboxes_dir(self) -> Path:
        return self.config_dir / "sandboxes"

    def config_file(self, name: str) -> Path:
        return self.sandboxes_dir / f"{name}.json"

    @property
    def lock_file(self) -> Path:
        return self.config_dir / ".lock"


def read_config_text(paths: Paths, name: str) -> tuple[Path, str]:
    validate_name(name)
    path = paths.config_file(name)
    try:
        return path, path.read_text()
    except FileNotFoundError:
        raise UserError(f"no sandbox named '{name}'",
                        "see 'virt-sandbox-service list' for the sandboxes there are") from None
