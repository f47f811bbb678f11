#!/usr/bin/env bash
# The daemons the tests confine, beyond apache2 (which the demo needs too): the test set-up's,
# not runtime dependencies of the tool. Idempotent; the packages' own services are never
# started on the host (policy-rc.d), since the sandboxes run their own copies.
# chrony replaces systemd-timesyncd (both provide time-daemon): fine on a test machine.
set -euo pipefail
TEST_DAEMONS=(nginx-light openssh-server postfix cron chrony)
need=()
for p in "${TEST_DAEMONS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "test-daemons: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
echo "postfix postfix/mailname string localhost" | debconf-set-selections
apt-get install -y -q --no-install-recommends "${need[@]}" || {
  apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }
