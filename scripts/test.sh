#!/usr/bin/env bash
# The whole test suite, every tier, plus the linters. CI runs this through `make test`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=${VSS_VENV:-$here/.venv}
# In CI every part is installed and started by scripts/setup.sh: a missing part must fail the
# run instead of skipping its tests.
export VSS_REQUIRE_ALL=${VSS_REQUIRE_ALL:-1}
# CI owns this machine's libvirtd (setup.sh started it): the daemon-restart test may run.
export VSS_ALLOW_DAEMON_RESTART=${VSS_ALLOW_DAEMON_RESTART:-1}
# The daemons the tests confine (test set-up, not the tool's dependencies).
bash "$here/scripts/test-daemons.sh"
"$venv/bin/ruff" check virt_sandbox_service tests bench
"$venv/bin/mypy" virt_sandbox_service
# The slowest tests, for the time budget (README: the tiers' times).
exec "$venv/bin/python" -m pytest -q --durations=30 "$@"
