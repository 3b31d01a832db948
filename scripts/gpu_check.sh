#!/usr/bin/env bash
# Builds and runs what needs a GPU, on a machine with nvcc, CMake and PyTorch (a CUDA LibTorch)
# but without the Debian packages of the full build: kernels_tests and compress_tests (their CUDA
# cases), bench_gaussiank_cuda and bench/torch_topk.py, in one go, logging to LOG_DIR.
#
#   scripts/gpu_check.sh [LOG_DIR]      (GTEST_SOURCE_DIR=... to build GoogleTest from source)
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir=${1:-build-gpu/logs}
mkdir -p "$log_dir"
build=build-gpu
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || exit 1
gtest=()
if [[ -n "${GTEST_SOURCE_DIR:-}" ]]; then gtest=(-DGTEST_SOURCE_DIR="$GTEST_SOURCE_DIR"); fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$log_dir/gpu.txt"
start=$(date +%s)
cmake -S tools/gpu_check -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix" \
  "${gtest[@]}" >"$log_dir/configure.log" 2>&1 || { tail -40 "$log_dir/configure.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" >"$log_dir/build.log" 2>&1 || {
  grep -E "error|Error" "$log_dir/build.log" | head -40; exit 1; }
echo "gpu_check: built in $(( $(date +%s) - start )) s"
status=0
for t in kernels_tests compress_tests; do
  "$build/bin/$t" 2>&1 | tee "$log_dir/$t.log" | tail -25 || status=1
done
"$build/bin/bench_gaussiank_cuda" 2>&1 | tee "$log_dir/bench_gaussiank_cuda.txt" || status=1
python3 bench/torch_topk.py 2>&1 | tee "$log_dir/torch_topk.txt" || status=1
exit $status
