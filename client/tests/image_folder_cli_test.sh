#!/usr/bin/env bash
# --dataset images as a user runs it: cleave-image-folder writes small class folders (grey PNG and
# JPEG at 20x24, RGB JPEG at 16x16); every bad folder or flag is one line and exit 2; a client
# trains a cnn on them over loopback mTLS (resized to 16x16, converted to RGB) with a test folder
# and with a seeded --test-fraction, and learns the classes. A few seconds; no fixed ports.
set -uo pipefail
server="$1"; client="$2"; provision="$3"; folders="$4"
source "$(dirname "$0")/../../test_support/shell/test_lib.sh"
make_pki "$provision" st-mary
model=(--model cnn --input-shape 3x16x16 --classes 3 --cut 1)
images=(--dataset images --image-size 16x16 --channels 3)

make() { "$folders" synthetic --classes 3 "$@" >/dev/null || fail "cleave-image-folder $*"; }
make --out "$dir/train" --per-class 24 --size 20x24 --format mixed --seed 1
make --out "$dir/train" --per-class 8 --size 16x16 --channels 3 --format jpeg --prefix rgb- --seed 2
make --out "$dir/test" --per-class 8 --size 20x24 --format mixed --seed 3
[ "$(find "$dir/train" -name '*.png' | wc -l)" = 36 ] || fail "cleave-image-folder: not 36 PNGs"
[ "$(find "$dir/train" -name '*.jpg' | wc -l)" = 60 ] || fail "cleave-image-folder: not 60 JPEGs"

# cleave-image-folder itself: bad flags are exit 2; Fashion-MNIST (when on disk) as class folders.
expect_error 2 "--format" "$folders" synthetic --out "$dir/x" --format gif
expect_error 2 "--out" "$folders" fashion-mnist
expect_error 2 "--size must be HxW" "$folders" synthetic --out "$dir/x" --size 8
fmnist="${CLEAVE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [ -d "$fmnist" ]; then
  "$folders" fashion-mnist --data-dir "$fmnist" --split test --limit 30 --out "$dir/fm" >/dev/null ||
    fail "cleave-image-folder fashion-mnist"
  [ "$(find "$dir/fm" -name '*.png' | wc -l)" = 30 ] || fail "fashion-mnist: not 30 PNGs"
  [ -d "$dir/fm/0-tshirt" ] && [ -d "$dir/fm/9-boot" ] || fail "fashion-mnist: class folders"
fi

# Bad folders and flags: one line, exit 2, before any connection.
c=("$client" "${tls_client[@]}" "${model[@]}" "${images[@]}")
expect_error 2 "--dataset images needs --images DIR" "${c[@]}"
expect_error 2 "image folder '$dir/nowhere' does not exist" "${c[@]}" --images "$dir/nowhere"
mkdir -p "$dir/empty/class-000" "$dir/empty/class-001" "$dir/empty/class-002"
expect_error 2 "image folder '$dir/empty' has no images" "${c[@]}" --images "$dir/empty"
expect_error 2 "image folder '$dir/empty' has no images" "${c[@]}" --images "$dir/train" --test-images "$dir/empty"
cp -r "$dir/test" "$dir/broken"
printf 'not a jpeg' >"$dir/broken/class-001/00003.jpg"
expect_error 2 "cannot decode image '$dir/broken/class-001/00003.jpg'" "${c[@]}" --images "$dir/broken"
cp -r "$dir/test" "$dir/extra"
mkdir -p "$dir/extra/zebra" && cp "$dir/test/class-000/00000.png" "$dir/extra/zebra/"
expect_error 2 "has 4 class folders (class-000, class-001, class-002, zebra) but --classes is 3" "${c[@]}" --images "$dir/extra"
expect_error 2 "has a subfolder 'zebra' that is not one of the classes" "${c[@]}" --images "$dir/train" --test-images "$dir/extra"
expect_error 2 "--labels names 2 classes but --classes is 3" "${c[@]}" --images "$dir/train" --labels class-000,class-001
expect_error 2 "holds out no test images" "${c[@]}" --images "$dir/train" --test-fraction 0.001
c0=("$client" "${tls_client[@]}" "${model[@]}" --dataset images --images "$dir/train")
expect_error 2 "images differ in size" "${c0[@]}"
expect_error 2 "--image-size must be HxW" "${c0[@]}" --image-size 16
expect_error 2 "--normalize must be MEAN,STD" "${c[@]}" --images "$dir/train" --normalize 0.5
expect_error 2 "--channels" "${c0[@]}" --image-size 16x16 --channels 2
expect_error 2 "the data's samples have shape 1x16x16 but --input-shape is 3x16x16" "${c0[@]}" --image-size 16x16 --channels 1

"$client" --help >"$dir/client-help" || fail "client --help exited non-zero"
for flag in --images --test-images --image-size --channels --normalize --labels --test-fraction; do
  grep -qE -- "^ +$flag " "$dir/client-help" || fail "client --help does not explain $flag"
done

start_server server "${model[@]}"

# train RUN ARGS...: one client run; wants exit 0 and a test accuracy of at least 90%.
train() {
  local run="$1"; shift
  timeout 60 "$client" --server "127.0.0.1:$port" "${tls_client[@]}" "${model[@]}" "${images[@]}" \
    --epochs 4 --batch-size 16 --lr 0.003 --progress none --metrics-out "$dir/$run.json" "$@" \
    >"$dir/$run.out" 2>"$dir/$run.log"
  local code=$?
  [ "$code" = 0 ] || fail "$run: cleave-client exited $code"
  grep -q "test accuracy" "$dir/$run.out" || fail "$run: no test accuracy"
  local accuracy
  accuracy="$(sed -nE 's/.*"test_accuracy": ([0-9.eE+-]+).*/\1/p' "$dir/$run.json")"
  awk -v a="$accuracy" 'BEGIN { exit !(a >= 0.9) }' ||
    fail "$run: test accuracy '$accuracy' is under 0.9: $(cat "$dir/$run.json")"
}
train folder --images "$dir/train" --test-images "$dir/test" --normalize 0.5,0.25
grep -qE '"samples": 384,' "$dir/folder.json" || fail "folder: not 4 x 96 samples: $(cat "$dir/folder.json")"
train fraction --images "$dir/train" --test-fraction 0.25 --partition-seed 5
grep -qE '"samples": 288,' "$dir/fraction.json" || fail "fraction: not 4 x 72 samples"
grep -q "no test" "$dir/fraction.log" && fail "fraction: empty test split"
kill -TERM "$server_pid"
wait "$server_pid" || fail "the server did not exit 0 on SIGTERM"
echo "image_folder_cli_test: ok"
