#!/usr/bin/env bash
# Setup + configure + build + the function-length check + every test (ctest), a project built against the installed package
# (scripts/consumer_check.sh), then a bounded fuzzing smoke run of the codec.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/check_function_length.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
bash scripts/consumer_check.sh
if [ -x scripts/fuzz_smoke.sh ]; then
  FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash scripts/fuzz_smoke.sh
fi
