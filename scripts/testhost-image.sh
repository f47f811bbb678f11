#!/usr/bin/env bash
# Build (or reuse) the standard test host: a Debian 12 disk image booted under QEMU by
# tests/testhost.py, with systemd as PID 1, pure cgroup v2, libvirtd started by systemd, SELinux
# (Debian's selinux-policy-default, labelled offline) or AppArmor, and the project installed
# inside by its own scripts/setup.sh. Idempotent: the image is rebuilt only when its inputs change
# (this script, setup.sh's package list, pyproject.toml).
#
#   scripts/testhost-image.sh            build if needed, print the cache directory
#
# Output, in $VSS_TESTHOST_CACHE (default /var/cache/virt-sandbox-service/testhost):
#   image.raw (ext4, sparse), vmlinuz, initrd.img, id_ed25519 (root's key into the guest), inputs
# Nothing else is left on the host: the root is built in a temporary directory removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${VSS_TESTHOST_CACHE:-/var/cache/virt-sandbox-service/testhost}
SIZE=${VSS_TESTHOST_SIZE:-12G}

# The guest's own packages, beyond those setup.sh installs (read from setup.sh itself below, so the
# guest's set-up finds them installed and needs no network).
GUEST_PACKAGES=(
  systemd-sysv dbus udev kmod initramfs-tools linux-image-amd64 openssh-server
  libpam-systemd ca-certificates procps psmisc less
  # SELinux: Debian's reference policy with MCS, the tools to load a module and read AVCs
  selinux-policy-default selinux-utils policycoreutils auditd
  # AppArmor: the profiles libvirt's security driver loads for each domain
  apparmor apparmor-utils
  python3-venv
)

# setup.sh's APT_PACKAGES, read without running it.
mapfile -t SETUP_PACKAGES < <(sed -n '/^APT_PACKAGES=(/,/^)/p' "$here/scripts/setup.sh" \
  | sed -e '1d;$d' -e 's/#.*//' | tr ' ' '\n' | sed '/^$/d')

inputs() {
  # The files' contents only: the same tree at another path (a CI clone) reuses the image.
  cat "$0" "$here/scripts/setup.sh" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1
}
want=$(inputs)
if [ -f "$cache/inputs" ] && [ "$(cat "$cache/inputs")" = "$want" ] && [ -f "$cache/image.raw" ]; then
  echo "$cache"
  exit 0
fi

command -v mmdebstrap >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2
}
mkdir -p "$cache"
work=$(mktemp -d /var/tmp/vss-testhost-build.XXXXXX)
cleanup() {
  # The build's mounts were made by mmdebstrap's hooks and are gone; only the directory is ours.
  for m in proc sys dev/pts dev; do mountpoint -q "$work/root/$m" && umount -l "$work/root/$m"; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
root=$work/root

rm -f "$cache/id_ed25519" "$cache/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C vss-testhost -f "$cache/id_ed25519"

include=$(printf '%s,' "${GUEST_PACKAGES[@]}" "${SETUP_PACKAGES[@]}")
echo "testhost: building the Debian 12 root (mmdebstrap)" >&2
# The host's own package sources, so the guest gets the same versions the host tests ran with.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
  [ -s "$f" ] && sources+=("$f")
done
mmdebstrap --quiet --mode=root --variant=apt --include="${include%,}" \
  --customize-hook='echo vss-testhost > "$1/etc/hostname"' \
  bookworm "$root" "${sources[@]}" >&2

echo "testhost: configuring the guest" >&2
install -d -m 700 "$root/root/.ssh"
install -m 600 "$cache/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
cat > "$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,relatime 0 1
EOF
cat > "$root/etc/systemd/network/80-vss.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
printf 'nameserver 10.0.2.3\n' > "$root/etc/resolv.conf"
# SELinux: enforcing with Debian's MLS/MCS reference policy when booted with security=selinux;
# the kernel command line decides which LSM is active.
cat > "$root/etc/selinux/config" <<'EOF'
SELINUX=enforcing
SELINUXTYPE=default
EOF
# What a test host must not do: wait for a time sync or the network, run maintenance timers.
chroot "$root" systemctl enable systemd-networkd.service ssh.service libvirtd.service >&2
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer man-db.timer systemd-networkd-wait-online.service >&2

echo "testhost: installing the project with its own set-up" >&2
mkdir -p "$root/opt/vss"
tar -C "$here" --exclude=.venv --exclude=.git --exclude='__pycache__' --exclude='*.egg-info' \
  -cf - . | tar -C "$root/opt/vss" -xf -
mount --bind /proc "$root/proc"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# pip reaches PyPI the way the host does: through the host's CA bundle (which may hold a
# proxy's CA that the guest's ca-certificates lacks).
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.crt"
chroot "$root" env -u PIP_FIND_LINKS PIP_CERT=/tmp/host-ca.crt REQUESTS_CA_BUNDLE=/tmp/host-ca.crt \
  SSL_CERT_FILE=/tmp/host-ca.crt VSS_SETUP_IMAGE=1 \
  bash /opt/vss/scripts/setup.sh >&2
rm -f "$root/tmp/host-ca.crt"
printf 'nameserver 10.0.2.3\n' > "$root/etc/resolv.conf"
umount "$root/dev" "$root/proc"

echo "testhost: labelling for SELinux (offline, setfiles)" >&2
setfiles -r "$root" -F "$root/etc/selinux/default/contexts/files/file_contexts" "$root" >&2 || true

cp "$root"/boot/vmlinuz-* "$cache/vmlinuz.new"
cp "$root"/boot/initrd.img-* "$cache/initrd.img.new"
rm -f "$cache/image.raw.new"
echo "testhost: writing the ext4 image" >&2
mkfs.ext4 -q -L vss-testhost -E root_owner=0:0 -d "$root" "$cache/image.raw.new" "$SIZE" >&2
mv "$cache/vmlinuz.new" "$cache/vmlinuz"
mv "$cache/initrd.img.new" "$cache/initrd.img"
mv "$cache/image.raw.new" "$cache/image.raw"
echo "$want" > "$cache/inputs"
echo "$cache"
