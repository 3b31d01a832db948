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
cmake --build "$out" --target sparse_codec_fuzz -j"${JOBS:-$(nproc)}"
mkdir -p "$out/corpus"
# Seed corpus: valid payloads of every index encoding and every precision (version 1 and 2).
printf 'CS\x01\x00\x01\x64\x03\x03\x02\x2f\x30\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x40\x40' \
  >"$out/corpus/varint_fp32"
printf 'CS\x01\x01\x00\x10\x02\x02\x05\x00\x00\x3c\x00\xc0' >"$out/corpus/bitmap_fp16"
printf 'CS\x01\x02\x01\x08\x01\x01\x07\x80\x3f' >"$out/corpus/varint_bf16"
# Format version 2: Golomb-Rice indices, int8/int4 block-scaled values (see sparse_codec.h). The
# target also builds valid payloads of every precision x index encoding from any input.
printf 'CS\x02\x03\x02\x64\x05\x05\x04\xa7\xd9\x01\x01\x00\x00\x40\x40\x40\xab\x0b\x7f\xeb' \
  >"$out/corpus/rice_int8"
printf 'CS\x02\x04\x02\x64\x05\x05\x04\xa7\xd9\x01\x01\x00\x00\x40\x40\xb4\x71\x0f' \
  >"$out/corpus/rice_int4"
printf 'CS\x02\x01\x02\x64\x03\x03\x03\xd7\x58\x00\x3e\x00\xc0\x00\x34' >"$out/corpus/rice_fp16"
printf 'CS\x02\x03\x01\x64\x04\x04\x03\x06\x1d\x00\x00\x00\x40\x40\x40\xab\x0b\x7f' \
  >"$out/corpus/varint_int8"
printf 'CS\x02\x04\x00\x30\x04\x06\x08\x04\x00\x00\x00\x03\x00\x00\x40\x40\xb4\x71' \
  >"$out/corpus/bitmap_int4"
echo "fuzz: sparse codec decoder for ${seconds}s"
"$out/bin/sparse_codec_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$out/" "$out/corpus" 2>"$out/fuzz.log" || {
  tail -40 "$out/fuzz.log" >&2
  echo "fuzz: FAILED (crash input in $out/)" >&2
  exit 1
}
grep -E "stat::number_of_executed_units" "$out/fuzz.log" | sed 's/^/fuzz: /'
