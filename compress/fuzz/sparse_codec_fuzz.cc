// libFuzzer target for the sparse codec: any bytes either decode to a well-formed sparse tensor
// (which re-encodes and decodes to the same thing) or are rejected with InvalidInput.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "cleave/compress/sparse_codec.h"
#include "cleave/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cleave::DecodeLimits limits;
  limits.max_dense_numel = 1 << 20;
  limits.max_count = 1 << 20;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  cleave::DecodedSparse decoded;
  try {
    decoded = cleave::DecodeSparse(bytes, limits);
  } catch (const cleave::InvalidInput&) {
    return 0;
  }
  if (decoded.values.size() != decoded.indices.size()) std::abort();
  for (size_t i = 0; i < decoded.indices.size(); ++i) {
    if (decoded.indices[i] >= decoded.dense_numel) std::abort();
    if (i > 0 && decoded.indices[i] <= decoded.indices[i - 1]) std::abort();
  }
  // Values that decoded are representable in fp32: the fp32 round trip is exact.
  const std::string again =
      cleave::EncodeSparse(decoded.dense_numel, decoded.indices.data(), decoded.values.data(),
                           decoded.indices.size(), cleave::ValuePrecision::kFp32);
  const cleave::DecodedSparse twice = cleave::DecodeSparse(again, limits);
  if (twice.indices != decoded.indices || twice.values != decoded.values) std::abort();
  return 0;
}
