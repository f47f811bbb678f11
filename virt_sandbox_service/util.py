"""One helper for subprocesses: logs the argv, surfaces stderr in the error."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence

from .errors import HostError

log = logging.getLogger(__name__)


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, input=input)
    except FileNotFoundError as e:
        raise HostError(f"{argv[0]} not found", "install it or check PATH") from e
    except subprocess.TimeoutExpired as e:
        raise HostError(f"{shlex.join(argv)} did not finish in {timeout:g} s") from e
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise HostError(f"{shlex.join(argv)} failed (exit {proc.returncode})"
                        + (f": {err[-1]}" if err else ""))
    return proc
