#!/usr/bin/env bash
# The vertical configuration through the binaries: two parties hold columns a,b and c,d of the
# same CSV rows and train one model; the label holder prints the test accuracy, the other says it
# has none. A party left alone gets DEADLINE_EXCEEDED after --party-timeout-ms (exit 3, one
# line) and the server serves on. Misconfigurations are one-line errors. Bounded in time, no fixed
# ports; every process it starts is stopped on exit.
set -uo pipefail
server="$1"; client="$2"; provision="$3"
source "$(dirname "$0")/../../test_support/shell/test_lib.sh"

make_pki "$provision" radiology lab
write_linear_csv "$dir/data.csv"
# Each party: an mlp over its 2 columns, 8 cut units; the server: a top over the 16 joined.
top=(--model mlp --input-shape 4 --classes 2 --cut 1 --hidden 16 8)
party=(--model mlp --input-shape 2 --classes 2 --cut 1 --hidden 8 8 --dataset csv
       --csv "$dir/data.csv" --batch-size 16 --progress none --config vertical --log-level error)

# run_party NAME INDEX COLUMNS ARGS...: a party in the background; sets $party_pid.
run_party() {
  local name="$1" index="$2" columns="$3"; shift 3
  "$client" --server "127.0.0.1:$port" --ca "$P/ca.crt" --cert "$P/clients/$name.crt" \
    --key "$P/clients/$name.key" "${party[@]}" --party "$index" --columns "$columns" "$@" \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  party_pid=$!
  pids+=("$party_pid")
}

start_server server "${top[@]}" --config vertical --parties 2 --join concat --label-holder 1 \
  --party-timeout-ms 20000
run_party radiology 0 0:2 --epochs 15 --metrics-out "$dir/radiology.json"; radiology=$party_pid
run_party lab 1 2:4 --epochs 15 --metrics-out "$dir/lab.json"; lab=$party_pid
wait_exit "$radiology" 60 || fail "radiology exited $?"
wait_exit "$lab" 60 || fail "lab exited $?"
grep -q "test accuracy: known to the label holder only" "$dir/radiology.out" ||
  fail "radiology: $(cat "$dir/radiology.out")"
accuracy="$(sed -nE 's/^test accuracy ([0-9.]+)%.*/\1/p' "$dir/lab.out")"
[ -n "$accuracy" ] || fail "lab printed no accuracy: $(cat "$dir/lab.out")"
awk -v a="$accuracy" 'BEGIN { exit !(a > 80) }' || fail "lab's test accuracy is only $accuracy%"
grep -q '"holds_labels": false' "$dir/radiology.json" || fail "radiology.json"
grep -q '"config": "vertical"' "$dir/lab.json" || fail "lab.json"
grep -q "'lab' is party 1 of 2 (cut layer 8, holds the labels)" "$dir/server.log" ||
  fail "the server did not log the parties"

# A party alone: its first step fails after the timeout with a clear line, the server lives on.
start_server alone "${top[@]}" --config vertical --parties 2 --party-timeout-ms 300
expect_error 3 "DEADLINE_EXCEEDED" "$client" --server "127.0.0.1:$port" --ca "$P/ca.crt" \
  --cert "$P/clients/radiology.crt" --key "$P/clients/radiology.key" "${party[@]}" --party 0 \
  --columns 0:2
grep -q "step 0: party 1 sent nothing within 300 ms" "$dir/err" || fail "$(cat "$dir/err")"
kill -0 "$server_pid" || fail "the server died with the step"

# One-line errors: a vanilla client at a vertical server, rounds with vertical, parts without it.
expect_error 3 "fingerprint" "$client" --server "127.0.0.1:$port" "${tls_client[@]}" \
  --model mlp --input-shape 4 --classes 2 --cut 1 --hidden 16 8 --dataset csv \
  --csv "$dir/data.csv" --progress none
expect_error 2 "single schedule only" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" \
  "${top[@]}" --config vertical --schedule splitfed
expect_error 2 "need --config vertical" "$client" "${tls_client[@]}" --model mlp --input-shape 2 \
  --classes 2 --cut 1 --dataset csv --csv "$dir/data.csv" --columns 0:2
echo "vertical_cli_test: ok"
