#!/usr/bin/env bash
# The peers the benchmarks measure us against (bench/), installed for `make bench` only: they
# are not the tool's dependencies, and the tests do not need them. Idempotent.
#   podman             bench/oneshot.py (podman run --rootfs /:O /bin/true)
#   systemd-container  systemd-nspawn, bench/lxc_service.py and bench/density.py
set -euo pipefail
need=()
for pkg in podman systemd-container; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
