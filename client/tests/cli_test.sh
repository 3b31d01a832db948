#!/usr/bin/env bash
# Bad input to the binaries: one clear line naming the file and exit code 2; a corrupt checkpoint
# is refused and kept; --help documents every flag; --insecure warns.
set -uo pipefail
server="$1"; client="$2"; provision="$3"
source "$(dirname "$0")/../../test_support/shell/test_lib.sh"
make_pki "$provision" st-mary

# Missing or unreadable files.
expect_error 2 "$dir/nope.crt" "$server" --listen 127.0.0.1:0 --ca "$P/ca.crt" --cert "$dir/nope.crt" --key "$P/server.key"
expect_error 2 "$dir/nope.key" "$server" --listen 127.0.0.1:0 --ca "$P/ca.crt" --cert "$P/server.crt" --key "$dir/nope.key"
expect_error 2 "$dir/nope-ca.crt" "$client" --ca "$dir/nope-ca.crt" --cert "$P/clients/st-mary.crt" --key "$P/clients/st-mary.key"
expect_error 2 "$P/clients/st-mary.crt" "$client" --ca "$P/ca.crt" --cert "$P/clients/st-mary.crt" --key "$P/server.key"
expect_error 2 "$dir/no-data" "$client" "${tls_client[@]}" --data-dir "$dir/no-data"
expect_error 2 "$dir/no.csv" "$client" "${tls_client[@]}" --dataset csv --csv "$dir/no.csv"
# CSV data: the label map, test columns by name, an empty test split, the delimiter.
printf 'a,b,label\n1,2,0\n3,4,1\n5,6,1\n' >"$dir/train.csv"
printf 'b,a,label\n2,1,0\n4,3,2\n' >"$dir/test.csv"
printf 'a,c,label\n1,2,0\n' >"$dir/renamed.csv"
printf 'a,b,label\n1,2,no\n3,4,yes\n' >"$dir/words.csv"
csv=("$client" "${tls_client[@]}" --dataset csv --model mlp --input-shape 2 --classes 2)
expect_error 2 "'$dir/test.csv' line 3: label '2' is not a class number in 0..1" "${csv[@]}" --csv "$dir/train.csv" --test-csv "$dir/test.csv"
expect_error 2 "missing 'b'; unexpected 'c'" "${csv[@]}" --csv "$dir/train.csv" --test-csv "$dir/renamed.csv"
expect_error 2 "--labels a,b,c" "${csv[@]}" --csv "$dir/words.csv"
expect_error 2 "not one of the class names 'yes', 'maybe'" "${csv[@]}" --csv "$dir/words.csv" --labels yes,maybe
expect_error 2 "--labels names 3 classes but --classes is 2" "${csv[@]}" --csv "$dir/words.csv" --labels no,yes,maybe
expect_error 2 "holds out no test rows" "${csv[@]}" --csv "$dir/train.csv" --test-fraction 0.1
expect_error 2 "--csv-delimiter must be one character" "${csv[@]}" --csv "$dir/train.csv" --csv-delimiter ';;'
expect_error 2 "has no column 'label'" "${csv[@]}" --csv "$dir/train.csv" --csv-delimiter tab
# Devices, augmentation and schedules: refused with one line before anything trains.
expect_error 2 "unknown device 'tpu'" "$client" "${tls_client[@]}" --device tpu
expect_error 2 "unknown device 'tpu'" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --device tpu
if ! command -v nvidia-smi >/dev/null 2>&1; then
  expect_error 2 "no CUDA device here" "$client" "${tls_client[@]}" --device cuda
  expect_error 2 "no CUDA device here" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --device cuda
fi
expect_error 2 "need image samples" "${csv[@]}" --csv "$dir/train.csv" --augment-flip
expect_error 2 "--lr-schedule cosine needs --lr-schedule-steps" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --lr-schedule cosine
# The model's input shape must be the data's sample shape (one line, not a LibTorch shape error).
# Shared feature statistics: --fit-stats needs no server (and warns of classes without samples);
# statistics whose columns are not the data's, or that are not statistics, are one line.
"$client" --dataset csv --model mlp --input-shape 2 --classes 3 --csv "$dir/train.csv" \
  --fit-stats "$dir/stats.json" >"$dir/out" 2>"$dir/err" || fail "--fit-stats: $(cat "$dir/err")"
grep -q "wrote the mean and std of 2 feature column(s) over 2 row(s)" "$dir/out" || fail "--fit-stats: $(cat "$dir/out")"
grep -q '"name": "b"' "$dir/stats.json" || fail "--fit-stats wrote $(cat "$dir/stats.json")"
grep -q -- "--classes is 3 but the training data of '$dir/train.csv' has samples of 2 class(es) only (none of class 2)" "$dir/err" ||
  fail "no warning about --classes 3: $(cat "$dir/err")"
printf 'a,c,label\n1,2,0\n3,4,1\n5,6,1\n' >"$dir/other.csv"
expect_error 2 "feature statistics '$dir/stats.json' do not match the columns of the data: no statistics for 'c'; statistics for columns it lacks 'b'" "${csv[@]}" --csv "$dir/other.csv" --stats "$dir/stats.json"
printf '{"format": "cleave-feature-stats", "version": 1, "rows": 2, "columns": [{"name": "a", "mean": 0, "std": -1}]}' >"$dir/bad.json"
expect_error 2 "feature statistics '$dir/bad.json': the std of 'a' is negative" "${csv[@]}" --csv "$dir/train.csv" --stats "$dir/bad.json"
expect_error 2 "--standardize shared needs --stats FILE" "${csv[@]}" --csv "$dir/train.csv" --standardize shared
expect_error 2 "$dir/none.json" "${csv[@]}" --csv "$dir/train.csv" --stats "$dir/none.json"
expect_error 2 "--fit-stats needs --csv FILE or --pool-stats" "$client" --fit-stats "$dir/s.json"
expect_error 2 "--stats and --standardize apply to --dataset csv only, not fashion-mnist" "$client" "${tls_client[@]}" --stats "$dir/stats.json"
expect_error 2 "--stats and --standardize apply to --dataset csv only, not images" "$client" "${tls_client[@]}" --dataset images --images "$dir" --standardize none
expect_error 2 "the data's samples have shape 2 but --input-shape is 3" "$client" "${tls_client[@]}" --dataset csv --model mlp --input-shape 3 --classes 2 --csv "$dir/train.csv"
expect_error 2 "$dir/missing.ckpt" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --checkpoint "$dir/missing.ckpt" --resume --require-checkpoint
expect_error 2 "--epochs" "$client" "${tls_client[@]}" --epochs many
# Round settings.
expect_error 2 "unknown schedule 'gossip'" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --schedule gossip
expect_error 2 "--quorum must be >= 1" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --schedule splitfed --quorum 0
expect_error 2 "--round-deadline must be >= 0" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --schedule splitfed --round-deadline -1
expect_error 2 "unknown update compression method" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --update-compression zip
expect_error 2 "--max-threads" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --max-threads 1
expect_error 2 "--max-calls-per-client" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --max-calls-per-client 0
# Checked once the model is built (its log line comes first): exit 2, the reason last.
"$server" --listen 127.0.0.1:0 "${tls_server[@]}" --max-client-request-mb 8 >/dev/null 2>"$dir/err"
got=$?
[ "$got" = 2 ] || fail "--max-client-request-mb 8 exited $got, expected 2: $(cat "$dir/err")"
tail -n 1 "$dir/err" | grep -qF -- "--max-client-request-mb must be at least --max-message-mb" ||
  fail "--max-client-request-mb 8: $(cat "$dir/err")"
expect_error 2 "cannot serve metrics on 'nowhere:99999'" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --metrics-listen nowhere:99999
expect_error 2 "$dir/no-dir/metrics.prom" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --metrics-out "$dir/no-dir/metrics.prom"

# A corrupt checkpoint is refused with a clear message and left in place.
head -c 300 /dev/urandom >"$dir/bad.ckpt"
before="$(md5sum <"$dir/bad.ckpt")"
expect_error 2 "checkpoint '$dir/bad.ckpt' is corrupt" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --checkpoint "$dir/bad.ckpt" --resume
[ "$before" = "$(md5sum <"$dir/bad.ckpt")" ] || fail "corrupt checkpoint was modified"

# Split configurations: a tail needs u-shaped, and a middle block; a vanilla hospital is refused
# by a u-shaped server (exit 3, naming it); a u-shaped one (with the label defence on) trains and
# reports all four directions.
expect_error 2 "--tail-layers needs --config u-shaped" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --tail-layers 2
expect_error 2 "--middle-gradient-timeout must be > 0" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --config u-shaped --middle-gradient-timeout 0
expect_error 2 "leaves the server no middle block" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --config u-shaped --cut 3
# The label defence: the sender holding the labels applies it, so cleave-client takes it in
# u-shaped only and cleave-server in vertical only; a bad strength is one line.
expect_error 2 "--label-defence on the server needs --config vertical" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --label-defence clip
expect_error 2 "--label-defence on the server needs --config vertical" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --config u-shaped --label-defence noise
expect_error 2 "--label-defence-strength must be finite and > 0, got 0" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" --config vertical --label-defence clip --label-defence-strength 0
expect_error 2 "--label-defence needs --config u-shaped on the client" "$client" "${tls_client[@]}" --label-defence noise
expect_error 2 "--label-defence needs --config u-shaped on the client" "$client" "${tls_client[@]}" --config vertical --label-defence clip
expect_error 2 "--label-defence-strength must be finite and > 0, got -1" "$client" "${tls_client[@]}" --config u-shaped --label-defence clip --label-defence-strength -1
expect_error 2 "--label-defence" "$client" "${tls_client[@]}" --config u-shaped --label-defence blur
write_linear_csv "$dir/linear.csv"
ushaped=(--model mlp --input-shape 4 --classes 2 --config u-shaped)
start_server ushaped "${ushaped[@]}"
timeout 40 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" --model mlp --input-shape 4 \
  --classes 2 --dataset csv --csv "$dir/linear.csv" >"$dir/out" 2>"$dir/err"
got=$?
[ "$got" = 3 ] || fail "vanilla client on a u-shaped server exited $got, expected 3: $(cat "$dir/err")"
grep -q "u-shaped tail=1" "$dir/err" || fail "vanilla client on a u-shaped server: $(cat "$dir/err")"
timeout 60 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" "${ushaped[@]}" --dataset csv \
  --csv "$dir/linear.csv" --epochs 2 --metrics-out "$dir/u-shaped.json" \
  --label-defence noise --label-defence-strength 0.5 >"$dir/out" 2>"$dir/err" ||
  fail "u-shaped client: $(cat "$dir/err")"
grep -q "^u-shaped: activations up .* middle output down .* middle gradient up .* cut gradient down" \
  "$dir/out" || fail "u-shaped client printed no four directions: $(cat "$dir/out")"
grep -q '"config": "u-shaped"' "$dir/u-shaped.json" || fail "metrics: $(cat "$dir/u-shaped.json")"
kill -TERM "$server_pid"; wait "$server_pid" || fail "u-shaped server did not exit 0 on SIGTERM"

# --help documents the flags; --insecure warns.
# (to files first: grep -q stops reading early, and pipefail would count the SIGPIPE)
"$server" --help >"$dir/server-help" || fail "server --help exited non-zero"
"$client" --help >"$dir/client-help" || fail "client --help exited non-zero"
for flag in --checkpoint-every --schedule --rounds --round-samples --round-deadline --quorum \
            --min-clients --max-staleness --update-compression --metrics-listen --max-threads \
            --max-streams-per-connection --max-calls-per-client --max-client-request-mb \
            --max-large-requests-mb --linger-after-rounds --metrics-out --config --tail-layers \
            --middle-gradient-timeout --label-defence --label-defence-strength; do
  grep -qE -- "^ +$flag " "$dir/server-help" || fail "server --help does not explain $flag"
done
for flag in --metrics-out --csv --test-csv --label-column --labels --csv-delimiter --test-fraction \
            --input-shape --classes --standardize --stats --fit-stats --pool-stats --config \
            --tail-layers --label-defence --label-defence-strength; do
  grep -qE -- "^ +$flag " "$dir/client-help" || fail "client --help does not explain $flag"
done
"$server" --listen 127.0.0.1:0 --insecure >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on port" "$dir/out" && break; sleep 0.1; done
grep -q "listening on port" "$dir/out" || fail "insecure server did not start: $(cat "$dir/err")"
# A second server on the same port fails (no SO_REUSEPORT sharing) with exit 2.
port="$(grep -o "listening on port [0-9]*" "$dir/out" | awk '{print $4}')"
"$server" --listen "127.0.0.1:$port" "${tls_server[@]}" >/dev/null 2>"$dir/err2"
got=$?
[ "$got" = 2 ] || fail "second server on port $port exited $got, expected 2: $(cat "$dir/err2")"
tail -n 1 "$dir/err2" | grep -qF "address in use" || fail "second server: $(cat "$dir/err2")"
kill -TERM "$pid"; wait "$pid" || fail "server did not exit 0 on SIGTERM"
grep -q "insecure" "$dir/err" || fail "--insecure printed no warning"
echo "cli_test: ok"
