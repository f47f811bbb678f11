"""A transaction: every side effect registers its undo; a failure or Ctrl-C undoes exactly
what was done, newest first, and nothing more."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class InjectedFault(Exception):
    """Raised by VSS_FAULT_AFTER=<text>, a test hook; never set it in production."""


def pause_after(step: str) -> None:
    """VSS_PAUSE_AFTER=<text>, a test hook: wait here after a step whose name holds it (for a
    test's signal or kill -9). Also used by steps that are no transaction's (stop's). Never
    set it in production."""
    pause = os.environ.get("VSS_PAUSE_AFTER")
    if pause and pause in step:
        print(f"virt-sandbox-service: paused after '{step}'", file=sys.stderr, flush=True)
        time.sleep(60)


class Transaction:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def did(self, what: str, undo: Callable[[], None]) -> None:
        """Record that `what` was done and how to take it back."""
        log.debug("done: %s", what)
        self._undo.append((what, undo))
        # Test hooks for the rollback and crash tests: fail, or pause (so the test can send a
        # signal or kill -9), right after a chosen step. Never set them in production.
        fault = os.environ.get("VSS_FAULT_AFTER")
        if fault and fault in what:
            raise InjectedFault(f"injected fault after '{what}'")
        pause_after(what)

    def commit(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
                log.debug("undone: %s", what)
            except Exception as e:  # keep undoing the rest; say what could not be undone
                print(f"virt-sandbox-service: could not undo '{what}': {e}", file=sys.stderr)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.rollback()
        else:
            self.commit()
