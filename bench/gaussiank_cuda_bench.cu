// Standalone CUDA benchmark of Gaussian-k selection (needs only the CUDA toolkit): time per call,
// achieved GB/s and the ratio to the bandwidth floor, where the floor is the bytes that must move
// (read n floats once, write k (index, value) pairs) over the measured device-to-device copy
// bandwidth. Compare with bench/torch_topk.py run on the same GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "cleave/kernels/sparsify_cuda.h"

namespace {

#define CHECK(call)                                                                   \
  do {                                                                                \
    cudaError_t e = (call);                                                           \
    if (e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

double NormalQuantile(double p) {  // bisection on erfc: enough for a benchmark
  double lo = -10, hi = 10;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return (lo + hi) / 2;
}

template <typename Fn>
float TimeMs(Fn&& fn, int repeats) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  fn();  // warm-up
  CHECK(cudaEventRecord(start));
  for (int i = 0; i < repeats; ++i) fn();
  CHECK(cudaEventRecord(stop));
  CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, start, stop));
  return ms / repeats;
}

}  // namespace

int main() {
  if (!cleave::kernels::cuda::DeviceAvailable()) {
    std::printf("bench_gaussiank_cuda: no CUDA device; nothing to measure\n");
    return 0;
  }
  cudaDeviceProp properties{};
  CHECK(cudaGetDeviceProperties(&properties, 0));
  std::printf("device: %s\n", properties.name);
  std::printf("%-11s %10s %8s %10s %12s %10s %12s %12s\n", "method", "n", "density", "selected",
              "ms/call", "GB/s", "copy GB/s", "x floor");
  for (int log_n : {24, 26}) {
    const size_t n = size_t{1} << log_n;
    std::vector<float> host(n);
    std::mt19937_64 rng(1);
    std::normal_distribution<float> normal(0, 1);
    for (float& v : host) v = normal(rng);
    float *x, *copy, *values;
    uint32_t* indices;
    CHECK(cudaMalloc(&x, n * sizeof(float)));
    CHECK(cudaMalloc(&copy, n * sizeof(float)));
    CHECK(cudaMalloc(&values, n * sizeof(float)));
    CHECK(cudaMalloc(&indices, n * sizeof(uint32_t)));
    CHECK(cudaMemcpy(x, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    const float copy_ms = TimeMs(
        [&] { CHECK(cudaMemcpy(copy, x, n * sizeof(float), cudaMemcpyDeviceToDevice)); }, 20);
    const double copy_bandwidth = 2.0 * n * sizeof(float) / (copy_ms * 1e-3);  // read + write
    namespace kc = cleave::kernels::cuda;
    for (const double density : {0.01, 0.1, 0.25}) {
    const size_t k = static_cast<size_t>(density * n);
    // The paper's rule (moments, counts, up to three refinements, one selection).
    auto gaussiank = [&] {
      const auto moments = kc::ComputeMoments(x, n);
      float t = static_cast<float>(moments.mean + moments.stddev * NormalQuantile(1 - density / 2));
      size_t count = kc::CountAbove(x, n, t);
      for (int loop = 0; loop < 3 && (3 * count < 2 * k || 3 * count > 4 * k); ++loop) {
        t *= 3 * count < 2 * k ? 0.5f : 1.5f;
        count = kc::CountAbove(x, n, t);
      }
      return kc::SelectAbove(x, n, t, indices, values, n);
    };
    // gaussiank+ on the GPU: histogram zoom onto the k-th magnitude, then one selection.
    auto histogram = [&] {
      size_t expected = 0;
      const float t = kc::ThresholdByHistogram(x, n, k, &expected);
      return kc::SelectAbove(x, n, t, indices, values, n);
    };
    struct Method {
      const char* name;
      std::function<size_t()> run;
    };
    for (const Method& method : {Method{"gaussiank", gaussiank}, Method{"gaussiank+", histogram}}) {
      size_t selected = 0;
      const float ms = TimeMs([&] { selected = method.run(); }, 20);
      const double bytes = n * sizeof(float) + selected * (sizeof(float) + sizeof(uint32_t));
      const double floor_ms = bytes / copy_bandwidth * 1e3;
      std::printf("%-11s %10zu %8.2f %10zu %12.3f %10.1f %12.1f %12.2f\n", method.name, n, density,
                  selected, ms, bytes / (ms * 1e-3) / 1e9, copy_bandwidth / 1e9, ms / floor_ms);
    }
    }
    cudaFree(x);
    cudaFree(copy);
    cudaFree(values);
    cudaFree(indices);
  }
  return 0;
}
