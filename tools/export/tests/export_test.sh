#!/usr/bin/env bash
# Bring your own model, end to end: cleave_export.py cuts a small ResNet-style model (conv stem,
# one residual block with batch-norm and dropout, not an nn.Sequential) into bottom.pt / top.pt;
# cleave-server --top and cleave-client --bottom train it over loopback mutual TLS, write the
# trained halves back as TorchScript, and a second run from the saved halves evaluates to the same
# test loss and accuracy as the in-memory models did. Then the refusals: traced dropout, frozen,
# a shape the metadata does not promise, data of another shape, a top given as the bottom, a
# model the exporter cannot cut, and halves of two exports (refused at Join, exit 3).
# Skips (exit 77) when no python3 with PyTorch is found (scripts/setup.sh installs python3-torch).
set -uo pipefail
server="$1"; client="$2"; provision="$3"; export_py="$4"
here="$(cd "$(dirname "$0")" && pwd)"

source "$(dirname "$0")/../../../test_support/shell/test_lib.sh"
need_torch_python export_test
# expect_refusal CODE PATTERN LOG: the command after it exits CODE with one error line matching.
expect_refusal() {
  local want="$1" pattern="$2" log="$3"; shift 3
  timeout 60 "$@" >"$dir/$log.out" 2>"$dir/$log.log"
  local code=$?
  [ "$code" = "$want" ] || fail "$log: exited $code, not $want"
  grep -qE -- "$pattern" "$dir/$log.log" || fail "$log: no '$pattern' in: $(cat "$dir/$log.log")"
  [ "$want" = 3 ] || [ "$(grep -c . "$dir/$log.log")" = 1 ] ||
    fail "$log: not one line: $(cat "$dir/$log.log")"
}

make_pki "$provision" st-mary

# 400 rows of 64 features (an 8x8 image to the model), two classes from a fixed rule.
awk 'BEGIN { srand(11); for (j = 0; j < 64; j++) printf "f%d,", j; print "label";
  for (i = 0; i < 400; i++) { s = 0; for (j = 0; j < 64; j++) { v = rand(); s += (j < 8) * v;
    printf "%.4f,", v } printf "%d\n", (s > 4) } }' >"$dir/data.csv"
data=(--dataset csv --csv "$dir/data.csv" --progress none)

"$python" "$export_py" --help >"$dir/help.out" 2>&1 || fail "cleave_export.py --help failed"
for flag in --model --kwargs --cut --input-shape --classes --out-dir --split-id --tolerance; do
  grep -q -- "$flag" "$dir/help.out" || fail "cleave_export.py --help does not document $flag"
done
"$python" "$export_py" --model "$here/small_resnet.py:SmallResNet" \
  --kwargs '{"image": 8, "classes": 2}' --input-shape 64 --cut stem --out-dir "$dir/halves" \
  >"$dir/export.out" 2>"$dir/export.log" || fail "cleave_export.py: $(cat "$dir/export.log")"
grep -q "top(bottom(x)) matches the model" "$dir/export.out" || fail "export: $(cat "$dir/export.out")"

# An nn.Sequential instance, cut after its second child.
"$python" "$export_py" --model "$here/small_resnet.py:MLP" --input-shape 64 --cut 2 \
  --out-dir "$dir/mlp" >"$dir/export_mlp.out" 2>"$dir/export_mlp.log" ||
  fail "cleave_export.py (nn.Sequential): $(cat "$dir/export_mlp.log")"
grep -q "cut 32 -> 2 classes" "$dir/export_mlp.out" || fail "export: $(cat "$dir/export_mlp.out")"

START_SECONDS=30  # loading TorchScript halves takes longer than the built-in models
stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || fail "cleave-server did not exit 0 on SIGTERM"
}
# test_figures OUT: "accuracy loss" from a client's result line.
test_figures() { sed -nE 's/^test accuracy ([0-9.]+)%  test loss ([0-9.]+).*/\1 \2/p' "$1"; }

start_server first --top "$dir/halves/top.pt" --save-top "$dir/trained_top.pt" \
  --checkpoint "$dir/server.ckpt"
timeout 120 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" "${data[@]}" \
  --bottom "$dir/halves/bottom.pt" --save-bottom "$dir/trained_bottom.pt" \
  --checkpoint "$dir/client.ckpt" --epochs 2 --batch-size 32 --max-steps-per-epoch 5 \
  >"$dir/train.out" 2>"$dir/train.log" || fail "cleave-client (training) exited $?"
trained="$(test_figures "$dir/train.out")"
[ -n "$trained" ] || fail "no test figures: $(cat "$dir/train.out")"
grep -q "model torchscript split=" "$dir/train.log" || fail "the client did not join with the halves"
stop_server
for f in trained_bottom.pt trained_top.pt server.ckpt client.ckpt; do
  [ -s "$dir/$f" ] || fail "$f was not written"
done

# The saved halves are TorchScript with their metadata, trained (weights and batch-norm
# statistics moved), and still compose into a working model in Python.
"$python" - "$dir" >"$dir/check.log" 2>&1 <<'PY' || fail "saved halves: $(cat "$dir/check.log")"
import json, sys, torch
d = sys.argv[1]
for half in ("bottom", "top"):
    files = {"cleave.json": ""}
    saved = torch.jit.load(f"{d}/trained_{half}.pt", _extra_files=files)
    exported = torch.jit.load(f"{d}/halves/{half}.pt")
    assert json.loads(files["cleave.json"])["half"] == half, files
    changed = [n for (n, a), (_, b) in zip(saved.named_parameters(), exported.named_parameters())
               if not torch.equal(a, b)]
    assert changed, f"{half}: no parameter changed in training"
    if half == "top":
        steps = int(saved.block.bn1.num_batches_tracked)
        assert steps == 10, f"batch-norm saw {steps} training batches, not 10"
bottom = torch.jit.load(f"{d}/trained_bottom.pt").eval()
top = torch.jit.load(f"{d}/trained_top.pt").eval()
out = top(bottom(torch.rand(3, 64)))
assert out.shape == (3, 2) and torch.isfinite(out).all(), out
PY

# Reloaded in C++, the saved halves give what the in-memory ones gave: the same test figures.
start_server reload --top "$dir/trained_top.pt"
timeout 60 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" "${data[@]}" \
  --bottom "$dir/trained_bottom.pt" --epochs 0 >"$dir/reload.out" 2>"$dir/reload.log" ||
  fail "cleave-client (reloaded halves) exited $?"
reloaded="$(test_figures "$dir/reload.out")"
[ "$reloaded" = "$trained" ] || fail "reloaded halves give '$reloaded', in memory '$trained'"

# Halves of another export of the same model: refused at Join, naming the fingerprints.
"$python" "$export_py" --model "$here/small_resnet.py:SmallResNet" \
  --kwargs '{"image": 8, "classes": 2}' --input-shape 64 --cut stem --out-dir "$dir/other" \
  --split-id other-export >/dev/null 2>&1 || fail "second export"
expect_refusal 3 "fingerprint" other_export "$client" --server "127.0.0.1:$port" \
  "${tls_client[@]}" "${data[@]}" --bottom "$dir/other/bottom.pt"
stop_server

# Refused before connecting (the address is never dialled): one line, exit 2.
"$python" "$here/bad_halves.py" "$dir" 2>"$dir/bad.log" || fail "bad_halves.py: $(cat "$dir/bad.log")"
nowhere=(--server 127.0.0.1:9 "${tls_client[@]}" "${data[@]}")
expect_refusal 2 "traced \(torch.jit.trace\)" traced "$client" "${nowhere[@]}" --bottom "$dir/traced.pt"
expect_refusal 2 "no parameters to train" frozen "$client" "${nowhere[@]}" --bottom "$dir/frozen.pt"
expect_refusal 2 "maps 1x64 to 1x16, but its metadata says 1x8" wide "$client" "${nowhere[@]}" \
  --bottom "$dir/wide.pt"
expect_refusal 2 "samples have shape 64 but .*narrow.pt' takes 32" narrow "$client" \
  "${nowhere[@]}" --bottom "$dir/narrow.pt"
expect_refusal 2 "is the bottom half of a split, not the top" server_bottom "$server" \
  --listen 127.0.0.1:0 "${tls_server[@]}" --top "$dir/halves/bottom.pt"
expect_refusal 2 "excludes|--model" zoo_and_script "$client" "${nowhere[@]}" \
  --bottom "$dir/halves/bottom.pt" --model mlp
expect_refusal 2 "cleave_export.py: error: top\(bottom\(x\)\) differs from the model" flatten \
  "$python" "$export_py" --model "$here/small_resnet.py:FlattensInForward" --input-shape 1x28x28 \
  --cut block --out-dir "$dir/never"
echo "export_test: ok (test accuracy %, loss in memory and reloaded: $trained)"
