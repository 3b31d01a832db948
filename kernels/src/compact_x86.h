// Stream compaction on x86-64, chosen at run time by what the CPU has: AVX-512 (compress 16 lanes
// into a register, one store) or AVX2 (permute 8 lanes by a table indexed by the comparison mask,
// one store); the callers keep a portable scalar path for the rest. No -march flag: only these
// functions are compiled for those instruction sets.
#pragma once

#include <cstddef>
#include <cstdint>

#include "append_above.h"

namespace cleave::kernels::detail {

// True when the CPU has AVX-512F (checked once) and SetCpuAvx512 allows it.
bool HaveAvx512();
// True when the CPU has AVX2 (checked once) and SetCpuAvx2 allows it.
bool HaveAvx2();

struct Collected {
  size_t count = 0;  // candidates stored
  size_t band = 0;   // of them, also stored in the band
};

// One element of a collection, element by element (the vector loops' tails).
inline void CollectOne(const float* x, size_t i, uint32_t low, uint32_t high, uint32_t* indices,
                       float* values, float* band, Collected* out) {
  const uint32_t magnitude = MagnitudeBits(x[i]);
  if (magnitude <= low) return;
  if (indices != nullptr) {
    indices[out->count] = static_cast<uint32_t>(i);
    values[out->count] = x[i];
  }
  ++out->count;
  if (magnitude <= high) band[out->band++] = x[i];
}

// One entry of a compaction, element by element (tails, and vectors that hold ties): writes it
// at out[*written] when it is above kth, or equal to it while *ties_left lasts.
inline void CompactOne(const uint32_t* indices, size_t first_index, const float* values, size_t j,
                       uint32_t kth, size_t* ties_left, uint32_t* out_indices, float* out_values,
                       size_t* written) {
  const uint32_t magnitude = MagnitudeBits(values[j]);
  const bool tie = magnitude == kth && *ties_left > 0;
  if (magnitude > kth || tie) {
    out_indices[*written] = indices != nullptr ? indices[j] : static_cast<uint32_t>(first_index + j);
    out_values[(*written)++] = values[j];
    *ties_left -= tie;
  }
}

// For i in [begin, end) with magnitude bits of x[i] > low: counts it, stores (i, x[i]) at
// indices/values unless they are null, and stores x[i] at band when its magnitude bits are also
// <= high. Each output needs room for end - begin + 16 entries (whole vectors are stored; lanes
// past the count are garbage).
Collected CollectAvx512(const float* x, size_t begin, size_t end, uint32_t low, uint32_t high,
                        uint32_t* indices, float* values, float* band);

// Writes, in order, the entries whose magnitude bits are > kth, and those == kth while *ties is
// positive (decremented for each), to out_indices/out_values (exact: masked stores). The entries
// are values[0, count) with indices[0, count), or, when indices is null, with the indices
// first_index, first_index + 1, ... Returns how many were written.
size_t CompactAvx512(const uint32_t* indices, size_t first_index, const float* values,
                     size_t count, uint32_t kth, size_t* ties, uint32_t* out_indices,
                     float* out_values);

// The same two operations with AVX2 (8 lanes a step).
Collected CollectAvx2(const float* x, size_t begin, size_t end, uint32_t low, uint32_t high,
                      uint32_t* indices, float* values, float* band);
size_t CompactAvx2(const uint32_t* indices, size_t first_index, const float* values, size_t count,
                   uint32_t kth, size_t* ties, uint32_t* out_indices, float* out_values);

}  // namespace cleave::kernels::detail
