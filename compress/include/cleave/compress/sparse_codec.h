// The wire codec for sparse tensors: indices as a bitmap or delta-varint (whichever is smaller
// for that tensor) and values in fp32, fp16 or bf16. Decoding treats the bytes as hostile: every
// count, length, index and value is checked before use and nothing is allocated from an
// unchecked declared size. No LibTorch here: the protocol layer and the fuzzer use it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cleave {

enum class ValuePrecision : uint8_t { kFp32 = 0, kFp16 = 1, kBf16 = 2 };

const char* ToString(ValuePrecision precision);
// "fp32", "fp16", "bf16"; throws UserError otherwise.
ValuePrecision ParseValuePrecision(const std::string& text);
// Every precision's name, in the enum's order (for flag checks and help texts).
const std::vector<std::string>& ValuePrecisionNames();
size_t BytesPerValue(ValuePrecision precision);

enum class IndexEncoding : uint8_t { kBitmap = 0, kDeltaVarint = 1 };

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
std::string EncodeSparse(uint64_t dense_numel, const uint32_t* indices, const float* values,
                         size_t count, ValuePrecision precision);

// Throws InvalidInput with a precise message for any malformed input.
DecodedSparse DecodeSparse(std::string_view bytes, const DecodeLimits& limits);

// Values only (positions known to both sides): count raw values in the given precision.
std::string EncodeValues(const float* values, size_t count, ValuePrecision precision);
std::vector<float> DecodeValues(std::string_view bytes, size_t expected_count,
                                ValuePrecision precision, bool allow_nonfinite = false);

// Size in bytes of the two index encodings, to choose the smaller.
size_t BitmapBytes(uint64_t dense_numel);
size_t DeltaVarintBytes(const uint32_t* indices, size_t count);

}  // namespace cleave
