// Four-lane vectors through the GCC/Clang vector extension: SSE2 on x86-64, NEON on aarch64,
// without intrinsics or -march flags. The hot loops of the CPU kernels run on these because the
// compiler will not vectorise float reductions on its own without reassociation flags.
#pragma once

#include <cstdint>
#include <cstring>

namespace cleave::kernels::detail {

typedef float Float4 __attribute__((vector_size(16)));
typedef int32_t Int4 __attribute__((vector_size(16)));
typedef uint32_t Uint4 __attribute__((vector_size(16)));

inline Float4 LoadFloat4(const float* p) {
  Float4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline Uint4 LoadBits4(const float* p) {
  Uint4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline Float4 Splat(float v) { return Float4{v, v, v, v}; }

// The bit pattern of |x| orders like |x| itself (for non-NaN x): comparing magnitudes becomes an
// integer compare of the bits with the sign cleared. A negative threshold is below every
// magnitude: -1.
inline int32_t ThresholdBits(float threshold) {
  if (threshold < 0) return -1;
  uint32_t bits;
  std::memcpy(&bits, &threshold, sizeof(bits));
  return static_cast<int32_t>(bits & 0x7fffffffu);
}

// -1 in each lane whose |x| > threshold (threshold_bits from ThresholdBits), else 0. Lanes hold
// values < 2^31 after clearing the sign, so the signed compare orders them as magnitudes.
inline Int4 AboveMask(const float* p, int32_t threshold_bits) {
  const Int4 magnitudes = reinterpret_cast<Int4>(LoadBits4(p) & 0x7fffffffu);
  return magnitudes > threshold_bits;
}

// True if any lane is nonzero (two 64-bit moves instead of four lane extractions).
inline bool AnyLane(Int4 mask) {
  uint64_t halves[2];
  std::memcpy(halves, &mask, sizeof(halves));
  return (halves[0] | halves[1]) != 0;
}

// Bit j set where lane j of a compare mask is set.
inline uint32_t LaneBits(Int4 mask) {
  return static_cast<uint32_t>((mask[0] & 1) | (mask[1] & 2) | (mask[2] & 4) | (mask[3] & 8));
}

}  // namespace cleave::kernels::detail
