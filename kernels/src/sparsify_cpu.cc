#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <unordered_set>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/kernels/sparsify.h"
#include "append_above.h"
#include "parallel.h"
#include "simd.h"

namespace cleave::kernels {

namespace {

std::atomic<int> cpu_threads{0};  // 0: hardware concurrency

// Welford accumulator, merged with Chan et al.'s parallel formula.
struct Welford {
  double count = 0, mean = 0, m2 = 0, max_abs = 0;

  void Merge(const Welford& other) {
    if (other.count == 0) return;
    const double total = count + other.count;
    const double delta = other.mean - mean;
    mean += delta * other.count / total;
    m2 += other.m2 + delta * delta * count * other.count / total;
    count = total;
    max_abs = std::max(max_abs, other.max_abs);
  }
};

// Moments of blocks of 4096 values summed in float over 2 x 4 lanes (vectorised), shifted by the
// block's first value against cancellation, then merged across blocks in double (Chan et al.).
template <typename Load4, typename Load>
Welford BlockMoments(size_t begin, size_t end, Load4 load4, Load load) {
  using detail::Float4;
  Welford total;
  constexpr size_t kBlock = 4096;
  for (size_t b = begin; b < end; b += kBlock) {
    const size_t e = std::min(end, b + kBlock);
    const float shift = load(b);
    const Float4 shift4 = detail::Splat(shift);
    Float4 sum0 = {}, sum1 = {}, squares0 = {}, squares1 = {}, max0 = {}, max1 = {};
    size_t i = b;
    for (; i + 8 <= e; i += 8) {
      const Float4 v0 = load4(i), v1 = load4(i + 4);
      const Float4 d0 = v0 - shift4, d1 = v1 - shift4;
      sum0 += d0;
      sum1 += d1;
      squares0 += d0 * d0;
      squares1 += d1 * d1;
      const Float4 a0 = v0 < 0 ? -v0 : v0, a1 = v1 < 0 ? -v1 : v1;
      max0 = a0 > max0 ? a0 : max0;
      max1 = a1 > max1 ? a1 : max1;
    }
    double block_sum = 0, block_squares = 0, block_max = 0;
    for (int j = 0; j < 4; ++j) {
      block_sum += static_cast<double>(sum0[j]) + sum1[j];
      block_squares += static_cast<double>(squares0[j]) + squares1[j];
      block_max = std::max({block_max, static_cast<double>(max0[j]), static_cast<double>(max1[j])});
    }
    for (; i < e; ++i) {
      const float v = load(i);
      const double d = static_cast<double>(v) - shift;
      block_sum += d;
      block_squares += d * d;
      block_max = std::max(block_max, static_cast<double>(std::fabs(v)));
    }
    const double count = static_cast<double>(e - b);
    const double m2 = std::max(0.0, block_squares - block_sum * block_sum / count);
    total.Merge({count, shift + block_sum / count, m2, block_max});
  }
  return total;
}

template <typename Load4, typename Load>
Moments MomentsOf(size_t n, Load4 load4, Load load) {
  const int threads = detail::ThreadsFor(n);
  std::vector<Welford> partial(static_cast<size_t>(threads));
  detail::ParallelChunks(n, threads, [&](int c, size_t begin, size_t end) {
    partial[static_cast<size_t>(c)] = BlockMoments(begin, end, load4, load);
  });
  Welford total;
  for (const Welford& w : partial) total.Merge(w);
  Moments out;
  out.n = n;
  out.mean = total.mean;
  out.stddev = n > 0 ? std::sqrt(total.m2 / static_cast<double>(n)) : 0;
  out.max_abs = total.max_abs;
  return out;
}

// Per-chunk selections concatenated in chunk order: ascending overall, one pass over the data.
struct ChunkSelection {
  std::vector<uint32_t> indices;
  std::vector<float> values;
};

size_t Concatenate(const std::vector<ChunkSelection>& chunks, uint32_t* indices, float* values,
                   size_t capacity) {
  size_t total = 0;
  for (const ChunkSelection& chunk : chunks) {
    const size_t count = chunk.indices.size();
    if (total < capacity) {
      const size_t take = std::min(count, capacity - total);
      std::memcpy(indices + total, chunk.indices.data(), take * sizeof(uint32_t));
      std::memcpy(values + total, chunk.values.data(), take * sizeof(float));
    }
    total += count;
  }
  return total;
}

}  // namespace

void SetCpuThreads(int threads) { cpu_threads.store(std::max(0, threads)); }

int CpuThreads() {
  const int set = cpu_threads.load();
  return set > 0 ? set : std::max(1u, std::thread::hardware_concurrency());
}

int detail::ThreadsFor(size_t n) {
  const size_t by_size = std::max<size_t>(1, n / kMinElementsPerThread);
  return static_cast<int>(std::min<size_t>(static_cast<size_t>(CpuThreads()), by_size));
}

Moments ComputeMoments(const float* x, size_t n) {
  return MomentsOf(
      n, [x](size_t i) { return detail::LoadFloat4(x + i); }, [x](size_t i) { return x[i]; });
}

size_t CountAbove(const float* x, size_t n, float threshold) {
  const int threads = detail::ThreadsFor(n);
  std::vector<size_t> partial(static_cast<size_t>(threads), 0);
  detail::ParallelChunks(n, threads, [&](int c, size_t begin, size_t end) {
    const int32_t bits = detail::ThresholdBits(threshold);
    detail::Int4 lanes = {};
    size_t i = begin;
    for (; i + 4 <= end; i += 4) lanes -= detail::AboveMask(x + i, bits);  // mask lanes are -1
    size_t count = static_cast<size_t>(lanes[0]) + lanes[1] + lanes[2] + lanes[3];
    for (; i < end; ++i) count += std::fabs(x[i]) > threshold;
    partial[static_cast<size_t>(c)] = count;
  });
  return std::accumulate(partial.begin(), partial.end(), size_t{0});
}

size_t SelectAbove(const float* x, size_t n, float threshold, uint32_t* indices, float* values,
                   size_t capacity) {
  const int threads = detail::ThreadsFor(n);
  std::vector<ChunkSelection> chunks(static_cast<size_t>(threads));
  detail::ParallelChunks(n, threads, [&](int c, size_t begin, size_t end) {
    ChunkSelection& out = chunks[static_cast<size_t>(c)];
    out.indices.reserve((end - begin) / 64 + 16);
    out.values.reserve((end - begin) / 64 + 16);
    detail::ForEachAbove(x, begin, end, threshold, [&](size_t at) {
      out.indices.push_back(static_cast<uint32_t>(at));
      out.values.push_back(x[at]);
    });
  });
  return Concatenate(chunks, indices, values, capacity);
}

void AbsHistogram(const float* x, size_t n, float lo, float hi, size_t bins, uint64_t* counts) {
  CLEAVE_ENFORCE(bins > 0 && lo < hi, "histogram of ", bins, " bins over [", lo, ", ", hi, ")");
  const float scale = static_cast<float>(bins) / (hi - lo);  // the CUDA kernel uses this too
  const float last = static_cast<float>(bins - 1);
  const int threads = detail::ThreadsFor(n);
  std::vector<std::vector<uint64_t>> partial(static_cast<size_t>(threads));
  detail::ParallelChunks(n, threads, [&](int c, size_t begin, size_t end) {
    std::vector<uint64_t>& local = partial[static_cast<size_t>(c)];
    local.assign(bins, 0);
    for (size_t i = begin; i < end; ++i) {
      const float magnitude = std::fabs(x[i]);
      if (!(magnitude >= lo && magnitude < hi)) continue;  // also skips NaN
      const float position = (magnitude - lo) * scale;
      ++local[position < last ? static_cast<size_t>(position) : bins - 1];
    }
  });
  std::fill(counts, counts + bins, uint64_t{0});
  for (const auto& local : partial) {
    for (size_t b = 0; b < bins; ++b) counts[b] += local[b];
  }
}

float ThresholdByHistogram(HistogramFn histogram, const void* context, size_t n, float max_abs,
                           size_t k, size_t* expected_count) {
  if (n == 0 || k == 0) {
    *expected_count = 0;
    return std::numeric_limits<float>::infinity();
  }
  // Zeros are never selected (t >= 0): a sparse tensor need not carry them.
  if (!(max_abs > 0)) {
    *expected_count = 0;
    return 0.0f;
  }
  float lo = 0.0f;
  float hi = std::isfinite(max_abs) ? std::nextafter(max_abs, std::numeric_limits<float>::max())
                                    : std::numeric_limits<float>::max();
  size_t above = 0;  // elements with |x| >= hi, counted by earlier passes
  std::vector<uint64_t> counts(kHistogramBins);
  // Selecting |x| >= edge is selecting |x| > the float just below edge (or > 0 at the bottom).
  auto below = [](float edge) { return edge > 0 ? std::nextafter(edge, 0.0f) : 0.0f; };
  for (int pass = 0;; ++pass) {
    histogram(context, lo, hi, kHistogramBins, counts.data());
    // The bin holding the k-th largest magnitude, from the top.
    size_t bin = kHistogramBins, cumulative = above;
    while (bin > 0 && cumulative + counts[bin - 1] < k) cumulative += counts[--bin];
    if (bin == 0) {  // fewer than k nonzero magnitudes: take them all
      *expected_count = cumulative;
      return below(lo);
    }
    --bin;
    const float width = (hi - lo) / static_cast<float>(kHistogramBins);
    const float bin_lo = lo + static_cast<float>(bin) * width;
    const float bin_hi = bin + 1 == kHistogramBins ? hi : lo + static_cast<float>(bin + 1) * width;
    const size_t with_bin = cumulative + counts[bin];
    const bool resolved = counts[bin] * 10 <= k;  // either edge lands within 10% of k
    if (resolved || pass + 1 == kMaxHistogramPasses || !(bin_lo < bin_hi) ||
        std::nextafter(bin_lo, bin_hi) == bin_hi) {
      const bool take_bin = with_bin - k <= k - cumulative;  // the closer of the two edges
      *expected_count = take_bin ? with_bin : cumulative;
      return take_bin ? below(bin_lo) : below(bin_hi);
    }
    lo = bin_lo;
    hi = bin_hi;
    above = cumulative;
  }
}

float ThresholdByHistogram(const float* x, size_t n, size_t k, size_t* expected_count) {
  struct Buffer {
    const float* x;
    size_t n;
  } buffer{x, n};
  const Moments moments = ComputeMoments(x, n);
  return ThresholdByHistogram(
      [](const void* context, float lo, float hi, size_t bins, uint64_t* counts) {
        const auto* data = static_cast<const Buffer*>(context);
        AbsHistogram(data->x, data->n, lo, hi, bins, counts);
      },
      &buffer, n, static_cast<float>(moments.max_abs), k, expected_count);
}

size_t TopK(const float* x, size_t n, size_t k, uint32_t* indices, float* values) {
  k = std::min(k, n);
  if (k == 0) return 0;
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  // Larger magnitude first; equal magnitudes: lower index first.
  auto before = [x](uint32_t a, uint32_t b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa > fb || (fa == fb && a < b);
  };
  std::nth_element(order.begin(), order.begin() + static_cast<long>(k - 1), order.end(), before);
  std::sort(order.begin(), order.begin() + static_cast<long>(k));
  for (size_t i = 0; i < k; ++i) {
    indices[i] = order[i];
    values[i] = x[order[i]];
  }
  return k;
}

size_t RandomK(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices,
               float* values) {
  k = std::min(k, n);
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> chosen;
  chosen.reserve(k);
  if (k * 2 <= n) {
    // Floyd's algorithm: k distinct draws in O(k).
    std::unordered_set<uint64_t> seen;
    seen.reserve(k * 2);
    for (uint64_t j = n - k; j < n; ++j) {
      const uint64_t t = rng() % (j + 1);
      const uint64_t pick = seen.insert(t).second ? t : j;
      if (pick == j) seen.insert(j);
      chosen.push_back(static_cast<uint32_t>(pick));
    }
    std::sort(chosen.begin(), chosen.end());
  } else {
    // Selection sampling (Knuth's algorithm S): ascending by construction.
    size_t needed = k;
    for (size_t i = 0; i < n && needed > 0; ++i) {
      if (rng() % (n - i) < needed) {
        chosen.push_back(static_cast<uint32_t>(i));
        --needed;
      }
    }
  }
  for (size_t i = 0; i < k; ++i) {
    indices[i] = chosen[i];
    values[i] = x[chosen[i]];
  }
  return k;
}

}  // namespace cleave::kernels
