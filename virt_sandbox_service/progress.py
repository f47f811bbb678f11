"""Progress of the steps that can take more than a second (building the KVM initrd, -C copies,
-i images, a sandbox's boot), shown on a terminal.

A step that ends within a second prints nothing. A longer one shows one line on standard error,
rewritten each second with the time so far ("virt-sandbox-service: copying /var/www... 3 s"),
and ends it with the time it took. Nothing is printed when standard error is not a terminal
(scripts, the journal) or with --quiet; `run` never shows any (its standard error is its
command's).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

PROG = "virt-sandbox-service"
DELAY = 1.0  # seconds before a step is shown; also the update interval
_settings = {"quiet": False}


def _delay() -> float:
    """DELAY, or VSS_PROGRESS_DELAY's seconds: a test's hook (as txn.py's VSS_FAULT_AFTER),
    so that a test of the line does not hang on how fast this machine copies."""
    try:
        return max(0.01, float(os.environ.get("VSS_PROGRESS_DELAY", DELAY)))
    except ValueError:
        return DELAY


def set_quiet(quiet: bool) -> None:
    """--quiet, from the command line (cli.main)."""
    _settings["quiet"] = quiet


def shown() -> bool:
    return not _settings["quiet"] and sys.stderr.isatty()


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    if not shown():
        yield
        return
    done = threading.Event()
    printed = threading.Event()
    t0 = time.monotonic()
    delay = _delay()

    def ticker() -> None:
        while not done.wait(delay):
            sys.stderr.write(f"\r{PROG}: {what}... {time.monotonic() - t0:.0f} s\x1b[K")
            sys.stderr.flush()
            printed.set()

    thread = threading.Thread(target=ticker, name="progress", daemon=True)
    thread.start()
    outcome = "failed after "
    try:
        yield
        outcome = ""
    finally:
        done.set()
        thread.join()
        if printed.is_set():  # the line is ended, so an error that follows starts its own
            sys.stderr.write(f"\r{PROG}: {what}: {outcome}{time.monotonic() - t0:.1f} s"
                             "\x1b[K\n")
            sys.stderr.flush()
