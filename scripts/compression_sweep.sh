#!/usr/bin/env bash
# Accuracy against bytes on the wire for activation compression settings on Fashion-MNIST (the
# spine's CNN cut after block 1): one server + one client over mutual TLS per setting. Writes
# OUT/compression.csv and OUT/compression.md. Assumes a build (scripts/build.sh).
#
# Knobs: EPOCHS (1), DENSITIES ("0.01 0.05 0.1 0.5"), PRECISIONS ("fp32 fp16 bf16"),
# METHOD (gaussiank+), OUT (runs/compression-<time>), PORT (50151), TRAIN_LIMIT (0 = all),
# GRAD_PRECISION (empty: the row's precision; else gradients back in this one for every row),
# PER_SAMPLE (0; 1: activations chosen per sample, --act-per-sample), SEED (1: client and
# server), DENSE (1; 0: no dense row, "vs dense" then against the first row), EXTRA_SERVER_FLAGS.
# DENSITIES="" runs the dense row only.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${EPOCHS:-1}"
DENSITIES="${DENSITIES-0.01 0.05 0.1 0.5}"
PRECISIONS="${PRECISIONS:-fp32 fp16 bf16}"
METHOD="${METHOD:-gaussiank+}"
OUT="${OUT:-runs/compression-$(date +%Y%m%d-%H%M%S)}"
PORT="${PORT:-50151}"
TRAIN_LIMIT="${TRAIN_LIMIT:-0}"
GRAD_PRECISION="${GRAD_PRECISION:-}"
PER_SAMPLE="${PER_SAMPLE:-0}"
SEED="${SEED:-1}"
DENSE="${DENSE:-1}"
EXTRA_SERVER_FLAGS="${EXTRA_SERVER_FLAGS:-}"
BIN=build/bin
mkdir -p "$OUT"
"$BIN/cleave-provision" --out "$OUT/pki" --client sweep >/dev/null

field() { sed -n "s/^ *\"$2\": *\(.*\),\{0,1\}$/\1/p" "$1" | tr -d ','; }

run() {  # run NAME METHOD DENSITY PRECISION
  local name="$1" method="$2" density="$3" precision="$4"
  local grad_precision="${GRAD_PRECISION:-$precision}" per_sample=()
  [[ "$method" == none ]] && grad_precision="$precision"
  [[ "$PER_SAMPLE" == 1 && "$method" != none ]] && per_sample=(--act-per-sample)
  # shellcheck disable=SC2086  # EXTRA_SERVER_FLAGS is a list of flags
  "$BIN/cleave-server" --listen "127.0.0.1:$PORT" --ca "$OUT/pki/ca.crt" \
    --cert "$OUT/pki/server.crt" --key "$OUT/pki/server.key" --act-compression "$method" \
    --act-density "$density" --act-precision "$precision" --grad-precision "$grad_precision" \
    --seed "$SEED" "${per_sample[@]}" $EXTRA_SERVER_FLAGS \
    >"$OUT/$name.server.out" 2>"$OUT/$name.server.log" &
  local server=$!
  "$BIN/cleave-client" --server "localhost:$PORT" --ca "$OUT/pki/ca.crt" \
    --cert "$OUT/pki/clients/sweep.crt" --key "$OUT/pki/clients/sweep.key" --epochs "$EPOCHS" \
    --seed "$SEED" --train-limit "$TRAIN_LIMIT" --progress none --metrics-out "$OUT/$name.json" \
    >"$OUT/$name.client.out" 2>"$OUT/$name.client.log"
  kill -TERM "$server"
  wait "$server" || true
  local m="$OUT/$name.json"
  local label="$precision"
  [[ "$grad_precision" != "$precision" ]] && label="$precision up / $grad_precision down"
  [[ ${#per_sample[@]} -gt 0 ]] && label="$label / per sample"
  [[ -n "$EXTRA_SERVER_FLAGS" && "$method" != none ]] && label="$label / $EXTRA_SERVER_FLAGS"
  echo "$method,$density,$label,$(field "$m" test_accuracy),$(field "$m" train_bytes_sent),$(field "$m" train_bytes_received),$(field "$m" samples),$(field "$m" compression_ratio)" >>"$OUT/compression.csv"
  echo "sweep: $name done: accuracy $(field "$m" test_accuracy)"
}

echo "method,density,precision,test_accuracy,train_bytes_sent,train_bytes_received,samples,compression_ratio_up" >"$OUT/compression.csv"
[[ "$DENSE" == 1 ]] && run dense none 1.0 fp32
for density in $DENSITIES; do
  for precision in $PRECISIONS; do
    run "$METHOD-$density-$precision" "$METHOD" "$density" "$precision"
  done
done

# Markdown table: bytes per training sample (both directions, evaluation excluded) relative to
# dense fp32.
awk -F, -v epochs="$EPOCHS" -v seed="$SEED" 'NR == 1 { next }
  NR == 2 { dense = ($5 + $6) / $7; base = $4 }
  { per = ($5 + $6) / $7
    rows[NR] = sprintf("| %s | %s | %s | %.2f%% | %+.2f pp | %.0f | %.1fx |", $1, $2, $3, 100 * $4,
                       100 * ($4 - base), per, dense / per) }
  END {
    print "Fashion-MNIST, CNN cut after block 1, " epochs " epoch(s), seed " seed ", one client over mutual TLS."
    print ""
    print "| method | density | precision | test accuracy | vs dense | training bytes/sample (both ways) | fewer bytes |"
    print "|---|---|---|---|---|---|---|"
    for (i = 2; i <= NR; ++i) print rows[i]
  }' "$OUT/compression.csv" >"$OUT/compression.md"
cat "$OUT/compression.md"
