// libFuzzer target for the sparse codec. Every input is used twice:
//  1. as a payload: it either decodes to a well-formed sparse tensor (which re-encodes and
//     decodes to the same thing) or is rejected with InvalidInput;
//  2. as a recipe for a valid tensor (precision, index encoding, gaps and values from the bytes),
//     encoded with that precision and encoding, then decoded: the indices must come back exactly
//     and the values within the precision's error. So every precision and every index encoding,
//     Golomb-Rice included, is reached whatever the corpus holds.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "cleave/compress/sparse_codec.h"
#include "cleave/core/error.h"

namespace {

cleave::DecodeLimits Limits() {
  cleave::DecodeLimits limits;
  limits.max_dense_numel = 1 << 20;
  limits.max_count = 1 << 20;
  return limits;
}

void DecodeAsPayload(std::string_view bytes) {
  cleave::DecodedSparse decoded;
  try {
    decoded = cleave::DecodeSparse(bytes, Limits());
  } catch (const cleave::InvalidInput&) {
    return;
  }
  if (decoded.values.size() != decoded.indices.size()) std::abort();
  for (size_t i = 0; i < decoded.indices.size(); ++i) {
    if (decoded.indices[i] >= decoded.dense_numel) std::abort();
    if (i > 0 && decoded.indices[i] <= decoded.indices[i - 1]) std::abort();
    if (!std::isfinite(decoded.values[i])) std::abort();
  }
  // Values that decoded are representable in fp32: the fp32 round trip is exact.
  const std::string again =
      cleave::EncodeSparse(decoded.dense_numel, decoded.indices.data(), decoded.values.data(),
                           decoded.indices.size(), cleave::ValuePrecision::kFp32);
  const cleave::DecodedSparse twice = cleave::DecodeSparse(again, Limits());
  if (twice.indices != decoded.indices || twice.values != decoded.values) std::abort();
}

struct Recipe {
  cleave::ValuePrecision precision = cleave::ValuePrecision::kFp32;
  cleave::IndexEncoding encoding = cleave::IndexEncoding::kBitmap;
  uint64_t dense_numel = 0;
  std::vector<uint32_t> indices;
  std::vector<float> values;
};

// Byte 0: precision, byte 1: encoding, byte 2: slack after the last index; then per entry
// three bytes: gap - 1, a signed mantissa and an exponent (so magnitudes from 2^-150 to 2^90).
Recipe ReadRecipe(const uint8_t* data, size_t size) {
  Recipe r;
  r.precision = static_cast<cleave::ValuePrecision>(data[0] % 5);
  r.encoding = static_cast<cleave::IndexEncoding>(data[1] % 3);
  uint64_t next = 0;
  for (size_t at = 3; at + 3 <= size; at += 3) {
    const uint64_t index = next + data[at];
    r.indices.push_back(static_cast<uint32_t>(index));
    r.values.push_back(std::ldexp(static_cast<float>(static_cast<int8_t>(data[at + 1])),
                                  static_cast<int>(data[at + 2] % 240) - 150));
    next = index + 1;
  }
  r.dense_numel = next + data[2];
  return r;
}

bool Close(float original, float decoded, double block_maximum, cleave::ValuePrecision p) {
  switch (p) {
    case cleave::ValuePrecision::kFp32:
      return decoded == original;
    case cleave::ValuePrecision::kFp16:
      return decoded == cleave::HalfToFloat(cleave::FloatToHalf(original));
    case cleave::ValuePrecision::kBf16:
      return decoded == cleave::Bfloat16ToFloat(cleave::FloatToBfloat16(original));
    default:
      break;
  }
  const double levels = p == cleave::ValuePrecision::kInt8 ? 127 : 7;
  const double bound = block_maximum / levels / 2 * (1 + 1e-12) +
                       std::fabs(double{decoded}) * std::ldexp(1.0, -24) + std::ldexp(1.0, -149);
  return std::fabs(double{original} - double{decoded}) <= bound;
}

void RoundTripRecipe(const uint8_t* data, size_t size) {
  if (size < 3) return;
  const Recipe r = ReadRecipe(data, size);
  if (r.dense_numel > Limits().max_dense_numel) return;
  const std::string bytes = cleave::EncodeSparse(r.dense_numel, r.indices.data(), r.values.data(),
                                                 r.indices.size(), r.precision, r.encoding);
  cleave::DecodedSparse decoded;
  try {
    decoded = cleave::DecodeSparse(bytes, Limits());
  } catch (const cleave::NotFinite&) {
    if (r.precision == cleave::ValuePrecision::kFp16) return;  // overflowed to Inf: refused
    std::abort();
  }
  if (decoded.encoding != r.encoding || decoded.indices != r.indices) std::abort();
  for (size_t block = 0; block * 64 < r.values.size(); ++block) {
    const size_t end = std::min(r.values.size(), block * 64 + 64);
    double maximum = 0;
    for (size_t i = block * 64; i < end; ++i)
      maximum = std::max(maximum, std::fabs(double{r.values[i]}));
    for (size_t i = block * 64; i < end; ++i) {
      if (!Close(r.values[i], decoded.values[i], maximum, r.precision)) std::abort();
    }
  }
  // The values-only payload decodes to the same values.
  const std::string values = cleave::EncodeValues(r.values.data(), r.values.size(), r.precision);
  if (cleave::DecodeValues(values, r.values.size(), r.precision) != decoded.values) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  DecodeAsPayload(std::string_view(reinterpret_cast<const char*>(data), size));
  RoundTripRecipe(data, size);
  return 0;
}
