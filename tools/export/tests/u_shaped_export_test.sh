#!/usr/bin/env bash
# U-shaped split learning with a model brought from Python: cleave_export.py --tail-layers 1 cuts
# a small ResNet-style model (conv stem | residual block with batch-norm and dropout, pooling,
# flatten | linear head) into bottom.pt, top.pt (the server's middle) and tail.pt; cleave-server
# --config u-shaped --top runs the middle, cleave-client --config u-shaped --bottom --tail runs
# the rest and keeps its labels, over loopback mutual TLS. The test loss after a few steps is
# well below the untrained parts' loss, and the trained tail is written back as TorchScript. Then
# the refusals: parts of a two-part export in u-shaped, a three-part export in vanilla, --bottom
# without --tail, --tail-layers beside the parts, an export that leaves the server no middle.
# Skips (exit 77) when no python3 with PyTorch is found (scripts/setup.sh installs python3-torch).
set -uo pipefail
server="$1"; client="$2"; provision="$3"; export_py="$4"
here="$(cd "$(dirname "$0")" && pwd)"

source "$(dirname "$0")/../../../test_support/shell/test_lib.sh"
need_torch_python u_shaped_export_test
make_pki "$provision" st-mary

# 400 rows of 64 features (an 8x8 image to the model), two classes from a fixed rule.
awk 'BEGIN { srand(11); for (j = 0; j < 64; j++) printf "f%d,", j; print "label";
  for (i = 0; i < 400; i++) { s = 0; for (j = 0; j < 64; j++) { v = rand(); s += (j < 8) * v;
    printf "%.4f,", v } printf "%d\n", (s > 4) } }' >"$dir/data.csv"
data=(--dataset csv --csv "$dir/data.csv" --progress none)
model=(--model "$here/small_resnet.py:SmallResNet" --kwargs '{"image": 8, "classes": 2}'
       --input-shape 64 --cut stem)

"$python" "$export_py" --help 2>&1 | grep -q -- "--tail-layers" ||
  fail "cleave_export.py --help does not document --tail-layers"
"$python" "$export_py" "${model[@]}" --tail-layers 1 --out-dir "$dir/parts" \
  >"$dir/export.out" 2>"$dir/export.log" || fail "cleave_export.py: $(cat "$dir/export.log")"
grep -q "cut 8x4x4 -> middle 32 -> 2 classes" "$dir/export.out" || fail "export: $(cat "$dir/export.out")"
grep -q "tail(top(bottom(x))) matches the model" "$dir/export.out" || fail "export: $(cat "$dir/export.out")"
"$python" "$export_py" "${model[@]}" --out-dir "$dir/halves" >/dev/null 2>&1 || fail "two-part export"

START_SECONDS=30  # loading TorchScript parts takes longer than the built-in models
u=(--config u-shaped)
start_server middle "${u[@]}" --top "$dir/parts/top.pt" --lr 0.05
connect=(--server "127.0.0.1:$port" "${tls_client[@]}" "${data[@]}" "${u[@]}"
         --bottom "$dir/parts/bottom.pt" --tail "$dir/parts/tail.pt")
# test_loss OUT: the test loss on a client's result line.
test_loss() { sed -nE 's/^test accuracy [0-9.]+%  test loss ([0-9.]+).*/\1/p' "$1"; }

timeout 60 "$client" "${connect[@]}" --epochs 0 >"$dir/untrained.out" 2>"$dir/untrained.log" ||
  fail "cleave-client (untrained) exited $?"
timeout 120 "$client" "${connect[@]}" --epochs 3 --batch-size 32 --max-steps-per-epoch 8 \
  --lr 0.01 --save-tail "$dir/trained_tail.pt" >"$dir/train.out" 2>"$dir/train.log" ||
  fail "cleave-client (training) exited $?"
before="$(test_loss "$dir/untrained.out")"; after="$(test_loss "$dir/train.out")"
[ -n "$before" ] && [ -n "$after" ] || fail "no test loss: $(cat "$dir/untrained.out" "$dir/train.out")"
awk -v b="$before" -v a="$after" 'BEGIN { exit !(a < 0.8 * b) }' ||
  fail "the test loss did not fall: $before untrained, $after after 24 U-shaped steps"
grep -q "u-shaped tail=1 middle_shape=32" "$dir/train.log" || fail "not joined as a U-shaped split"
grep -q "^u-shaped: activations up" "$dir/train.out" || fail "no U-shaped byte counts"
kill -TERM "$server_pid"; wait "$server_pid" || fail "cleave-server did not exit 0 on SIGTERM"

"$python" - "$dir" >"$dir/check.log" 2>&1 <<'PY' || fail "saved tail: $(cat "$dir/check.log")"
import json, sys, torch
d = sys.argv[1]
files = {"cleave.json": ""}
saved = torch.jit.load(f"{d}/trained_tail.pt", _extra_files=files)
meta = json.loads(files["cleave.json"])
assert meta["half"] == "tail" and meta["middle_shape"] == [32] and meta["tail_layers"] == 1, meta
exported = torch.jit.load(f"{d}/parts/tail.pt")
assert not torch.equal(saved.head.weight, exported.head.weight), "the tail did not train"
PY

# Refused before connecting (the address is never dialled): one line, exit 2.
nowhere=(--server 127.0.0.1:9 "${tls_client[@]}" "${data[@]}")
expect_error 2 "export without a tail" "$client" "${nowhere[@]}" "${u[@]}" \
  --bottom "$dir/halves/bottom.pt"
expect_error 2 "--bottom and --tail go together" "$client" "${nowhere[@]}" "${u[@]}" \
  --bottom "$dir/parts/bottom.pt"
expect_error 2 "use --config u-shaped" "$client" "${nowhere[@]}" --bottom "$dir/parts/bottom.pt"
expect_error 2 "--tail needs --config u-shaped" "$client" "${nowhere[@]}" \
  --bottom "$dir/halves/bottom.pt" --tail "$dir/parts/tail.pt"
expect_error 2 "not parts of one export" "$client" "${nowhere[@]}" "${u[@]}" \
  --bottom "$dir/halves/bottom.pt" --tail "$dir/parts/tail.pt"
expect_error 2 "--tail-layers is the export's" "$client" "${nowhere[@]}" "${u[@]}" \
  --bottom "$dir/parts/bottom.pt" --tail "$dir/parts/tail.pt" --tail-layers 2
expect_error 2 "export without a tail" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" \
  "${u[@]}" --top "$dir/halves/top.pt"
expect_error 2 "leaves the server no middle" "$python" "$export_py" "${model[@]}" \
  --tail-layers 4 --out-dir "$dir/never"
echo "u_shaped_export_test: ok (test loss untrained $before, after 24 U-shaped steps $after)"
