// Block-scaled integer values (the codec's int8 and int4 precisions): values in blocks of 64 (the
// last one shorter), each block's maximum magnitude m as an fp32, then every value as the nearest
// integer q of v / step with step = m / L (L = 127 for 8 bits, 7 for 4 bits), so
// |v - q step| <= step / 2 before the decoded value is rounded to fp32. Layout: all block maxima,
// then the integers (int8: one byte each; int4: two per byte, the even entry in the low nibble,
// an odd count's last high nibble zero). m is stored rather than step: it is one of the values,
// so it is exact, never underflows (denormal inputs) and keeps |q| <= L without clamping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cleave::block_quantization {

constexpr size_t kBlockSize = 64;

// bits: 8 or 4.
uint64_t PayloadBytes(unsigned bits, uint64_t count);

// A block holding a NaN or Inf gets a NaN maximum (and zero integers): the decoder refuses it,
// as the other precisions' decoders refuse the non-finite value itself.
void Append(std::string* out, const float* values, size_t count, unsigned bits);

// `bytes` must be PayloadBytes(bits, count) long (checked: Error). Throws InvalidInput for a
// negative or non-finite maximum, an integer outside -L..L or non-zero int4 padding, and
// NotFinite for a non-finite decoded value unless allowed.
std::vector<float> Decode(std::string_view bytes, size_t count, unsigned bits,
                          bool allow_nonfinite);

}  // namespace cleave::block_quantization
