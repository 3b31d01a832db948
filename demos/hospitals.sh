#!/usr/bin/env bash
# One command on a fresh Debian machine: install what is missing, build, provision a CA, a server
# and three hospitals, then train a split CNN on a non-IID (Dirichlet beta 0.5) Fashion-MNIST split
# in SplitFed rounds over mutual TLS with Gaussian-k on the link. Mid-run one hospital is killed
# (kill -9) and restarted: the others carry on, and it rejoins at the current model version. Ends
# with per-hospital and global test accuracy, bytes on the wire against dense fp32, and the test
# dCor. The server stops by itself once its rounds are done and every hospital has left. Everything
# lands in a run folder (logs, metrics JSON, the server's final Prometheus metrics, checkpoints).
#
# Knobs (environment): HOSPITALS (3), ROUNDS (40), ROUND_SAMPLES (6000), BETA (0.5),
# ACT_COMPRESSION (gaussiank+), ACT_DENSITY (0.11), ACT_PRECISION (int4), GRAD_COMPRESSION
# (gaussiank+), GRAD_DENSITY (0.25), GRAD_PRECISION (int4) -- the best measured link, 50.8x fewer
# bytes than dense fp32 (docs/PERFORMANCE.md) --, UPDATE_COMPRESSION (gaussiank+), UPDATE_DENSITY
# (0.5), PARTITION (dirichlet or iid),
# KILL (1: kill and restart one hospital), KILL_AT_ROUND (4), RESTART_AFTER (8 s),
# TRAIN_LIMIT (0 = all 60000), PORT (50051), METRICS_PORT (9464), RUN_DIR (runs/hospitals-<time>),
# CONFIG (vanilla; u-shaped: each hospital keeps the last layer and its labels, the server runs
# only the middle, and the results show the bytes of all four directions; vertical:
# demos/vertical.sh and its knobs), TAIL_LAYERS (1).
set -euo pipefail
cd "$(dirname "$0")/.."

# CONFIG=vertical: two parties holding the left and right halves of each image (demos/vertical.sh).
CONFIG="${CONFIG:-vanilla}"
case "$CONFIG" in
  vanilla | u-shaped) ;;
  vertical) exec bash demos/vertical.sh ;;
  *) echo "CONFIG must be vanilla, u-shaped or vertical" >&2; exit 2 ;;
esac

HOSPITALS="${HOSPITALS:-3}"
ROUNDS="${ROUNDS:-40}"
ROUND_SAMPLES="${ROUND_SAMPLES:-6000}"
BETA="${BETA:-0.5}"
UPDATE_COMPRESSION="${UPDATE_COMPRESSION:-gaussiank+}"
UPDATE_DENSITY="${UPDATE_DENSITY:-0.5}"
PARTITION="${PARTITION:-dirichlet}"
CONFIG="${CONFIG:-vanilla}"
TAIL_LAYERS="${TAIL_LAYERS:-1}"
config_flags=(--config "$CONFIG")
# Dense fp32 bytes per training sample: 32x14x14 activations up and their gradient down, and
# (u-shaped) the middle's 128 outputs down and their gradient up.
DENSE_PER_SAMPLE=50176
if [ "$CONFIG" = u-shaped ]; then
  config_flags+=(--tail-layers "$TAIL_LAYERS")
  DENSE_PER_SAMPLE=51200
fi
KILL="${KILL:-1}"
KILL_AT_ROUND="${KILL_AT_ROUND:-4}"
RESTART_AFTER="${RESTART_AFTER:-8}"
METRICS_PORT="${METRICS_PORT:-9464}"
RUN_DIR="${RUN_DIR:-runs/hospitals-$(date +%Y%m%d-%H%M%S)}"
NAMES=(st-mary general-east riverside north-clinic south-clinic)
[ "$HOSPITALS" -ge 1 ] && [ "$HOSPITALS" -le ${#NAMES[@]} ] ||
  { echo "HOSPITALS must be 1..${#NAMES[@]}" >&2; exit 2; }

source demos/lib.sh  # the link knobs, PORT, SKIP_BUILD, TRAIN_LIMIT, BIN; build, certificates
demo_build
mkdir -p "$RUN_DIR"

echo "== certificates (one CA, a server, ${HOSPITALS} hospital(s)) in $RUN_DIR/pki"
demo_provision "$RUN_DIR" "${NAMES[@]:0:$HOSPITALS}"

echo "== server on 127.0.0.1:$PORT: ${CONFIG}, splitfed, ${ROUNDS} rounds of ${ROUND_SAMPLES} samples," \
  "activations ${ACT_COMPRESSION} ${ACT_DENSITY} ${ACT_PRECISION} (log: $RUN_DIR/server.log," \
  "metrics: http://127.0.0.1:${METRICS_PORT}/metrics)"
"$BIN/cleave-server" --listen "127.0.0.1:$PORT" \
  --ca "$RUN_DIR/pki/ca.crt" --cert "$RUN_DIR/pki/server.crt" --key "$RUN_DIR/pki/server.key" \
  --clients "$RUN_DIR/allowlist.txt" --model cnn --cut 1 "${config_flags[@]}" \
  --schedule splitfed --rounds "$ROUNDS" --round-samples "$ROUND_SAMPLES" \
  --round-deadline 120 --quorum $(((HOSPITALS + 1) / 2)) --min-clients "$HOSPITALS" \
  "${link_flags[@]}" --update-compression "$UPDATE_COMPRESSION" --update-density "$UPDATE_DENSITY" \
  --checkpoint "$RUN_DIR/server.ckpt" --checkpoint-every 500 \
  --metrics-listen "127.0.0.1:$METRICS_PORT" --metrics-out "$RUN_DIR/metrics.prom" \
  >"$RUN_DIR/server.out" 2>"$RUN_DIR/server.log" &
server_pid=$!
# The server's per-round summary is the live progress view.
tail -n +1 -F --pid="$server_pid" "$RUN_DIR/server.log" 2>/dev/null |
  grep --line-buffered -E "round [0-9]+ (done|starts)|joined|released|refused" |
  sed -u -e 's/^[0-9-]* [0-9:.]* \[[a-z]*\] /[server] /' &
tail_pid=$!

start_hospital() {  # start_hospital INDEX
  local i="$1" name="${NAMES[$1]}"
  demo_tls "$RUN_DIR" "$name"
  "$BIN/cleave-client" --server "localhost:$PORT" "${tls[@]}" --model cnn --cut 1 "${config_flags[@]}" --train-limit "$TRAIN_LIMIT" \
    --shard "$i" --shards "$HOSPITALS" --partition "$PARTITION" --dirichlet-beta "$BETA" \
    --seed $((i + 1)) --progress lines --metrics-out "$RUN_DIR/$name.json" \
    --checkpoint "$RUN_DIR/$name.ckpt" >>"$RUN_DIR/$name.out" 2>>"$RUN_DIR/$name.log" &
  pids[$i]=$!
}

echo "== ${HOSPITALS} hospital(s), Dirichlet(${BETA}) label split (progress: $RUN_DIR/<name>.out)"
for ((i = 0; i < HOSPITALS; i++)); do start_hospital "$i"; done

victim=$((HOSPITALS - 1))
if [ "$KILL" = 1 ] && [ "$HOSPITALS" -ge 2 ]; then
  # Wait (bounded) for the round, then kill -9 one hospital mid-round and restart it later.
  for ((t = 0; t < 3600; t++)); do
    grep -qE "round ${KILL_AT_ROUND} done" "$RUN_DIR/server.log" && break
    kill -0 "${pids[$victim]}" 2>/dev/null || break
    sleep 1
  done
  sleep 2
  # Only while it still trains, and restarted only while training goes on: the server stops by
  # itself once training is over and every hospital has left, so a hospital started after that
  # would find no server (short runs: few ROUNDS, a late KILL_AT_ROUND or a long RESTART_AFTER).
  if kill -0 "${pids[$victim]}" 2>/dev/null; then
    echo "== killing ${NAMES[$victim]} (kill -9) in the middle of a round"
    kill -9 "${pids[$victim]}" 2>/dev/null || true
    wait "${pids[$victim]}" 2>/dev/null || true
    unset "pids[$victim]"
    sleep "$RESTART_AFTER"
    if grep -q "training finished" "$RUN_DIR/server.log"; then
      echo "== training finished while ${NAMES[$victim]} was down: not restarting it (if it" \
        "died outside a Train stream or Sync, the server waits for its session to expire)"
    else
      echo "== restarting ${NAMES[$victim]}: it rejoins and pulls the current client-side weights"
      start_hospital "$victim"
    fi
  fi
fi

status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
# Every hospital has evaluated and left: the server stops by itself (at most
# --linger-after-rounds later), writing its checkpoint and its final metrics. If a hospital failed
# and training is not over, stop it (SIGTERM also writes both).
if [ "$status" -ne 0 ]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
server_status=0
wait "$server_pid" || server_status=$?
kill "$tail_pid" 2>/dev/null || true
trap - EXIT
[ "$status" -eq 0 ] || { echo "a hospital failed; see the logs in $RUN_DIR" >&2; exit 1; }
[ "$server_status" -eq 0 ] ||
  { echo "cleave-server exited $server_status; see $RUN_DIR/server.log" >&2; exit 1; }

echo
echo "== results (metrics JSON, logs, the server's final Prometheus metrics in $RUN_DIR)"
total_train_bytes=0
total_dense=0
for ((i = 0; i < HOSPITALS; i++)); do
  name="${NAMES[$i]}"
  m="$RUN_DIR/$name.json"
  grep -q '"test_accuracy"' "$m" 2>/dev/null ||
    { printf '%14s: killed and not restarted (no results)\n' "$name"; continue; }
  awk -v name="$name" -v acc="$(field "$m" test_accuracy)" -v local="$(field "$m" local_test_accuracy)" \
      -v samples="$(field "$m" samples)" -v rounds="$(field "$m" rounds_trained)" \
      -v per="$(field "$m" train_bytes_per_sample)" -v ratio="$(field "$m" compression_ratio)" \
      -v dcor="$(field "$m" test_dcor)" -v dense="$DENSE_PER_SAMPLE" 'BEGIN {
    printf "%14s: test accuracy %.2f%% (global model), %.2f%% weighted by its own label mix\n", name, 100 * acc, 100 * local
    if (samples > 0)
      printf "%14s  trained %d samples in %d round(s) after its last start; %.0f bytes per training sample on the wire (%.1fx fewer than dense fp32)", "", samples, rounds, per, dense / per
    else
      printf "%14s  trained no samples after its last start (training had ended)", ""
    if (dcor != "") printf "; test dCor %.3f", dcor
    printf "\n"
  }'
  # U-shaped: each of the four directions (the client's own summary line).
  grep -h "^u-shaped:" "$RUN_DIR/$name.out" 2>/dev/null | tail -n 1 | sed "s/^/$(printf '%14s  ' '')/" || true
done
grep -E "round [0-9]+ done" "$RUN_DIR/server.log" | tail -n 1 |
  sed 's/^[0-9-]* [0-9:.]* \[[a-z]*\] /last: /'
grep -E "^cleave_(updates_accepted_total|refused_total|rounds_total|client_model_version)[ {]" \
  "$RUN_DIR/metrics.prom" 2>/dev/null | sed 's/^/server metric: /' || true
if [ "$CONFIG" = u-shaped ]; then
  echo "u-shaped: labels stayed at the hospitals; dense fp32 sends $DENSE_PER_SAMPLE bytes per" \
    "training sample (32x14x14 activations up and their gradient down, 128 middle outputs down" \
    "and their gradient up)"
else
  echo "dense fp32 sends 50176 bytes per training sample (32x14x14 fp32 activations up, gradients down)"
fi
