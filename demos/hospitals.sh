#!/usr/bin/env bash
# One command on a fresh Debian machine: install what is missing, build, provision certificates,
# start a cleave-server and hospitals (clients) training a split CNN on Fashion-MNIST over mutual
# TLS, then print each hospital's test accuracy and bytes on the wire. Everything lands in a run
# folder (logs, metrics JSON, certificates, checkpoints).
#
# Environment knobs: HOSPITALS (default 1), EPOCHS (2), TRAIN_LIMIT (0 = all 60000 samples),
# PORT (50051), ACT_COMPRESSION (none), ACT_DENSITY (1.0), RUN_DIR (runs/hospitals-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."

HOSPITALS="${HOSPITALS:-1}"
EPOCHS="${EPOCHS:-2}"
TRAIN_LIMIT="${TRAIN_LIMIT:-0}"
PORT="${PORT:-50051}"
ACT_COMPRESSION="${ACT_COMPRESSION:-none}"
ACT_DENSITY="${ACT_DENSITY:-1.0}"
RUN_DIR="${RUN_DIR:-runs/hospitals-$(date +%Y%m%d-%H%M%S)}"
NAMES=(st-mary general-east riverside north-clinic south-clinic)

echo "== setup and build"
bash scripts/setup.sh
bash scripts/build.sh
BIN=build/bin
mkdir -p "$RUN_DIR"

echo "== certificates (one CA, a server, ${HOSPITALS} hospital(s)) in $RUN_DIR/pki"
client_flags=()
for ((i = 0; i < HOSPITALS; i++)); do client_flags+=(--client "${NAMES[$i]}"); done
"$BIN/cleave-provision" --out "$RUN_DIR/pki" "${client_flags[@]}"

echo "== server on 127.0.0.1:$PORT (log: $RUN_DIR/server.log)"
"$BIN/cleave-server" --listen "127.0.0.1:$PORT" \
  --ca "$RUN_DIR/pki/ca.crt" --cert "$RUN_DIR/pki/server.crt" --key "$RUN_DIR/pki/server.key" \
  --model cnn --cut 1 --act-compression "$ACT_COMPRESSION" --act-density "$ACT_DENSITY" \
  --checkpoint "$RUN_DIR/server.ckpt" --checkpoint-every 500 \
  >"$RUN_DIR/server.out" 2>"$RUN_DIR/server.log" &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT

echo "== ${HOSPITALS} hospital(s) training for ${EPOCHS} epoch(s)"
client_pids=()
for ((i = 0; i < HOSPITALS; i++)); do
  name="${NAMES[$i]}"
  progress=lines
  [ "$HOSPITALS" -eq 1 ] && progress=auto
  "$BIN/cleave-client" --server "localhost:$PORT" --ca "$RUN_DIR/pki/ca.crt" \
    --cert "$RUN_DIR/pki/clients/$name.crt" --key "$RUN_DIR/pki/clients/$name.key" \
    --model cnn --cut 1 --epochs "$EPOCHS" --train-limit "$TRAIN_LIMIT" \
    --shard "$i" --shards "$HOSPITALS" --seed $((i + 1)) --progress "$progress" \
    --metrics-out "$RUN_DIR/$name.json" --checkpoint "$RUN_DIR/$name.ckpt" \
    2> >(sed -u "s/^/[$name] /" >&2) | sed -u "s/^/[$name] /" &
  client_pids+=($!)
done
status=0
for pid in "${client_pids[@]}"; do wait "$pid" || status=1; done

kill -TERM "$server_pid"
wait "$server_pid" || true
trap - EXIT
[ "$status" -eq 0 ] || { echo "a hospital failed; see logs in $RUN_DIR" >&2; exit 1; }

echo
echo "== results (metrics JSON and logs in $RUN_DIR)"
for ((i = 0; i < HOSPITALS; i++)); do
  name="${NAMES[$i]}"
  # The metrics JSON has one key per line; pick the figures without needing jq or Python.
  field() { sed -n "s/^ *\"$1\": *\(.*\),\{0,1\}$/\1/p" "$RUN_DIR/$name.json" | tr -d ','; }
  awk -v name="$name" -v acc="$(field test_accuracy)" -v loss="$(field test_loss)" \
      -v samples="$(field samples)" -v secs="$(field seconds)" -v sent="$(field bytes_sent)" \
      -v recv="$(field bytes_received)" -v ratio="$(field compression_ratio)" \
      -v density="$(field activation_density)" 'BEGIN {
    printf "%14s: test accuracy %.2f%%  test loss %.4f  %d samples in %.0f s\n", name, 100 * acc, loss, samples, secs
    printf "%14s  sent %.1f MB, received %.1f MB, activation density %.3f, %.1fx fewer bytes up than dense fp32\n", "", sent / 1e6, recv / 1e6, density, ratio
  }'
done
