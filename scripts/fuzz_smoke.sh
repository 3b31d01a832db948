#!/usr/bin/env bash
# A bounded libFuzzer run of the sparse codec decoder (FUZZ_SECONDS, default 60) with ASan and
# UBSan. Builds the fuzzer straight from its two sources with clang++-16 (no CMake, no LibTorch).
# Exits non-zero on a crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
out=build-fuzz
mkdir -p "$out/corpus"
clang++-16 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Icore/include -Icompress/include \
  compress/fuzz/sparse_codec_fuzz.cc compress/src/sparse_codec.cc -o "$out/sparse_codec_fuzz"
# Seed corpus: valid payloads of both index encodings and every precision.
printf 'CS\x01\x00\x01\x64\x03\x03\x02\x2f\x30\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x40\x40' \
  >"$out/corpus/varint_fp32"
printf 'CS\x01\x01\x00\x10\x02\x02\x05\x00\x00\x3c\x00\xc0' >"$out/corpus/bitmap_fp16"
printf 'CS\x01\x02\x01\x08\x01\x01\x07\x80\x3f' >"$out/corpus/varint_bf16"
echo "fuzz: sparse codec decoder for ${seconds}s"
"$out/sparse_codec_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="$out/" "$out/corpus" 2>"$out/fuzz.log" || {
  tail -40 "$out/fuzz.log" >&2
  echo "fuzz: FAILED (crash input in $out/)" >&2
  exit 1
}
grep -E "stat::number_of_executed_units" "$out/fuzz.log" | sed 's/^/fuzz: /'
