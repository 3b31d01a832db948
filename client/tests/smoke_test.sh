#!/usr/bin/env bash
# The binaries together, as a user runs them: cleave-provision makes a PKI; cleave-server serves
# with a checkpoint and Prometheus metrics (both ports picked by the system); cleave-client trains
# on a small CSV written here, writes its metrics and checkpoint; /metrics shows the steps; SIGTERM
# writes the server's checkpoint and a restarted server resumes at the same step; a client that
# does not trust the server's CA, and a client with another model, end with exit code 3.
# Bounded in time, no fixed ports; every process it starts is stopped on exit.
set -uo pipefail
server="$1"; client="$2"; provision="$3"
source "$(dirname "$0")/../../test_support/shell/test_lib.sh"
mode() { stat -c %a "$1"; }

# GET /metrics with bash's /dev/tcp (curl may be missing).
scrape() {
  local port="$1"
  exec 5<>"/dev/tcp/127.0.0.1/$port" || fail "cannot connect to the metrics port $port"
  printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&5
  timeout 10 cat <&5
  exec 5<&-
}

make_pki "$provision" st-mary
"$provision" --out "$dir/foreign" --client st-mary >/dev/null || fail "provision (foreign CA)"
model=(--model mlp --input-shape 4 --classes 2 --cut 1 --hidden 16 8)

write_linear_csv "$dir/data.csv"

start_server first "${model[@]}" --checkpoint "$dir/server.ckpt" --metrics-listen 127.0.0.1:0
metrics_port="$(sed -nE 's/.*Prometheus metrics at .*\(port ([0-9]+)\).*/\1/p' "$dir/first.log")"
[ -n "$metrics_port" ] && [ "$metrics_port" != 0 ] || fail "no metrics port in the server's log"

# A client trains 2 epochs of 5 steps of 32 samples.
timeout 40 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" "${model[@]}" --dataset csv \
  --csv "$dir/data.csv" --epochs 2 --batch-size 32 --max-steps-per-epoch 5 --progress none \
  --metrics-out "$dir/run.json" --checkpoint "$dir/client.ckpt" >"$dir/client.out" \
  2>"$dir/client.log"
code=$?
[ "$code" = 0 ] || fail "cleave-client exited $code"
grep -q "test accuracy" "$dir/client.out" || fail "the client printed no test accuracy"
[ -s "$dir/run.json" ] || fail "--metrics-out wrote nothing"
grep -qE '"samples": 320,' "$dir/run.json" || fail "--metrics-out: samples is not 320: $(cat "$dir/run.json")"
grep -qE '"client_name": "st-mary"' "$dir/run.json" || fail "--metrics-out: no client name"
grep -qE '"test_accuracy": (0\.[0-9]+|1(\.0+)?)' "$dir/run.json" || fail "--metrics-out: no test accuracy"
[ -s "$dir/client.ckpt" ] || fail "--checkpoint wrote nothing"
[ "$(mode "$dir/client.ckpt")" = 600 ] || fail "the client checkpoint is mode $(mode "$dir/client.ckpt")"

# The server's observer is wired to the exporter: its steps show on /metrics.
metrics="$(scrape "$metrics_port")"
grep -qx 'cleave_steps_total 10' <<<"$metrics" || fail "/metrics: steps are not 10: $metrics"
grep -qx 'cleave_samples_total 320' <<<"$metrics" || fail "/metrics: samples are not 320"

# A server whose certificate comes from another CA (an impostor) is refused by the client:
# exit 3 and a line saying so (gRPC's own handshake lines come before it). (The e2e tests check the same against a server that would accept it.)
F="$dir/foreign"
"$server" --listen 127.0.0.1:0 --ca "$F/ca.crt" --cert "$F/server.crt" --key "$F/server.key" \
  "${model[@]}" >"$dir/impostor.out" 2>"$dir/impostor.log" &
impostor_pid=$!
pids+=("$impostor_pid")
saved_port="$port"
wait_listening "$dir/impostor.out" "$impostor_pid" 20
impostor_port="$port"
port="$saved_port"
timeout 20 "$client" --server "127.0.0.1:$impostor_port" "${tls_client[@]}" "${model[@]}" \
  --dataset csv --csv "$dir/data.csv" --connect-timeout 2 --progress none >"$dir/foreign.out" \
  2>"$dir/foreign.log"
code=$?
[ "$code" = 3 ] || fail "a client facing a server from another CA exited $code, not 3"
grep -q "cleave-client: error: cannot reach cleave-server" "$dir/foreign.log" ||
  fail "the refused client did not say why: $(cat "$dir/foreign.log")"
grep -q "joined" "$dir/impostor.log" && fail "the impostor server took a session"
kill -TERM "$impostor_pid"
wait "$impostor_pid" || fail "the impostor server did not exit 0 on SIGTERM"

# A client with another model is refused by the server: exit 3, naming the fingerprints.
timeout 20 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" --model mlp --input-shape 4 \
  --classes 2 --cut 1 --hidden 32 8 --dataset csv --csv "$dir/data.csv" --progress none \
  >"$dir/mismatch.out" 2>"$dir/mismatch.log"
code=$?
[ "$code" = 3 ] || fail "a client with another model exited $code, not 3"
grep -q "fingerprint" "$dir/mismatch.log" || fail "the mismatch was not named: $(cat "$dir/mismatch.log")"
grep -qx 'cleave_steps_total 10' <<<"$(scrape "$metrics_port")" || fail "refused clients trained"

# SIGTERM: the server writes its checkpoint and exits 0.
kill -TERM "$server_pid"
wait "$server_pid"
code=$?
[ "$code" = 0 ] || fail "cleave-server exited $code on SIGTERM"
[ -s "$dir/server.ckpt" ] || fail "no server checkpoint after SIGTERM"
[ "$(mode "$dir/server.ckpt")" = 600 ] || fail "the server checkpoint is mode $(mode "$dir/server.ckpt")"

# Restarted with --resume, it goes on from step 10.
start_server second "${model[@]}" --checkpoint "$dir/server.ckpt" --resume --require-checkpoint
grep -qF "resumed from checkpoint '$dir/server.ckpt' at step 10" "$dir/second.log" ||
  fail "the restarted server did not resume at step 10: $(cat "$dir/second.log")"
kill -TERM "$server_pid"
wait "$server_pid" || fail "the resumed server did not exit 0 on SIGTERM"
echo "smoke_test: ok"
