"""User-facing errors: one line naming the problem, plus a hint saying what to do."""

from __future__ import annotations


class SandboxError(Exception):
    """An error the CLI prints as one line (and a hint), without a traceback."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UserError(SandboxError):
    """Bad input: detected before any side effect."""


class HostError(SandboxError):
    """The host lacks something (a tool, a daemon, a driver) or a host operation failed."""
