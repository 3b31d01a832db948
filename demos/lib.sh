# What demos/hospitals.sh and demos/vertical.sh share; sourced from the repository root after the
# demo has read its own knobs. Sets the link knobs' defaults (ACT_COMPRESSION gaussiank+,
# ACT_DENSITY 0.11, ACT_PRECISION int4, GRAD_COMPRESSION gaussiank+, GRAD_DENSITY 0.25,
# GRAD_PRECISION int4: the best measured link, docs/PERFORMANCE.md), PORT (50051), SKIP_BUILD (0),
# TRAIN_LIMIT (0 = all 60000) and BIN, and the `link_flags` array for cleave-server.

ACT_COMPRESSION="${ACT_COMPRESSION:-gaussiank+}"
ACT_DENSITY="${ACT_DENSITY:-0.11}"
ACT_PRECISION="${ACT_PRECISION:-int4}"
GRAD_COMPRESSION="${GRAD_COMPRESSION:-gaussiank+}"
GRAD_DENSITY="${GRAD_DENSITY:-0.25}"
GRAD_PRECISION="${GRAD_PRECISION:-int4}"
PORT="${PORT:-50051}"
SKIP_BUILD="${SKIP_BUILD:-0}"
TRAIN_LIMIT="${TRAIN_LIMIT:-0}"
BIN=build/bin
# shellcheck disable=SC2034  # used by the demos that source this file
link_flags=(--act-compression "$ACT_COMPRESSION" --act-density "$ACT_DENSITY"
            --act-precision "$ACT_PRECISION" --grad-compression "$GRAD_COMPRESSION"
            --grad-density "$GRAD_DENSITY" --grad-precision "$GRAD_PRECISION")

# demo_build: installs what is missing and builds, unless SKIP_BUILD=1.
demo_build() {
  [ "$SKIP_BUILD" = 1 ] && return 0
  echo "== setup and build"
  bash scripts/setup.sh
  bash scripts/build.sh
}

# demo_provision RUN_DIR NAME...: a CA, the server's and each client's certificates in
# RUN_DIR/pki, and RUN_DIR/allowlist.txt with the names.
demo_provision() {
  local run_dir="$1"; shift
  local flags=()
  for name in "$@"; do flags+=(--client "$name"); done
  "$BIN/cleave-provision" --out "$run_dir/pki" "${flags[@]}" >/dev/null
  printf '%s\n' "$@" >"$run_dir/allowlist.txt"
}

# demo_tls RUN_DIR NAME: the flags of client NAME's certificate, key and the CA (in `tls`).
demo_tls() {
  tls=(--ca "$1/pki/ca.crt" --cert "$1/pki/clients/$2.crt" --key "$1/pki/clients/$2.key")
}

# The demo's clients (`pids`) and server (`server_pid`) are stopped if it exits early.
pids=()
demo_cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  kill "${server_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap demo_cleanup EXIT

# field JSON KEY: the value of "KEY" in a client's metrics JSON (one per line), unquoted.
field() { sed -n "s/^ *\"$2\": *\(.*\),\{0,1\}$/\1/p" "$1" | tr -d ',"'; }
