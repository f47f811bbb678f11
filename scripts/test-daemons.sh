#!/usr/bin/env bash
# The daemons the tests confine, beyond apache2 (which the demo needs too), and the clients the
# tests check them with from inside their sandboxes (tests/test_daemons.py): the test
# set-up's, not runtime dependencies of the tool. Idempotent; the packages' own services are
# never started on the host (policy-rc.d), since the sandboxes run their own copies.
# chrony replaces systemd-timesyncd (both provide time-daemon), rsyslog becomes the host's
# system-log-daemon without being started: fine on a test machine.
set -euo pipefail
TEST_DAEMONS=(
  nginx-light openssh-server openssh-client postfix cron chrony
  slapd ldap-utils                  # ldapsearch
  unbound dns-root-data             # unbound refuses to start without the root trust anchor
  nsd bind9-dnsutils                # dig
  mosquitto mosquitto-clients       # mosquitto_pub, mosquitto_sub
  php8.2-fpm libfcgi-bin            # cgi-fcgi
  rsyslog                           # logger is in bsdutils (essential)
  samba smbclient
  proftpd-core varnish prosody tor
  freeradius freeradius-utils       # radtest
  redis-server memcached            # redis-cli is in redis-tools, a dependency
  haproxy                           # a bind to another place (BindReadOnlyPaths=SRC:DEST)
  squid                             # (vsftpd conflicts with proftpd-core: both are an ftp-server)
  dovecot-imapd                     # its key is a link to the host's snakeoil key (hidden)
  mariadb-server                    # mysql is in mariadb-client-core, a dependency
  postgresql                        # postgresql-15 and its cluster 15/main; psql
  netcat-openbsd curl               # banners, HTTP
  ansible-core                      # examples/ansible: its playbook runs in tests/test_apply.py
)
need=()
for p in "${TEST_DAEMONS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "test-daemons: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select Local only
postfix postfix/mailname string localhost
slapd slapd/no_configuration boolean false
slapd slapd/domain string example.org
slapd shared/organization string example
samba-common samba-common/dhcp boolean false
EOF
apt-get install -y -q --no-install-recommends "${need[@]}" || {
  apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }
