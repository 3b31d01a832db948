#!/usr/bin/env bash
# cleave-leakage at its edges: --help explains the numbers, bad flags and files give one line and
# exit code 2.
set -uo pipefail
bin="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_error TEXT ARGS...: wants exit 2 and one stderr line containing TEXT.
expect_error() {
  local text="$1"; shift
  "$bin" "$@" >"$dir/out" 2>"$dir/err"
  local got=$?
  [ "$got" = 2 ] || fail "'$*' exited $got, expected 2: $(cat "$dir/err")"
  grep -qF -- "$text" "$dir/err" || fail "'$*': stderr does not mention '$text': $(cat "$dir/err")"
  [ "$(grep -vc '^\s*$' "$dir/err")" = 1 ] || fail "'$*': error is not one line: $(cat "$dir/err")"
}

help="$("$bin" --help)" || fail "--help exited non-zero"
for topic in measure sweep labels AUC "baseline" "bias-corrected" SSIM PSNR "--threads"; do
  grep -qF -- "$topic" <<<"$help" || fail "--help does not mention '$topic'"
done
# (to files first: grep -q exits at its first match, a later write of the help then gets SIGPIPE,
# and pipefail counts it)
"$bin" measure --help >"$dir/measure-help" || fail "measure --help exited non-zero"
"$bin" sweep --help >"$dir/sweep-help" || fail "sweep --help exited non-zero"
grep -qF -- "--aux-samples" "$dir/measure-help" || fail "measure --help"
grep -qF -- "--alphas" "$dir/sweep-help" || fail "sweep --help"
grep -qF -- "--client-lr" "$dir/sweep-help" || fail "sweep --help"
for topic in --act-noise --strong-aux-samples --strong-width --seeds --client-optimizer; do
  grep -qF -- "$topic" "$dir/sweep-help" || fail "sweep --help does not mention '$topic'"
done
grep -qF -- "--act-noise" "$dir/measure-help" || fail "measure --help does not mention --act-noise"
"$bin" labels --help >"$dir/labels-help" || fail "labels --help exited non-zero"
for topic in --label-defence --label-defence-strength --tail-cut --positive-class --steps --replica; do
  grep -qF -- "$topic" "$dir/labels-help" || fail "labels --help does not mention '$topic'"
done

expect_error "subcommand" 
expect_error "--checkpoint" measure
expect_error "$dir/missing.ckpt" measure --checkpoint "$dir/missing.ckpt"
head -c 300 /dev/urandom >"$dir/bad.ckpt"
expect_error "$dir/bad.ckpt" measure --checkpoint "$dir/bad.ckpt"
expect_error "--method" measure --checkpoint "$dir/bad.ckpt" --method top-k
expect_error "--out" sweep
expect_error "--epochs" sweep --out "$dir/o" --epochs many
expect_error "$dir/no-data" sweep --out "$dir/o" --data-dir "$dir/no-data"
expect_error "--tail-cut" labels --tail-cut 1
expect_error "--label-defence" labels --label-defence dp
expect_error "--label-defence-strength" labels --label-defence noise --label-defence-strength 0
expect_error "--positive-class" labels --positive-class 12 --train-limit 10 --test-limit 10
expect_error "density" sweep --out "$dir/o" --densities 1.5 --data-dir "$dir/no-data"
expect_error "--act-noise" sweep --out "$dir/o" --act-noise -1
expect_error "--act-noise" measure --checkpoint "$dir/bad.ckpt" --act-noise -1
expect_error "--client-optimizer" sweep --out "$dir/o" --client-optimizer lbfgs
echo "leakage_cli_test: ok"
