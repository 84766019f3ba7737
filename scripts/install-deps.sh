#!/usr/bin/env bash
# Installs the Debian packages dasgd's build, tests and examples need, if any
# is missing. Usage: scripts/install-deps.sh [extra packages...]
set -euo pipefail
packages=(cmake ninja-build g++ doctest-dev libopenmpi-dev openmpi-bin libeigen3-dev
          libcli11-dev zlib1g-dev dataset-fashion-mnist "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing missing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
