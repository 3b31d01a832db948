#include "compact_x86.h"

#include <atomic>
#include <stdexcept>

#include "cleave/kernels/sparsify.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLEAVE_AVX512 1
#endif

namespace cleave::kernels {

namespace {
std::atomic<bool> avx512_allowed{true};
}  // namespace

void SetCpuAvx512(bool allowed) { avx512_allowed.store(allowed); }

}  // namespace cleave::kernels

namespace cleave::kernels::detail {

#ifdef CLEAVE_AVX512

bool HaveAvx512() {
  static const bool have = __builtin_cpu_supports("avx512f");
  return have && avx512_allowed.load(std::memory_order_relaxed);
}

__attribute__((target("avx512f"))) Collected CollectAvx512(const float* x, size_t begin,
                                                           size_t end, uint32_t low, uint32_t high,
                                                           uint32_t* indices, float* values,
                                                           float* band) {
  const __m512i magnitude_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i low_bits = _mm512_set1_epi32(static_cast<int>(low));
  const __m512i high_bits = _mm512_set1_epi32(static_cast<int>(high));
  const __m512i sixteen = _mm512_set1_epi32(16);
  __m512i position = _mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int>(begin)),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  Collected out;
  size_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512i magnitude = _mm512_and_si512(_mm512_castps_si512(v), magnitude_mask);
    const __mmask16 above = _mm512_cmpgt_epu32_mask(magnitude, low_bits);
    // Stored only when there is something to store (rare in sparse selections, where the branch
    // is well predicted); the band is stored every time (a branch on it would be a coin toss).
    if (indices != nullptr && above != 0) {
      _mm512_storeu_ps(values + out.count, _mm512_maskz_compress_ps(above, v));
      _mm512_storeu_si512(indices + out.count, _mm512_maskz_compress_epi32(above, position));
    }
    out.count += static_cast<size_t>(__builtin_popcount(above));
    const __mmask16 in_band = _mm512_mask_cmple_epu32_mask(above, magnitude, high_bits);
    _mm512_storeu_ps(band + out.band, _mm512_maskz_compress_ps(in_band, v));
    out.band += static_cast<size_t>(__builtin_popcount(in_band));
    position = _mm512_add_epi32(position, sixteen);
  }
  for (; i < end; ++i) CollectOne(x, i, low, high, indices, values, band, &out);
  return out;
}

__attribute__((target("avx512f"))) size_t CompactAvx512(const uint32_t* indices,
                                                        size_t first_index, const float* values,
                                                        size_t count, uint32_t kth, size_t* ties,
                                                        uint32_t* out_indices, float* out_values) {
  const __m512i magnitude_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i kth_bits = _mm512_set1_epi32(static_cast<int>(kth));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  size_t written = 0, i = 0, ties_left = *ties;
  auto scalar = [&](size_t j) {
    CompactOne(indices, first_index, values, j, kth, &ties_left, out_indices, out_values, &written);
  };
  for (; i + 16 <= count; i += 16) {
    const __m512 v = _mm512_loadu_ps(values + i);
    const __m512i magnitude = _mm512_and_si512(_mm512_castps_si512(v), magnitude_mask);
    if (ties_left > 0 && _mm512_cmpeq_epu32_mask(magnitude, kth_bits) != 0) {
      for (size_t j = i; j < i + 16; ++j) scalar(j);  // ties taken in order, one by one
      continue;
    }
    const __mmask16 chosen = _mm512_cmpgt_epu32_mask(magnitude, kth_bits);
    const auto taken = static_cast<unsigned>(__builtin_popcount(chosen));
    const auto store = static_cast<__mmask16>((1u << taken) - 1);
    const __m512i index =
        indices != nullptr
            ? _mm512_loadu_si512(indices + i)
            : _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first_index + i)), lanes);
    _mm512_mask_storeu_ps(out_values + written, store, _mm512_maskz_compress_ps(chosen, v));
    _mm512_mask_storeu_epi32(out_indices + written, store,
                             _mm512_maskz_compress_epi32(chosen, index));
    written += taken;
  }
  for (; i < count; ++i) scalar(i);
  *ties = ties_left;
  return written;
}

#else

bool HaveAvx512() { return false; }

Collected CollectAvx512(const float*, size_t, size_t, uint32_t, uint32_t, uint32_t*, float*,
                        float*) {
  throw std::logic_error("CollectAvx512 called on a CPU without AVX-512");
}

size_t CompactAvx512(const uint32_t*, size_t, const float*, size_t, uint32_t, size_t*, uint32_t*,
                     float*) {
  throw std::logic_error("CompactAvx512 called on a CPU without AVX-512");
}

#endif

}  // namespace cleave::kernels::detail
