#!/usr/bin/env bash
# A bounded libFuzzer run of the sparse codec decoder (FUZZ_SECONDS, default 60) with ASan and
# UBSan. Builds the fuzzer through CMake in build-fuzz/ with clang-16 (-DCLEAVE_BUILD_FUZZERS=ON,
# -DCLEAVE_WITH_TORCH=OFF: the codec and cleave_base only, no LibTorch, no gRPC).
# Exits non-zero on a crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
out=build-fuzz
# -O1 -g: what libFuzzer and the sanitizers recommend; asserts stay on.
CC=clang-16 CXX=clang++-16 cmake -S . -B "$out" -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_C_FLAGS_DEBUG="-g -O1" -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
  -DCLEAVE_BUILD_FUZZERS=ON -DCLEAVE_WITH_TORCH=OFF -DCLEAVE_ENABLE_CUDA=OFF \
  -DCLEAVE_BUILD_TESTS=OFF -DCLEAVE_BUILD_BENCH=OFF "$@" >/dev/null
cmake --build "$out" --target sparse_codec_fuzz -j"$(nproc)"
mkdir -p "$out/corpus"
# Seed corpus: valid payloads of both index encodings and every precision.
printf 'CS\x01\x00\x01\x64\x03\x03\x02\x2f\x30\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x40\x40' \
  >"$out/corpus/varint_fp32"
printf 'CS\x01\x01\x00\x10\x02\x02\x05\x00\x00\x3c\x00\xc0' >"$out/corpus/bitmap_fp16"
printf 'CS\x01\x02\x01\x08\x01\x01\x07\x80\x3f' >"$out/corpus/varint_bf16"
echo "fuzz: sparse codec decoder for ${seconds}s"
"$out/bin/sparse_codec_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$out/" "$out/corpus" 2>"$out/fuzz.log" || {
  tail -40 "$out/fuzz.log" >&2
  echo "fuzz: FAILED (crash input in $out/)" >&2
  exit 1
}
grep -E "stat::number_of_executed_units" "$out/fuzz.log" | sed 's/^/fuzz: /'
