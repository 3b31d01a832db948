#!/usr/bin/env bash
# Vertical split learning (demos/hospitals.sh with CONFIG=vertical): two parties hold different
# features of the same Fashion-MNIST samples -- a radiology department the left half of every
# image, a lab the right half (the other pixels are zero on each side) -- and the server joins
# their cut-layer activations (sum, or concat) into the input of its top, over mutual TLS with
# Gaussian-k on the link. The lab holds the labels; the radiology department never sees a label,
# a loss or an accuracy. Ends with the label holder's test accuracy and, per party, the bytes on
# the wire against dense fp32.
#
# Knobs (environment): EPOCHS (2), TRAIN_LIMIT (0 = all 60000), TEST_LIMIT (0 = all 10000),
# JOIN (sum: each party's cnn bottom makes a full 32x14x14 cut layer and the server runs the cnn's
# top on their sum; concat: each party's cnn up to its 128-unit layer, the server an mlp head on
# the 256 joined units),
# BATCH (64), ACT_COMPRESSION (gaussiank+), ACT_DENSITY (0.11), ACT_PRECISION (int4),
# GRAD_COMPRESSION (gaussiank+), GRAD_DENSITY (0.25), GRAD_PRECISION (int4), PORT (50051),
# SKIP_BUILD (0), RUN_DIR (runs/vertical-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCHS="${EPOCHS:-2}"
TEST_LIMIT="${TEST_LIMIT:-0}"
JOIN="${JOIN:-sum}"
BATCH="${BATCH:-64}"
source demos/lib.sh  # the link knobs, PORT, SKIP_BUILD, TRAIN_LIMIT, BIN; build, certificates
RUN_DIR="${RUN_DIR:-runs/vertical-$(date +%Y%m%d-%H%M%S)}"
NAMES=(radiology lab)
PARTS=(left right)
case "$JOIN" in
  sum) server_model=(--model cnn --cut 1) ;;
  # concat: each party runs the cnn up to its 128-unit dense layer (--cut 3), the server an mlp
  # head over the 256 joined units (its --input-shape is unused: it runs only the top).
  concat) server_model=(--model mlp --input-shape 784 --hidden 256 128 --cut 1) ;;
  *) echo "JOIN must be sum or concat" >&2; exit 2 ;;
esac

demo_build
mkdir -p "$RUN_DIR"

echo "== certificates (one CA, a server, ${NAMES[*]}) in $RUN_DIR/pki"
demo_provision "$RUN_DIR" "${NAMES[@]}"

echo "== server on 127.0.0.1:$PORT: vertical, 2 parties, join ${JOIN}, the lab holds the labels"
"$BIN/cleave-server" --listen "127.0.0.1:$PORT" \
  --ca "$RUN_DIR/pki/ca.crt" --cert "$RUN_DIR/pki/server.crt" --key "$RUN_DIR/pki/server.key" \
  --clients "$RUN_DIR/allowlist.txt" "${server_model[@]}" \
  --config vertical --parties 2 --join "$JOIN" --label-holder 1 "${link_flags[@]}" \
  >"$RUN_DIR/server.out" 2>"$RUN_DIR/server.log" &
server_pid=$!

for i in 0 1; do
  name="${NAMES[$i]}"
  if [ "$JOIN" = sum ]; then
    party_model=(--model cnn --cut 1)
  else
    party_model=(--model cnn --cut 3)
  fi
  demo_tls "$RUN_DIR" "$name"
  "$BIN/cleave-client" --server "localhost:$PORT" "${tls[@]}" "${party_model[@]}" --config vertical --party "$i" --image-part "${PARTS[$i]}" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --train-limit "$TRAIN_LIMIT" \
    --test-limit "$TEST_LIMIT" --seed $((i + 1)) --progress lines \
    --metrics-out "$RUN_DIR/$name.json" >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.log" &
  pids[$i]=$!
done
echo "== radiology (left halves) and lab (right halves) training ${EPOCHS} epoch(s)" \
  "(progress: $RUN_DIR/<name>.out)"

status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
kill -TERM "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
trap - EXIT
[ "$status" -eq 0 ] || { echo "a party failed; see the logs in $RUN_DIR" >&2; exit 1; }

echo
echo "== results (metrics JSON and logs in $RUN_DIR)"
# Dense fp32 per training sample: the cut layer up and its gradient down, 4 bytes a value.
if [ "$JOIN" = sum ]; then dense=50176; else dense=1024; fi
for i in 0 1; do
  name="${NAMES[$i]}"
  m="$RUN_DIR/$name.json"
  awk -v name="$name" -v part="${PARTS[$i]}" -v dense="$dense" -v holds="$(field "$m" holds_labels)" \
      -v acc="$(field "$m" test_accuracy)" -v samples="$(field "$m" samples)" \
      -v sent="$(field "$m" train_bytes_sent)" -v received="$(field "$m" train_bytes_received)" \
      -v dcor="$(field "$m" test_dcor)" 'BEGIN {
    if (holds == "true")
      printf "%10s (%s halves, holds the labels): test accuracy %.2f%%\n", name, part, 100 * acc
    else
      printf "%10s (%s halves, no labels): sent no label, learned no loss or accuracy\n", name, part
    per = (sent + received) / samples
    printf "%10s  trained %d samples: sent %.1f MB, received %.1f MB (%.0f bytes per training sample on the wire, %.1fx fewer than dense fp32); test dCor %.3f\n", "", samples, sent / 1e6, received / 1e6, per, dense / per, dcor
  }'
done
echo "dense fp32 sends $dense bytes per training sample (each party's cut layer up, its gradient down)"
