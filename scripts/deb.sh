#!/bin/bash
# make deb: build the Debian package of the committed tree (HEAD), with debhelper and pybuild,
# in a scratch directory (the checkout is not touched). The .deb lands in ${VSS_DEB_OUT:-dist}.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${VSS_DEB_OUT:-$here/dist}")

BUILD_DEPS=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
            dpkg-dev)
need=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "deb: installing the build dependencies ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
version=$(dpkg-parsechangelog -l "$here/debian/changelog" -S Version)
src="$scratch/virt-sandbox-service-$version"
mkdir "$src"
git -C "$here" archive HEAD | tar -x -C "$src"
# Debian's own python3 and tools: not a python3 first on root's PATH (a pyenv, a venv).
(cd "$src" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b)
mkdir -p "$out"
cp "$scratch"/virt-sandbox-service_"$version"_all.deb "$out"/
echo "deb: $out/virt-sandbox-service_${version}_all.deb"
