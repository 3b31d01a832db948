// The wire codec for sparse tensors: indices as a bitmap, delta-varints or Golomb-Rice coded gaps
// (whichever is smallest for that tensor) and values in fp32, fp16, bf16 or block-scaled int8 /
// int4. Decoding treats the bytes as hostile: every count, length, index and value is checked
// before use and nothing is allocated from an unchecked declared size. No LibTorch here: the
// protocol layer and the fuzzer use it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cleave {

// int8 / int4: blocks of 64 values (the last one shorter), each with its maximum magnitude m as
// an fp32 (the step is m / 127, or m / 7), then the values rounded to the nearest step:
// |v - decoded| <= step / 2 (before the result's own fp32 rounding). A block holding NaN or Inf
// travels with a NaN scale, which the decoder refuses. See compress/src/block_quantization.h.
enum class ValuePrecision : uint8_t { kFp32 = 0, kFp16 = 1, kBf16 = 2, kInt8 = 3, kInt4 = 4 };

const char* ToString(ValuePrecision precision);
// "fp32", "fp16", "bf16", "int8", "int4"; throws UserError otherwise.
ValuePrecision ParseValuePrecision(const std::string& text);
// Every precision's name, in the enum's order (for flag checks and help texts).
const std::vector<std::string>& ValuePrecisionNames();
// "fp32, fp16, bf16, int8, int4" (help texts).
std::string ValuePrecisionList();
// Bytes that `count` values take in `precision` (the block scales of int8 / int4 included).
uint64_t ValueBytes(ValuePrecision precision, uint64_t count);

// kGolombRice: u8 parameter k, then the first index and every gap - 1 as Golomb-Rice codes
// (compress/src/golomb_rice.h), chosen when it is the smallest of the three (random masks up to
// about 38%; above, its best parameter 0 is a bitmap that stops at the last index).
enum class IndexEncoding : uint8_t { kBitmap = 0, kDeltaVarint = 1, kGolombRice = 2 };
const char* ToString(IndexEncoding encoding);

// Round-to-nearest-even conversions (NaN stays NaN, overflow becomes Inf).
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);
uint16_t FloatToBfloat16(float value);
float Bfloat16ToFloat(uint16_t bits);

struct DecodeLimits {
  uint64_t max_dense_numel = uint64_t{1} << 32;  // indices are uint32
  uint64_t expected_dense_numel = 0;             // 0: any (up to the maximum)
  uint64_t max_count = uint64_t{1} << 32;
  bool allow_nonfinite = false;
};

struct DecodedSparse {
  uint64_t dense_numel = 0;
  std::vector<uint32_t> indices;  // strictly increasing, < dense_numel
  std::vector<float> values;
  IndexEncoding encoding = IndexEncoding::kDeltaVarint;
};

// Header: magic 'C','S' | version u8 | precision u8 | encoding u8 | dense numel varint |
// count varint | index bytes varint, then the index bytes, then count values.
// `indices` must be strictly increasing and < dense_numel (checked: Error otherwise).
// Writes format version 2 (int8/int4 and Golomb-Rice are new in it); reads versions 1 and 2.
constexpr uint8_t kSparseFormatVersion = 2;
std::string EncodeSparse(uint64_t dense_numel, const uint32_t* indices, const float* values,
                         size_t count, ValuePrecision precision);
// The same with the index encoding fixed (tests, size tables, the fuzzer).
std::string EncodeSparse(uint64_t dense_numel, const uint32_t* indices, const float* values,
                         size_t count, ValuePrecision precision, IndexEncoding encoding);

// Throws InvalidInput with a precise message for any malformed input.
DecodedSparse DecodeSparse(std::string_view bytes, const DecodeLimits& limits);

// Values only (positions known to both sides): count values in the given precision, laid out as
// in a sparse payload (ValueBytes(precision, count) bytes; no header).
std::string EncodeValues(const float* values, size_t count, ValuePrecision precision);
std::vector<float> DecodeValues(std::string_view bytes, size_t expected_count,
                                ValuePrecision precision, bool allow_nonfinite = false);

// Size in bytes of each index encoding, to choose the smallest.
size_t BitmapBytes(uint64_t dense_numel);
size_t DeltaVarintBytes(const uint32_t* indices, size_t count);
// With the parameter EncodeSparse chooses (from the mean gap), parameter byte included.
size_t GolombRiceBytes(const uint32_t* indices, size_t count);
size_t IndexBytes(IndexEncoding encoding, uint64_t dense_numel, const uint32_t* indices,
                  size_t count);

}  // namespace cleave
