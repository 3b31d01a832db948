#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <tuple>

#include "cleave/core/error.h"
#include "cleave/kernels/sparsify.h"
#include "random_data.h"

namespace cleave::kernels {
namespace {

using testing::Distribution;
using testing::RandomData;

class KernelSizes : public ::testing::TestWithParam<size_t> {};

TEST_P(KernelSizes, MomentsMatchADoubleReference) {
  const size_t n = GetParam();
  const auto x = RandomData(n, Distribution::kLaplace, n);
  double sum = 0, max_abs = 0;
  for (float v : x) {
    sum += v;
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(v)));
  }
  const double mean = n ? sum / n : 0;
  double m2 = 0;
  for (float v : x) m2 += (v - mean) * (v - mean);
  const Moments m = ComputeMoments(x.data(), n);
  EXPECT_EQ(m.n, n);
  EXPECT_NEAR(m.mean, mean, 1e-6 * (1 + std::fabs(mean)));  // float lanes, double merge
  EXPECT_NEAR(m.stddev, n ? std::sqrt(m2 / n) : 0, 1e-6);
  EXPECT_EQ(m.max_abs, max_abs);
}

TEST(MomentsTest, StableForALargeMeanAndSmallSpread) {
  // 1e4 + N(0, 1e-2): a naive E[x^2] - E[x]^2 in float loses every digit of the variance.
  auto x = RandomData(1 << 20, Distribution::kNormal, 3);
  for (float& v : x) v = 1e4f + 1e-2f * v;
  double sum = 0;
  for (float v : x) sum += v;
  const double mean = sum / x.size();
  double m2 = 0;
  for (float v : x) m2 += (v - mean) * (v - mean);
  const Moments m = ComputeMoments(x.data(), x.size());
  EXPECT_NEAR(m.mean, mean, 1e-6);
  EXPECT_NEAR(m.stddev, std::sqrt(m2 / x.size()), 1e-4 * std::sqrt(m2 / x.size()));
}

TEST_P(KernelSizes, AbsHistogramMatchesBruteForce) {
  const size_t n = GetParam();
  const auto x = RandomData(n, Distribution::kLaplace, n + 9);
  for (const auto& [lo, hi, bins] :
       {std::tuple<float, float, size_t>{0.0f, 4.0f, 2048}, {0.5f, 0.75f, 7}, {1.0f, 1e6f, 1}}) {
    std::vector<uint64_t> counts(bins, 12345), expected(bins, 0);
    const float scale = static_cast<float>(bins) / (hi - lo);
    for (float v : x) {
      const float m = std::fabs(v);
      if (m < lo || m >= hi) continue;
      const float position = (m - lo) * scale;
      expected[std::min(bins - 1, static_cast<size_t>(position))]++;
    }
    AbsHistogram(x.data(), n, lo, hi, bins, counts.data());
    EXPECT_EQ(counts, expected) << lo << " " << hi << " " << bins;
  }
  std::vector<uint64_t> one(1);
  EXPECT_THROW(AbsHistogram(x.data(), n, 1.0f, 1.0f, 1, one.data()), Error);
}

class ThresholdsAndSizes : public ::testing::TestWithParam<std::tuple<float, size_t>> {};

TEST_P(ThresholdsAndSizes, SelectAboveMatchesBruteForceInIndexOrder) {
  const auto [threshold, n] = GetParam();
  auto x = RandomData(n, Distribution::kNormal, n + 1);
  if (n > 10) x[n / 2] = 0.0f;  // a zero: above a negative threshold, not above 0
  std::vector<uint32_t> expected;
  for (size_t i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > threshold) expected.push_back(static_cast<uint32_t>(i));
  }
  EXPECT_EQ(CountAbove(x.data(), n, threshold), expected.size());
  std::vector<uint32_t> indices(n + 1);
  std::vector<float> values(n + 1);
  const size_t count = SelectAbove(x.data(), n, threshold, indices.data(), values.data(), n);
  ASSERT_EQ(count, expected.size());
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(indices[i], expected[i]);
    ASSERT_EQ(values[i], x[expected[i]]);
  }
  // Capacity smaller than the count: the first entries are written, the total is reported.
  if (count > 2) {
    std::vector<uint32_t> few(2);
    std::vector<float> few_values(2);
    EXPECT_EQ(SelectAbove(x.data(), n, threshold, few.data(), few_values.data(), 2), count);
    EXPECT_EQ(few[0], expected[0]);
    EXPECT_EQ(few[1], expected[1]);
  }
}

TEST_P(KernelSizes, TopKIsExact) {
  const size_t n = GetParam();
  const auto x = RandomData(n, Distribution::kStudentT2, n + 2);
  for (size_t k : {size_t{0}, size_t{1}, n / 100 + 1, n / 2, n}) {
    std::vector<uint32_t> indices(n + 1);
    std::vector<float> values(n + 1);
    const size_t got = TopK(x.data(), n, k, indices.data(), values.data());
    ASSERT_EQ(got, std::min(k, n));
    // Brute force: sort all positions by magnitude (ties: lower index).
    std::vector<uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
    std::vector<uint32_t> expected(order.begin(), order.begin() + static_cast<long>(got));
    std::sort(expected.begin(), expected.end());
    ASSERT_EQ(std::vector<uint32_t>(indices.begin(), indices.begin() + static_cast<long>(got)),
              expected);
    for (size_t i = 0; i < got; ++i) ASSERT_EQ(values[i], x[indices[i]]);
  }
}

TEST_P(KernelSizes, RandomKIsSeededDistinctAndAscending) {
  const size_t n = GetParam();
  const auto x = RandomData(n, Distribution::kNormal, 3);
  for (size_t k : {size_t{0}, size_t{1}, n / 10 + 1, n * 3 / 4, n}) {
    std::vector<uint32_t> a(n + 1), b(n + 1);
    std::vector<float> va(n + 1), vb(n + 1);
    const size_t got = RandomK(x.data(), n, k, 42, a.data(), va.data());
    ASSERT_EQ(got, std::min(k, n));
    ASSERT_EQ(RandomK(x.data(), n, k, 42, b.data(), vb.data()), got);
    for (size_t i = 0; i < got; ++i) {
      ASSERT_EQ(a[i], b[i]);
      ASSERT_LT(a[i], n);
      if (i > 0) {
        ASSERT_GT(a[i], a[i - 1]);
      }
      ASSERT_EQ(va[i], x[a[i]]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, ThresholdsAndSizes,
                         ::testing::Combine(::testing::Values(-1.0f, 0.0f, 1.7f, 1e30f),
                                            ::testing::Values(0u, 1u, 17u, 4097u, 200003u)));

INSTANTIATE_TEST_SUITE_P(Sizes, KernelSizes,
                         ::testing::Values(0u, 1u, 2u, 255u, 257u, 4097u, 65537u, 200003u,
                                           1u << 20));

using LandingParam = std::tuple<Distribution, double>;
class SampledTopKLanding : public ::testing::TestWithParam<LandingParam> {};

// Runs `body` with each compaction: AVX-512, AVX2 (where the CPU has them) and the portable one.
template <typename Body>
void BothCompactions(Body body) {
  const struct {
    bool avx512, avx2;
    const char* name;
  } modes[] = {{true, true, "AVX-512 where the CPU has it"},
               {false, true, "AVX2 where the CPU has it"},
               {false, false, "portable paths"}};
  for (const auto& mode : modes) {
    SCOPED_TRACE(mode.name);
    SetCpuAvx512(mode.avx512);
    SetCpuAvx2(mode.avx2);
    body();
  }
  SetCpuAvx512(true);
  SetCpuAvx2(true);
}

// The exact top-k without zeros (which the sampled selection never takes), ascending.
std::vector<uint32_t> ExactNonzeroTopK(const std::vector<float>& x, size_t k) {
  std::vector<uint32_t> indices(x.size());
  std::vector<float> values(x.size());
  const size_t count = TopK(x.data(), x.size(), k, indices.data(), values.data());
  std::vector<uint32_t> nonzero;
  for (size_t i = 0; i < count; ++i) {
    if (values[i] != 0.0f) nonzero.push_back(indices[i]);
  }
  return nonzero;
}

TEST_P(SampledTopKLanding, SelectsExactlyTheTopKSet) {
  const auto [distribution, density] = GetParam();
  const size_t n = size_t{1} << 20;
  const auto x = RandomData(n, distribution, 11);
  const size_t k = static_cast<size_t>(density * n);
  const auto exact = ExactNonzeroTopK(x, k);
  BothCompactions([&] {
    std::vector<uint32_t> indices(n);
    std::vector<float> values(n);
    const size_t got = SelectTopKBySampling(x.data(), n, k, 7, indices.data(), values.data());
    const size_t nonzero = n - static_cast<size_t>(std::count(x.begin(), x.end(), 0.0f));
    ASSERT_EQ(got, std::min(k, nonzero));
    indices.resize(got);
    // The same positions as the exact top-k, ties towards lower indices included.
    EXPECT_EQ(indices, exact);
    for (size_t i = 0; i < got; ++i) ASSERT_EQ(values[i], x[indices[i]]);
  });
}

INSTANTIATE_TEST_SUITE_P(
    DistributionsDensities, SampledTopKLanding,
    ::testing::Combine(::testing::Values(Distribution::kNormal, Distribution::kLaplace,
                                         Distribution::kStudentT2, Distribution::kPostRelu),
                       ::testing::Values(0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0)),
    [](const auto& info) {
      return std::string(testing::Name(std::get<0>(info.param))) + "_" +
             std::to_string(static_cast<int>(std::get<1>(info.param) * 1000));
    });

// Many equal magnitudes (values on a coarse grid): the k-th magnitude is shared by thousands of
// elements and the lowest indices among them are the ones taken, as by TopK.
TEST(SampledTopK, TiesGoToLowerIndices) {
  const size_t n = 300007;
  std::vector<float> x = RandomData(n, Distribution::kNormal, 5);
  for (float& v : x) v = std::round(v * 4) / 4;
  BothCompactions([&] {
    for (size_t k : {1u, 100u, 3000u, 30000u, 150000u}) {
      std::vector<uint32_t> indices(n);
      std::vector<float> values(n);
      const size_t got = SelectTopKBySampling(x.data(), n, k, 3, indices.data(), values.data());
      indices.resize(got);
      EXPECT_EQ(indices, ExactNonzeroTopK(x, k)) << "k " << k;
    }
  });
}

// One workspace across calls of different sizes and thresholds gives what a fresh one gives.
TEST(SampledTopK, AReusedWorkspaceChangesNothing) {
  SelectionWorkspace workspace;
  for (const size_t n : {size_t{1} << 20, size_t{20000}, size_t{1} << 18, size_t{1} << 20}) {
    const auto x = RandomData(n, Distribution::kLaplace, n);
    const size_t k = n / 7;
    std::vector<uint32_t> a(n), b(n);
    std::vector<float> va(n), vb(n);
    const size_t reused = SelectTopKBySampling(x.data(), n, k, 9, a.data(), va.data(), &workspace);
    const size_t fresh = SelectTopKBySampling(x.data(), n, k, 9, b.data(), vb.data());
    ASSERT_EQ(reused, fresh);
    a.resize(reused);
    b.resize(fresh);
    EXPECT_EQ(a, b);
  }
}

// Inputs whose sample misleads (all the large values in one place the sample is unlikely to
// hit), small inputs (exact path) and mostly-zero inputs still give the exact set.
TEST(SampledTopK, StructuredSmallAndSparseInputs) {
  std::vector<float> clustered(1 << 20, 0.001f);
  for (size_t i = 500000; i < 500000 + 3000; ++i) clustered[i] = 1.0f + static_cast<float>(i % 7);
  std::vector<float> small = RandomData(5000, Distribution::kNormal, 1);
  std::vector<float> sparse(1 << 20, 0.0f);
  for (size_t i = 0; i < sparse.size(); i += 1000) sparse[i] = static_cast<float>(i % 13) - 6;
  BothCompactions([&] {
    for (const auto* x : {&clustered, &small, &sparse}) {
      for (const size_t k : {size_t{10}, size_t{2500}, size_t{4000}, x->size() / 5}) {
        std::vector<uint32_t> indices(x->size());
        std::vector<float> values(x->size());
        const size_t got =
            SelectTopKBySampling(x->data(), x->size(), k, 1, indices.data(), values.data());
        indices.resize(got);
        EXPECT_EQ(indices, ExactNonzeroTopK(*x, k)) << "n " << x->size() << " k " << k;
      }
    }
  });
}

class HistogramThresholdLanding : public ::testing::TestWithParam<LandingParam> {};

TEST_P(HistogramThresholdLanding, LandsWithinTenPercentOfK) {
  const auto [distribution, density] = GetParam();
  const size_t n = size_t{1} << 20;
  const auto x = RandomData(n, distribution, 13);
  const size_t k = static_cast<size_t>(density * n);
  size_t expected = 0;
  const float threshold = ThresholdByHistogram(x.data(), n, k, &expected);
  const size_t count = CountAbove(x.data(), n, threshold);
  EXPECT_GE(count, k * 9 / 10);
  EXPECT_LE(count, k * 11 / 10);
  // The histograms' count is what a selection finds, up to elements on float bin edges.
  EXPECT_NEAR(static_cast<double>(expected), static_cast<double>(count), 2 + 0.001 * k);
}

INSTANTIATE_TEST_SUITE_P(
    DistributionsDensities, HistogramThresholdLanding,
    ::testing::Combine(::testing::Values(Distribution::kNormal, Distribution::kLaplace,
                                         Distribution::kStudentT2, Distribution::kPostRelu),
                       ::testing::Values(0.001, 0.01, 0.1)),
    [](const auto& info) {
      return std::string(testing::Name(std::get<0>(info.param))) + "_" +
             std::to_string(static_cast<int>(std::get<1>(info.param) * 1000));
    });

TEST(HistogramThresholdTest, EdgeCases) {
  size_t expected = 99;
  const std::vector<float> zeros(1000, 0.0f);
  EXPECT_EQ(ThresholdByHistogram(zeros.data(), zeros.size(), 10, &expected), 0.0f);
  EXPECT_EQ(expected, 0u);
  EXPECT_TRUE(std::isinf(ThresholdByHistogram(zeros.data(), 0, 10, &expected)));
  EXPECT_EQ(expected, 0u);
  const auto x = RandomData(5000, Distribution::kNormal, 4);
  // k = n: everything nonzero; k = 1: the largest magnitude alone.
  EXPECT_EQ(
      CountAbove(x.data(), x.size(), ThresholdByHistogram(x.data(), x.size(), 5000, &expected)),
      5000u);
  EXPECT_EQ(CountAbove(x.data(), x.size(), ThresholdByHistogram(x.data(), x.size(), 1, &expected)),
            1u);
}

TEST(KernelThreadsTest, SingleAndMultiThreadedAgree) {
  const auto x = RandomData(1 << 20, Distribution::kNormal, 9);
  SetCpuThreads(1);
  const Moments one = ComputeMoments(x.data(), x.size());
  const size_t count_one = CountAbove(x.data(), x.size(), 2.0f);
  SetCpuThreads(4);
  const Moments four = ComputeMoments(x.data(), x.size());
  EXPECT_EQ(CountAbove(x.data(), x.size(), 2.0f), count_one);
  EXPECT_NEAR(one.mean, four.mean, 1e-12);
  EXPECT_NEAR(one.stddev, four.stddev, 1e-12);
  SetCpuThreads(0);
  EXPECT_GE(CpuThreads(), 1);
}

}  // namespace
}  // namespace cleave::kernels
