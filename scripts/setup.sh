#!/usr/bin/env bash
# Idempotent set-up of everything virt-sandbox-service and its tests need on Debian 12, as root.
# Installs Debian packages, creates the venv (.venv) with the Python dependencies and the project,
# links the CLI onto root's PATH and starts virtlogd/libvirtd when nothing else runs them.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${VSS_VENV:-$here/.venv}

APT_PACKAGES=(
  libvirt-daemon-system libvirt-daemon-driver-lxc libvirt-daemon-driver-qemu libvirt-clients
  libvirt-dev pkg-config qemu-system-x86 qemu-utils dnsmasq-base dbus iptables busybox-static
  systemd-container libsystemd-dev linux-image-amd64 apache2 curl
  rsync
  python3-dev gcc make libxml2-utils groff-base man-db
  qemu-guest-agent cpio
  selinux-policy-dev checkpolicy semodule-utils selinux-policy-default setools
  apache2-utils iproute2 tmux
  tini  # reaps what libvirtd forks where PID 1 is not systemd (scripts/start-daemons.sh)
  python3-libvirt python3-lxml python3-jinja2 python3-pystemd
  # run --graphics: the X server the KVM guest starts from the host's root (its modesetting
  # driver is in it), and xterm, the window tests/test_graphics.py looks for on the screen.
  xserver-xorg-core xterm
)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d: never start the packaged daemons on install (apache2 must not hold port 80 on
  # the host; the sandboxes run their own copies).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# Python: one venv for the tool and its tests. libvirt-python and pystemd compile against the
# Debian headers installed above.
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.vss-deps"
want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/pip" install -q --upgrade pip wheel setuptools Cython
  "$venv/bin/pip" install -q -e "$here[dev]"
  echo "$want" > "$stamp"
fi
# Byte-compile the tool as a non-editable pip install would: every command is a fresh process,
# and compiling its modules from source (e.g. under PYTHONDONTWRITEBYTECODE=1) costs ~40 ms each
# time. compileall rewrites only what changed.
"$venv/bin/python" -m compileall -q "$here/virt_sandbox_service" >/dev/null
# root's PATH: generated units reference this absolute path.
ln -sfn "$venv/bin/virt-sandbox-service" /usr/local/bin/virt-sandbox-service
# The generator of sandbox files' units (virt_sandbox_service/generator.py).
install -d /usr/lib/systemd/system-generators
ln -sfn "$venv/bin/virt-sandbox-service-generator" \
  /usr/lib/systemd/system-generators/virt-sandbox-service-generator
install -D -m 644 "$here/man/virt-sandbox-service.1" /usr/local/share/man/man1/virt-sandbox-service.1
install -D -m 644 "$here/completion/virt-sandbox-service.bash" /usr/share/bash-completion/completions/virt-sandbox-service

# Building the test host's image (scripts/testhost-image.sh, in a chroot): no daemons to start
# and no host to fix; the booted guest runs this script again.
if [ "${VSS_SETUP_IMAGE:-}" = 1 ]; then exit 0; fi

# Daemons: nothing on this kind of machine starts them (PID 1 is not systemd). Where systemd
# runs the host, it already manages them and we leave it alone.
"$here/scripts/start-daemons.sh"

# Host readiness: applies only the additive fixes `doctor` names (e.g. the cgroup2 controller
# layout that libvirt 9.0's LXC driver cannot handle), then reports.
"$venv/bin/virt-sandbox-service" doctor --fix
