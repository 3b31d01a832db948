// The threshold rule of Gaussian-k (Shi et al. 2019) over any backend: the CPU and CUDA paths
// of the compressors share it, so both choose the same way.
#pragma once

#include <cstddef>
#include <limits>

#include "cleave/compress/compressor.h"
#include "cleave/kernels/sparsify.h"

namespace cleave::detail {

// moments(): kernels::Moments of the data; count_above(t): the number of |x| > t.
template <typename MomentsFn, typename CountFn>
float GaussianKRule(size_t n, size_t k, MomentsFn moments, CountFn count_above,
                    size_t* count_at_threshold) {
  if (n == 0 || k == 0) {
    *count_at_threshold = 0;
    return std::numeric_limits<float>::infinity();
  }
  const kernels::Moments m = moments();
  const double density = static_cast<double>(k) / static_cast<double>(n);
  float threshold =
      k >= n ? -1.0f : static_cast<float>(m.mean + m.stddev * NormalQuantile(1 - density / 2));
  size_t count = count_above(threshold);
  // Shi et al.'s refinement: at most three corrections; the selection uses the last threshold
  // whose count is known.
  for (int loop = 0; loop < 3; ++loop) {
    if (3 * count < 2 * k) {
      threshold *= 0.5f;
    } else if (3 * count > 4 * k) {
      threshold *= 1.5f;
    } else {
      break;
    }
    count = count_above(threshold);
  }
  *count_at_threshold = count;
  return threshold;
}

}  // namespace cleave::detail
