#include <array>
#include <atomic>
#include <stdexcept>

#include "cleave/kernels/sparsify.h"
#include "compact_x86.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLEAVE_AVX2 1
#endif

namespace cleave::kernels {

namespace {
std::atomic<bool> avx2_allowed{true};
}  // namespace

void SetCpuAvx2(bool allowed) { avx2_allowed.store(allowed); }

}  // namespace cleave::kernels

namespace cleave::kernels::detail {

#ifdef CLEAVE_AVX2

namespace {

// For each 8-bit mask, the lanes whose bit is set, first, in order: the permutation that packs
// them at the bottom of a vector.
struct PackTable {
  std::array<std::array<uint32_t, 8>, 256> lanes{};
  PackTable() {
    for (unsigned mask = 0; mask < 256; ++mask) {
      unsigned at = 0;
      for (unsigned lane = 0; lane < 8; ++lane) {
        if (mask & (1u << lane)) lanes[mask][at++] = lane;
      }
    }
  }
};
const PackTable pack_table;

__attribute__((target("avx2"))) inline __m256i PackOrder(unsigned mask) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pack_table.lanes[mask].data()));
}

// Lanes [0, count) set: the mask of a masked store of `count` packed lanes.
__attribute__((target("avx2"))) inline __m256i FirstLanes(unsigned count) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lane);
}

}  // namespace

bool HaveAvx2() {
  static const bool have = __builtin_cpu_supports("avx2");
  return have && avx2_allowed.load(std::memory_order_relaxed);
}

// Magnitude bits are below 2^31, so signed 32-bit compares order them (AVX2 has no unsigned one).
__attribute__((target("avx2"))) Collected CollectAvx2(const float* x, size_t begin, size_t end,
                                                      uint32_t low, uint32_t high,
                                                      uint32_t* indices, float* values,
                                                      float* band) {
  const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i low_bits = _mm256_set1_epi32(static_cast<int>(low));
  const __m256i high_bits = _mm256_set1_epi32(static_cast<int>(high));
  __m256i position = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(begin)),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  Collected out;
  size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256i magnitude = _mm256_and_si256(_mm256_castps_si256(v), magnitude_mask);
    const __m256i above_lanes = _mm256_cmpgt_epi32(magnitude, low_bits);
    const auto above = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(above_lanes)));
    if (indices != nullptr && above != 0) {
      const __m256i order = PackOrder(above);
      _mm256_storeu_ps(values + out.count, _mm256_permutevar8x32_ps(v, order));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(indices + out.count),
                          _mm256_permutevar8x32_epi32(position, order));
    }
    out.count += static_cast<size_t>(__builtin_popcount(above));
    const __m256i not_above_high = _mm256_cmpgt_epi32(magnitude, high_bits);
    const auto in_band = above & ~static_cast<unsigned>(
                                     _mm256_movemask_ps(_mm256_castsi256_ps(not_above_high)));
    _mm256_storeu_ps(band + out.band, _mm256_permutevar8x32_ps(v, PackOrder(in_band)));
    out.band += static_cast<size_t>(__builtin_popcount(in_band));
    position = _mm256_add_epi32(position, _mm256_set1_epi32(8));
  }
  for (; i < end; ++i) CollectOne(x, i, low, high, indices, values, band, &out);
  return out;
}

__attribute__((target("avx2"))) size_t CompactAvx2(const uint32_t* indices, size_t first_index,
                                                   const float* values, size_t count,
                                                   uint32_t kth, size_t* ties,
                                                   uint32_t* out_indices, float* out_values) {
  const __m256i magnitude_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i kth_bits = _mm256_set1_epi32(static_cast<int>(kth));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  size_t written = 0, i = 0, ties_left = *ties;
  auto scalar = [&](size_t j) {
    CompactOne(indices, first_index, values, j, kth, &ties_left, out_indices, out_values, &written);
  };
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_loadu_ps(values + i);
    const __m256i magnitude = _mm256_and_si256(_mm256_castps_si256(v), magnitude_mask);
    if (ties_left > 0 && _mm256_movemask_ps(_mm256_castsi256_ps(
                             _mm256_cmpeq_epi32(magnitude, kth_bits))) != 0) {
      for (size_t j = i; j < i + 8; ++j) scalar(j);  // ties taken in order, one by one
      continue;
    }
    const auto chosen = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(magnitude, kth_bits))));
    const auto taken = static_cast<unsigned>(__builtin_popcount(chosen));
    const __m256i order = PackOrder(chosen);
    const __m256i index =
        indices != nullptr
            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(indices + i))
            : _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first_index + i)), lanes);
    // Masked stores: the output is shared with the other threads' shares right after this one.
    const __m256i store = FirstLanes(taken);
    _mm256_maskstore_ps(out_values + written, store, _mm256_permutevar8x32_ps(v, order));
    _mm256_maskstore_epi32(reinterpret_cast<int*>(out_indices + written), store,
                           _mm256_permutevar8x32_epi32(index, order));
    written += taken;
  }
  for (; i < count; ++i) scalar(i);
  *ties = ties_left;
  return written;
}

#else

bool HaveAvx2() { return false; }

Collected CollectAvx2(const float*, size_t, size_t, uint32_t, uint32_t, uint32_t*, float*, float*) {
  throw std::logic_error("CollectAvx2 called on a CPU without AVX2");
}

size_t CompactAvx2(const uint32_t*, size_t, const float*, size_t, uint32_t, size_t*, uint32_t*,
                   float*) {
  throw std::logic_error("CompactAvx2 called on a CPU without AVX2");
}

#endif

}  // namespace cleave::kernels::detail
