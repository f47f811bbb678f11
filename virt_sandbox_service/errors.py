"""User-facing errors: one line naming the problem, plus a hint saying what to do.

The exit statuses the tool itself chooses live here, each with the meaning the man page's
EXIT STATUS gives it (tests/test_exit_status.py holds the two to each other).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the host lacks something or a host/runtime step failed
EXIT_USAGE = 2  # usage or bad input (argparse's own status for a usage error)
EXIT_DRIFT = 3  # upgrade --check: some sandbox's configuration drifted
# start: a confined unit failed while the sandbox started (LSB "program is not configured",
# systemd's 6/NOTCONFIGURED; the host unit does not restart on it).
EXIT_NOT_CONFIGURED = 6
# run's own failures, whatever their cause: as for env(1), timeout(1) and podman, any other
# status could be the command's. 126 and 127 are the command's (found but not executable,
# not found), as a shell reports them.
EXIT_RUN_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, after the running step rolled back

EXIT_STATUS = {
    EXIT_OK: "success",
    EXIT_FAILURE: "a host or runtime failure",
    EXIT_USAGE: "a usage error or bad input",
    EXIT_DRIFT: "upgrade --check: something drifted",
    EXIT_NOT_CONFIGURED: "start: a confined unit failed while the sandbox started",
    EXIT_RUN_FAILED: "run: run itself failed",
    EXIT_CANNOT_EXECUTE: "run: the command cannot be executed",
    EXIT_NOT_FOUND: "run: the command was not found",
    EXIT_INTERRUPTED: "interrupted",
}


class SandboxError(Exception):
    """An error the CLI prints as one line (and a hint), without a traceback."""

    exit_status = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UserError(SandboxError):
    """Bad input: detected before any side effect."""

    exit_status = EXIT_USAGE


class HostError(SandboxError):
    """The host lacks something (a tool, a daemon, a driver) or a host operation failed."""
