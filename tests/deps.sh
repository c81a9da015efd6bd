#!/usr/bin/env bash
# Installs everything sluice needs to build and test on Debian 12, from Debian's own packages,
# plus the conformance suite's npm packages as pinned by tests/compat/package-lock.json.
# The one list: .ci/run and the README both use this script. Run as root (or with sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang clang-format
  libuv1-dev librdkafka-dev libmsgpack-dev libzstd-dev zlib1g-dev libcurl4-openssl-dev libssl-dev openssl
  libyaml-dev libxxhash-dev libjansson-dev libcmocka-dev libmimalloc-dev libsimdjson-dev libyajl-dev node-llhttp kcat jq
  chromium
)

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/deps.sh: run as root, e.g. sudo tests/deps.sh" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"

# The conformance suite (tests/compat) runs the real client SDKs under node, with npm packages
# pinned by tests/compat/package-lock.json. A machine that already has node (with its npm) keeps
# it; otherwise Debian's nodejs + npm. The packages are installed here, once: the suite itself
# never downloads. Install scripts are not run (none of the pinned packages needs one).
if ! command -v node >/dev/null 2>&1; then
  apt-get install -y --no-install-recommends nodejs npm
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
npm ci --prefix "$root/tests/compat" --ignore-scripts --no-audit --no-fund
