// The selection loop shared by SelectAbove and the sampled top-k: visits every i in [begin, end)
// with |x[i]| > threshold, in ascending order, and calls emit(i).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "simd.h"

namespace cleave::kernels::detail {

template <typename Emit>
void ForEachAbove(const float* x, size_t begin, size_t end, float threshold, Emit&& emit) {
  // Groups of 16: a vector compare gives a 16-bit mask; most masks are 0 at low density and the
  // set bits of the others are visited directly, without a branch per element.
  constexpr size_t kGroup = 16;
  const int32_t bits = ThresholdBits(threshold);
  size_t i = begin;
  for (; i + kGroup <= end; i += kGroup) {
    const Int4 m0 = AboveMask(x + i, bits);
    const Int4 m1 = AboveMask(x + i + 4, bits);
    const Int4 m2 = AboveMask(x + i + 8, bits);
    const Int4 m3 = AboveMask(x + i + 12, bits);
    if (!AnyLane((m0 | m1) | (m2 | m3))) continue;
    uint32_t mask = LaneBits(m0) | LaneBits(m1) << 4 | LaneBits(m2) << 8 | LaneBits(m3) << 12;
    while (mask != 0) {
      emit(i + static_cast<size_t>(__builtin_ctz(mask)));
      mask &= mask - 1;
    }
  }
  for (; i < end; ++i) {
    if (std::fabs(x[i]) > threshold) emit(i);
  }
}

// The bits of |v|: for non-NaN v they order like |v| as unsigned integers.
inline uint32_t MagnitudeBits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & 0x7fffffffu;
}

}  // namespace cleave::kernels::detail
