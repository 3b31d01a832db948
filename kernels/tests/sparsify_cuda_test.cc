// The CUDA backend against the CPU reference on random inputs; skipped without a GPU.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "cleave/kernels/sparsify.h"
#include "random_data.h"

#ifdef CLEAVE_HAVE_CUDA
#include <cuda_runtime.h>

#include "cleave/kernels/sparsify_cuda.h"
#endif

namespace cleave::kernels {
namespace {

using testing::Distribution;
using testing::RandomData;

class CudaVsCpu : public ::testing::TestWithParam<size_t> {
 protected:
  void SetUp() override {
#ifdef CLEAVE_HAVE_CUDA
    if (!cuda::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
#else
    GTEST_SKIP() << "built without CUDA";
#endif
  }
};

#ifdef CLEAVE_HAVE_CUDA
template <typename T>
struct Device {
  T* ptr = nullptr;
  size_t n;
  explicit Device(const std::vector<T>& host) : Device(host.size()) {
    if (n) Check(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit Device(size_t count) : n(count) {
    Check(cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)));
  }
  ~Device() { cudaFree(ptr); }
  std::vector<T> Host(size_t count) const {
    std::vector<T> out(count);
    if (count) Check(cudaMemcpy(out.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }
  static void Check(cudaError_t status) {
    if (status != cudaSuccess) throw std::runtime_error(cudaGetErrorString(status));
  }
};
#endif

TEST_P(CudaVsCpu, EveryOperationMatches) {
#ifdef CLEAVE_HAVE_CUDA
  const size_t n = GetParam();
  const auto x = RandomData(n, Distribution::kLaplace, n + 3);
  Device<float> dx(x);
  const Moments cpu = ComputeMoments(x.data(), n);
  const Moments gpu = cuda::ComputeMoments(dx.ptr, n);
  EXPECT_NEAR(gpu.mean, cpu.mean, 1e-6 * (1 + std::fabs(cpu.mean)));
  EXPECT_NEAR(gpu.stddev, cpu.stddev, 1e-5 * (1 + cpu.stddev));
  EXPECT_EQ(gpu.max_abs, cpu.max_abs);

  std::vector<uint64_t> cpu_counts(kHistogramBins), gpu_counts(kHistogramBins);
  AbsHistogram(x.data(), n, 0.25f, 3.0f, kHistogramBins, cpu_counts.data());
  cuda::AbsHistogram(dx.ptr, n, 0.25f, 3.0f, kHistogramBins, gpu_counts.data());
  EXPECT_EQ(gpu_counts, cpu_counts);
  for (size_t k : {size_t{1}, n / 100 + 1, n / 3}) {
    size_t cpu_expected = 0, gpu_expected = 0;
    EXPECT_EQ(cuda::ThresholdByHistogram(dx.ptr, n, k, &gpu_expected),
              ThresholdByHistogram(x.data(), n, k, &cpu_expected));
    EXPECT_EQ(gpu_expected, cpu_expected);
  }
  std::vector<uint32_t> ci(n + 1);
  std::vector<float> cv(n + 1);
  Device<uint32_t> gi(n + 1);
  Device<float> gv(n + 1);
  for (const float threshold : {-1.0f, 0.0f, 1.3f}) {
    EXPECT_EQ(cuda::CountAbove(dx.ptr, n, threshold), CountAbove(x.data(), n, threshold));
    const size_t count = SelectAbove(x.data(), n, threshold, ci.data(), cv.data(), n);
    ASSERT_EQ(cuda::SelectAbove(dx.ptr, n, threshold, gi.ptr, gv.ptr, n), count);
    EXPECT_EQ(gi.Host(count), std::vector<uint32_t>(ci.begin(), ci.begin() + count));
    EXPECT_EQ(gv.Host(count), std::vector<float>(cv.begin(), cv.begin() + count));
  }
  for (size_t k : {size_t{1}, n / 7 + 1, n}) {
    const size_t kk = TopK(x.data(), n, k, ci.data(), cv.data());
    ASSERT_EQ(cuda::TopK(dx.ptr, n, k, gi.ptr, gv.ptr), kk);
    EXPECT_EQ(gi.Host(kk), std::vector<uint32_t>(ci.begin(), ci.begin() + kk));
    const size_t rk = RandomK(x.data(), n, k, 5, ci.data(), cv.data());
    ASSERT_EQ(cuda::RandomK(dx.ptr, n, k, 5, gi.ptr, gv.ptr), rk);
    EXPECT_EQ(gv.Host(rk), std::vector<float>(cv.begin(), cv.begin() + rk));
  }
#endif
}

// The scratch slots are kept between calls: a large call, then small ones, then a larger one
// (slots grown, not shrunk) still give the CPU's answers.
TEST_P(CudaVsCpu, ScratchKeptBetweenCallsOfOtherSizes) {
#ifdef CLEAVE_HAVE_CUDA
  const size_t base = GetParam();
  for (const size_t n : {base, size_t{300}, base / 2 + 7, base + 4097}) {
    const auto x = RandomData(n, Distribution::kNormal, n + 11);
    Device<float> dx(x);
    std::vector<uint32_t> ci(n + 1);
    std::vector<float> cv(n + 1);
    Device<uint32_t> gi(n + 1);
    Device<float> gv(n + 1);
    const size_t count = SelectAbove(x.data(), n, 1.1f, ci.data(), cv.data(), n);
    ASSERT_EQ(cuda::SelectAbove(dx.ptr, n, 1.1f, gi.ptr, gv.ptr, n), count) << "n " << n;
    EXPECT_EQ(gi.Host(count), std::vector<uint32_t>(ci.begin(), ci.begin() + count));
    const size_t k = n / 9 + 1;
    const size_t kk = TopK(x.data(), n, k, ci.data(), cv.data());
    ASSERT_EQ(cuda::TopK(dx.ptr, n, k, gi.ptr, gv.ptr), kk);
    EXPECT_EQ(gi.Host(kk), std::vector<uint32_t>(ci.begin(), ci.begin() + kk));
    EXPECT_EQ(cuda::CountAbove(dx.ptr, n, 0.5f), CountAbove(x.data(), n, 0.5f));
  }
#endif
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaVsCpu,
                         ::testing::Values(0u, 1u, 255u, 256u, 257u, 1000u, 65537u, 1u << 20,
                                           (1u << 22) + 13));

}  // namespace
}  // namespace cleave::kernels
