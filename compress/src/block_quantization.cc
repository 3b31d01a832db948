#include "block_quantization.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cleave/core/error.h"

namespace cleave::block_quantization {

namespace {

uint64_t Blocks(uint64_t count) { return (count + kBlockSize - 1) / kBlockSize; }

int Levels(unsigned bits) { return bits == 8 ? 127 : 7; }

float BlockMaximum(const float* values, size_t count) {
  float maximum = 0;
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) return std::numeric_limits<float>::quiet_NaN();
    maximum = std::max(maximum, std::fabs(values[i]));
  }
  return maximum;
}

// v * L exactly in double (24 + 7 bits), one rounding in the division: |result| <= L.
int Quantize(float value, float maximum, int levels) {
  if (!(maximum > 0) || !std::isfinite(maximum)) return 0;
  const double scaled = static_cast<double>(value) * levels / static_cast<double>(maximum);
  const auto q = static_cast<int>(std::lround(scaled));
  return std::clamp(q, -levels, levels);
}

int SignedNibble(uint8_t nibble) { return nibble >= 8 ? static_cast<int>(nibble) - 16 : nibble; }

}  // namespace

uint64_t PayloadBytes(unsigned bits, uint64_t count) {
  const uint64_t integer_bytes = bits == 8 ? count : (count + 1) / 2;
  return Blocks(count) * sizeof(float) + integer_bytes;
}

void Append(std::string* out, const float* values, size_t count, unsigned bits) {
  const int levels = Levels(bits);
  const size_t start = out->size();
  const size_t blocks = static_cast<size_t>(Blocks(count));
  out->resize(start + static_cast<size_t>(PayloadBytes(bits, count)), '\0');
  char* maxima = out->data() + start;
  auto* integers = reinterpret_cast<uint8_t*>(maxima + blocks * sizeof(float));
  for (size_t block = 0; block < blocks; ++block) {
    const size_t first = block * kBlockSize;
    const size_t size = std::min(kBlockSize, count - first);
    const float maximum = BlockMaximum(values + first, size);
    std::memcpy(maxima + block * sizeof(float), &maximum, sizeof(float));
    for (size_t i = first; i < first + size; ++i) {
      const int q = Quantize(values[i], maximum, levels);
      if (bits == 8) {
        integers[i] = static_cast<uint8_t>(static_cast<int8_t>(q));
      } else {
        integers[i / 2] |= static_cast<uint8_t>((q & 0xf) << (4 * (i % 2)));
      }
    }
  }
}

std::vector<float> Decode(std::string_view bytes, size_t count, unsigned bits,
                          bool allow_nonfinite) {
  CLEAVE_ENFORCE(bytes.size() == PayloadBytes(bits, count), "block payload size unchecked");
  const int levels = Levels(bits);
  const size_t blocks = static_cast<size_t>(Blocks(count));
  const auto* integers = reinterpret_cast<const uint8_t*>(bytes.data() + blocks * sizeof(float));
  if (bits == 4 && count % 2 == 1) {
    CLEAVE_CHECK_INPUT((integers[count / 2] >> 4) == 0,
                       "int4 padding nibble after an odd count of ", count, " values is not zero");
  }
  std::vector<float> values(count);
  for (size_t block = 0; block < blocks; ++block) {
    float maximum;
    std::memcpy(&maximum, bytes.data() + block * sizeof(float), sizeof(float));
    CLEAVE_CHECK_INPUT(std::isfinite(maximum) && maximum >= 0, "block ", block, " has scale ",
                       maximum, " (must be finite and >= 0)");
    const size_t first = block * kBlockSize;
    const size_t end = std::min(count, first + kBlockSize);
    for (size_t i = first; i < end; ++i) {
      const int q =
          bits == 8 ? static_cast<int8_t>(integers[i])
                    : SignedNibble(static_cast<uint8_t>((integers[i / 2] >> (4 * (i % 2))) & 0xf));
      CLEAVE_CHECK_INPUT(q >= -levels && q <= levels, "int", bits, " value ", i, " is ", q,
                         ", outside -", levels, "..", levels);
      const auto value =
          static_cast<float>(static_cast<double>(q) * static_cast<double>(maximum) / levels);
      if (!allow_nonfinite && !std::isfinite(value)) {
        throw NotFinite(detail::Concat("value ", i, " is not finite"));
      }
      values[i] = value;
    }
  }
  return values;
}

}  // namespace cleave::block_quantization
