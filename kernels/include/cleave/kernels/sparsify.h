// Sparsification kernels on raw float buffers: statistics, threshold selection with compaction,
// exact and random top-k, and the fused error-feedback step. No LibTorch, no gRPC.
//
// Every operation has a multithreaded CPU implementation here (the reference the CUDA backend in
// sparsify_cuda.h is tested against). Selected entries always come out in ascending index order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace cleave::kernels {

struct Moments {
  double mean = 0;    // of the values
  double stddev = 0;  // population standard deviation of the values
  double max_abs = 0;
  size_t n = 0;
};

// One pass; per-thread Welford accumulators merged with Chan's formula (stable for large n).
Moments ComputeMoments(const float* x, size_t n);

// Number of elements with |x| > threshold.
size_t CountAbove(const float* x, size_t n, float threshold);

// Writes (index, value) of every |x| > threshold in ascending index order, at most `capacity`
// of them; returns how many there are in total (which may exceed capacity: then only the first
// `capacity` were written).
size_t SelectAbove(const float* x, size_t n, float threshold, uint32_t* indices, float* values,
                   size_t capacity);

// Exact top-k by magnitude (ties broken towards lower indices), ascending index order. The
// reference every approximate method is measured against. k is clamped to n; returns k.
size_t TopK(const float* x, size_t n, size_t k, uint32_t* indices, float* values);

// k distinct positions drawn uniformly with `seed`, ascending. k is clamped to n; returns k.
size_t RandomK(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices, float* values);

// Scratch memory of SelectTopKBySampling, kept between calls so that a caller that compresses
// tensors of similar size repeatedly allocates nothing after the first call. One per caller: not
// for two threads at once.
class SelectionWorkspace {
 public:
  SelectionWorkspace();
  ~SelectionWorkspace();
  SelectionWorkspace(SelectionWorkspace&&) noexcept;
  SelectionWorkspace& operator=(SelectionWorkspace&&) noexcept;
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Exactly the k largest magnitudes (ties towards lower indices, as TopK), for any distribution,
// at about one read of x: a seeded sample of cache lines gives a threshold a little below the
// k-th largest magnitude, one parallel pass collects the candidates above it, a two-level radix
// select over the candidates' magnitude bits finds the k-th exactly, and one parallel pass
// writes the chosen ones. Returns the number selected: k, or fewer only if fewer than k elements
// are nonzero (zeros are never selected).
size_t SelectTopKBySampling(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices,
                            float* values, SelectionWorkspace* workspace);
// The same with a workspace of its own.
size_t SelectTopKBySampling(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices,
                            float* values);

// Equal-width histogram of the magnitudes in [lo, hi): counts[b] += number of |x| with
// bin(|x|) == b, where bin(m) = min(bins - 1, floor((m - lo) * (bins / (hi - lo)))) in float
// arithmetic (the CUDA backend computes the same bins). |x| outside [lo, hi) and NaN are not
// counted. `counts` has `bins` entries and is overwritten. Requires lo < hi, bins > 0.
void AbsHistogram(const float* x, size_t n, float lo, float hi, size_t bins, uint64_t* counts);

// A threshold t with CountAbove(x, n, t) close to k for any distribution, found by zooming a
// histogram of |x| onto the k-th largest magnitude (at most kMaxHistogramPasses passes of
// kHistogramBins bins, each after the first only over the bin that holds it). `histogram`
// computes AbsHistogram on whichever backend holds the data; max_abs comes from the moments.
// *expected_count gets the number of |x| > t the histograms counted (what a selection finds).
constexpr size_t kHistogramBins = 2048;
constexpr int kMaxHistogramPasses = 3;
using HistogramFn = void (*)(const void* context, float lo, float hi, size_t bins,
                             uint64_t* counts);
float ThresholdByHistogram(HistogramFn histogram, const void* context, size_t n, float max_abs,
                           size_t k, size_t* expected_count);
// The CPU instance: ThresholdByHistogram over AbsHistogram of x.
float ThresholdByHistogram(const float* x, size_t n, size_t k, size_t* expected_count);

// Threads the CPU kernels use (default: hardware concurrency). 1 disables threading.
void SetCpuThreads(int threads);
int CpuThreads();
// Whether the CPU kernels may use AVX-512 / AVX2 where the processor has them (default: yes). No
// to both means the portable paths everywhere; the tests run all three.
void SetCpuAvx512(bool allowed);
void SetCpuAvx2(bool allowed);

}  // namespace cleave::kernels
