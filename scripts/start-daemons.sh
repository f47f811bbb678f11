#!/usr/bin/env bash
# Starts virtlogd and libvirtd where no service manager runs them (PID 1 is not systemd), once:
# a daemon already running is left alone. Used by scripts/setup.sh, and by the test that
# restarts libvirtd (tests/test_reliability.py), so both start it the same way.
#
# libvirtd runs in the foreground under `tini -s`, a child subreaper, because what libvirtd
# double-forks (each LXC sandbox's controller, each qemu) is reaped by the nearest subreaper
# or else by PID 1. systemd, as PID 1, reaps at once; this machine's PID 1 reaps orphans only
# every ~1.5 s, and libvirt counts a zombie qemu as still running (virProcessKillPainfully polls
# every 200 ms until it is reaped), so every KVM sandbox's end took up to 1.5 s longer here.
set -euo pipefail
if [ -d /run/systemd/system ]; then exit 0; fi  # systemd manages them
mkdir -p /var/log/libvirt /run/libvirt
if ! pidof virtlogd >/dev/null; then virtlogd -d; fi
if ! pidof libvirtd >/dev/null; then
  log=/var/log/libvirt/libvirtd-stderr.log
  setsid tini -s -- libvirtd </dev/null >>"$log" 2>&1 &
  for _ in $(seq 100); do
    [ -S /run/libvirt/libvirt-sock ] && pidof libvirtd >/dev/null && exit 0
    sleep 0.1
  done
  echo "start-daemons: libvirtd did not come up within 10 s; see $log" >&2
  exit 1
fi
