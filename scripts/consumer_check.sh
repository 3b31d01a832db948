#!/usr/bin/env bash
# Installs build/ into a temporary prefix, then configures, builds and runs tests/consumer (a
# project of its own: find_package(cleave), links cleave::client) against that prefix only.
# Assumes a build (scripts/build.sh). Exits non-zero when any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "consumer: installing build/ into a temporary prefix"
cmake --install build --prefix "$tmp/prefix" >"$tmp/install.log"
echo "consumer: building tests/consumer with find_package(cleave)"
if ! cmake -S tests/consumer -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/configure.log" 2>&1 ||
   ! cmake --build "$tmp/build" >"$tmp/build.log" 2>&1; then
  cat "$tmp/configure.log" "$tmp/build.log" 2>/dev/null | tail -40 >&2
  echo "consumer: FAILED" >&2
  exit 1
fi
"$tmp/build/consumer"
