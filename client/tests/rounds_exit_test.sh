#!/usr/bin/env bash
# A server with --rounds stops by itself: two hospitals train 3 splitfed rounds on a small CSV,
# evaluate and leave; the server then exits 0 without a signal, having written its checkpoint and
# its final metrics (--metrics-out), and both hospitals name round 3 as the last one. A second
# server, one of whose hospitals hangs without leaving, exits after --linger-after-rounds.
# Bounded in time, no fixed ports; every process it starts is stopped on exit.
set -uo pipefail
server="$1"; client="$2"; provision="$3"
source "$(dirname "$0")/../../test_support/shell/test_lib.sh"

make_pki "$provision" st-mary riverside
model=(--model mlp --input-shape 4 --classes 2 --cut 1 --hidden 16 8)
write_linear_csv "$dir/data.csv"

rounds=("${model[@]}" --schedule splitfed --round-samples 64)

# start_client NAME: a hospital on the CSV, in the background; sets $client_pid.
start_client() {
  "$client" --server "127.0.0.1:$port" --ca "$P/ca.crt" --cert "$P/clients/$1.crt" \
    --key "$P/clients/$1.key" "${model[@]}" --dataset csv --csv "$dir/data.csv" --batch-size 16 \
    --progress none >"$dir/$1.out" 2>"$dir/$1.log" &
  client_pid=$!
  pids+=("$client_pid")
}

start_server server "${rounds[@]}" --rounds 3 --min-clients 2 --checkpoint "$dir/server.ckpt" \
  --metrics-out "$dir/metrics.prom"
start_client st-mary; first=$client_pid
start_client riverside; second=$client_pid
wait_exit "$first" 60 || fail "st-mary exited $?"
wait_exit "$second" 60 || fail "riverside exited $?"
wait_exit "$server_pid" 20
code=$?
[ "$code" = 0 ] || fail "cleave-server exited $code after its rounds"
grep -q "training finished after 3 round(s) and every hospital has left" "$dir/server.log" ||
  fail "the server did not say why it stopped"
[ -s "$dir/server.ckpt" ] || fail "no final server checkpoint"
grep -qx 'cleave_rounds_total 3' "$dir/metrics.prom" || fail "--metrics-out: $(cat "$dir/metrics.prom")"
for name in st-mary riverside; do
  grep -q "training over after round 3 " "$dir/$name.log" ||
    fail "$name does not name round 3 as the last: $(grep 'training over' "$dir/$name.log")"
done

# A hospital that hangs (SIGSTOP: its connection stays, it never says goodbye) holds the server up
# for --linger-after-rounds only; the round itself closes at its deadline with the other's update.
start_server lingering "${rounds[@]}" --rounds 1 --min-clients 2 --round-deadline 2 --quorum 1 \
  --linger-after-rounds 1 --session-idle 0
start_client riverside; hung=$client_pid
wait_for "$dir/lingering.log" "client 'riverside' joined" 30 "$server_pid"
kill -STOP "$hung"
start_client st-mary
wait_exit "$client_pid" 60 || fail "st-mary exited $? next to a hung hospital"
wait_exit "$server_pid" 20
code=$?
[ "$code" = 0 ] || fail "cleave-server exited $code after its linger"
grep -q "1 session(s) still open 1 s after the last round" "$dir/lingering.log" ||
  fail "the lingering server did not say why it stopped"
echo "rounds_exit_test: ok"
