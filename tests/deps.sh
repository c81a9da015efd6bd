#!/usr/bin/env bash
# Installs everything sluice needs to build and test on Debian 12, from Debian's own packages.
# The one list: .ci/run and the README both use this script. Run as root (or with sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang clang-format
  libuv1-dev librdkafka-dev libmsgpack-dev libzstd-dev zlib1g-dev libcurl4-openssl-dev
  libyaml-dev libxxhash-dev libjansson-dev libcmocka-dev libmimalloc-dev node-llhttp kcat jq
)

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/deps.sh: run as root, e.g. sudo tests/deps.sh" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
