#include "cleave/compress/compressor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "cleave/core/error.h"
#include "cleave/kernels/sparsify.h"

namespace cleave {
namespace {

at::Tensor Sample(const std::string& distribution, int64_t n, uint64_t seed) {
  at::manual_seed(seed);
  if (distribution == "normal") return at::randn({n});
  if (distribution == "laplace") {
    const at::Tensor u = at::rand({n}) - 0.5;
    return -u.sign() * at::log1p(-2 * u.abs());
  }
  if (distribution == "student_t2") {  // normal / sqrt(chi2_2 / 2)
    const at::Tensor chi2 = -2 * at::log(at::rand({n}));
    return at::randn({n}) / at::sqrt(chi2 / 2);
  }
  return at::relu(at::randn({n}) + 0.1);  // post-ReLU
}

TEST(NormalQuantileTest, KnownValues) {
  EXPECT_NEAR(NormalQuantile(0.5), 0.0, 1e-12);
  EXPECT_NEAR(NormalQuantile(0.975), 1.959963984540054, 1e-9);
  EXPECT_NEAR(NormalQuantile(0.0005), -3.290526731491926, 1e-9);
  EXPECT_NEAR(NormalQuantile(1 - 1e-7), 5.199337582192816, 1e-7);
}

TEST(CompressorTest, TopKMatchesABruteForceSort) {
  const at::Tensor x = Sample("laplace", 5000, 1).view({50, 100});
  auto topk = MakeCompressor({Method::kTopK, 0.03, 1});
  const Selection s = topk->Compress(x);
  ASSERT_EQ(s.indices.size(), 150u);
  EXPECT_EQ(s.shape, (std::vector<int64_t>{50, 100}));
  const at::Tensor expected = std::get<0>(std::get<1>(x.view(-1).abs().topk(150)).sort());
  for (size_t i = 0; i < 150; ++i) {
    EXPECT_EQ(s.indices[i], expected[static_cast<int64_t>(i)].item<int64_t>());
    EXPECT_EQ(s.values[i], x.view(-1)[s.indices[i]].item<float>());
  }
  EXPECT_TRUE(
      Decompress(s).view(-1).index_select(0, expected).equal(x.view(-1).index_select(0, expected)));
}

// k = round(density * n), at least 1, at most n: what a server's density setting means in
// elements (e2e: 314 of each sample's 6272 at 5%).
TEST(CompressorTest, TargetCountRoundsToNearestAndKeepsAtLeastOne) {
  EXPECT_EQ(MakeCompressor({Method::kTopK, 0.05, 1})->TargetCount(6272), 314);  // 313.6
  EXPECT_EQ(MakeCompressor({Method::kTopK, 0.5, 1})->TargetCount(3), 2);        // 1.5
  EXPECT_EQ(MakeCompressor({Method::kTopK, 0.3, 1})->TargetCount(10), 3);
  EXPECT_EQ(MakeCompressor({Method::kTopK, 0.01, 1})->TargetCount(10), 1);  // 0.1, but never none
  EXPECT_EQ(MakeCompressor({Method::kTopK, 1.0, 1})->TargetCount(7), 7);
  EXPECT_EQ(MakeCompressor({Method::kTopK, 0.5, 1})->TargetCount(0), 0);
  EXPECT_EQ(MakeCompressor({Method::kTopK, 0.05, 1})->Compress(at::randn({6272})).indices.size(), 314u);
}

TEST(CompressorTest, NoneKeepsEverything) {
  const at::Tensor x = at::randn({3, 4});
  EXPECT_TRUE(Decompress(MakeCompressor({Method::kNone, 1.0, 1})->Compress(x)).equal(x));
}

TEST(CompressorTest, RandomKIsSeededAndChangesBetweenCalls) {
  const at::Tensor x = at::randn({10000});
  auto a = MakeCompressor({Method::kRandomK, 0.01, 7});
  auto b = MakeCompressor({Method::kRandomK, 0.01, 7});
  const Selection first = a->Compress(x);
  EXPECT_EQ(first.indices, b->Compress(x).indices);
  EXPECT_EQ(first.indices.size(), 100u);
  EXPECT_NE(first.indices, a->Compress(x).indices);
  for (size_t i = 0; i < 100; ++i) {
    EXPECT_EQ(first.values[i], x[first.indices[i]].item<float>());
  }
}

// A Selection reused across calls (other shapes, other methods' sizes) holds exactly what a fresh
// one would: nothing of the previous call survives.
TEST(CompressorTest, CompressingIntoAReusedSelectionEqualsAFreshOne) {
  for (const Method method : {Method::kGaussianKPlus, Method::kGaussianK, Method::kTopK}) {
    auto reused = MakeCompressor({method, 0.1, 3});
    auto fresh = MakeCompressor({method, 0.1, 3});
    Selection selection;
    for (const int64_t n : {300000, 20000, 300000, 5}) {
      const at::Tensor x = at::randn({n / 5 + 1, 5});
      reused->Compress(x, &selection);
      const Selection expected = fresh->Compress(x);
      EXPECT_EQ(selection.indices, expected.indices) << MethodName(method) << " n " << n;
      EXPECT_EQ(selection.values, expected.values);
      EXPECT_EQ(selection.shape, expected.shape);
      EXPECT_EQ(selection.numel, expected.numel);
    }
  }
}

// Brute force: the compressor sends exactly the |x| > t of the paper's threshold, in index order,
// both when the first threshold is accepted and when it is refined (post-ReLU, Laplace).
TEST(CompressorTest, GaussianKSelectsExactlyAboveItsThreshold) {
  const int64_t n = 1 << 16;
  for (const char* distribution : {"normal", "laplace", "student_t2", "post_relu"}) {
    for (const double density : {0.001, 0.01, 0.1, 1.0}) {
      const at::Tensor x = Sample(distribution, n, 2);
      auto gaussiank = MakeCompressor({Method::kGaussianK, density, 1});
      const auto k = static_cast<size_t>(gaussiank->TargetCount(n));
      const Selection s = gaussiank->Compress(x);
      size_t count = 0;
      const float threshold = GaussianKThreshold(x.data_ptr<float>(), n, k, &count);
      const at::Tensor expected = at::nonzero(x.abs() > threshold).view(-1);
      ASSERT_EQ(s.indices.size(), count) << distribution << " " << density;
      ASSERT_EQ(static_cast<int64_t>(count), expected.numel()) << distribution << " " << density;
      for (size_t i = 0; i < count; ++i) {
        ASSERT_EQ(s.indices[i], expected[static_cast<int64_t>(i)].item<int64_t>());
        ASSERT_EQ(s.values[i], x[s.indices[i]].item<float>());
      }
      if (std::string(distribution) == "normal" && density < 1.0) {
        EXPECT_NEAR(static_cast<double>(count), k, k / 3.0);  // the rule fits normal data
      }
    }
  }
}

TEST(MethodTest, EveryNameParsesBackToItsMethod) {
  ASSERT_EQ(MethodNames().size(), 5u);
  for (const std::string& name : MethodNames()) EXPECT_EQ(MethodName(ParseMethod(name)), name);
  EXPECT_EQ(MethodList(), "none, topk, gaussiank, gaussiank+, randomk");
  try {
    ParseMethod("top-k");
    FAIL() << "'top-k' parsed";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("(use none, topk, gaussiank, gaussiank+, randomk)"),
              std::string::npos)
        << error.what();
  }
}

TEST(CompressorTest, BadConfigsAreUserErrors) {
  EXPECT_THROW(ParseMethod("fancy"), UserError);
  EXPECT_THROW(MakeCompressor({Method::kTopK, 0.0, 1}), UserError);
  EXPECT_THROW(MakeCompressor({Method::kTopK, 1.5, 1}), UserError);
}

using LandingParam = std::tuple<std::string, double>;
class GaussianKPlusLanding : public ::testing::TestWithParam<LandingParam> {};

TEST_P(GaussianKPlusLanding, WithinTenPercentOfK) {
  const auto [distribution, density] = GetParam();
  const int64_t n = 1 << 20;
  const at::Tensor x = Sample(distribution, n, 3);
  auto plus = MakeCompressor({Method::kGaussianKPlus, density, 1});
  const int64_t k = plus->TargetCount(n);
  const double landed = static_cast<double>(plus->Compress(x).indices.size()) / k;
  EXPECT_GE(landed, 0.9) << distribution;
  EXPECT_LE(landed, 1.1) << distribution;
  size_t paper_count = 0;
  GaussianKThreshold(x.data_ptr<float>(), n, k, &paper_count);
  // gaussiank+'s method on CUDA tensors: the histogram zoom (its CPU reference).
  size_t expected = 0;
  const float* data = x.data_ptr<float>();
  const float t = kernels::ThresholdByHistogram(data, n, k, &expected);
  const double histogram_landed = static_cast<double>(kernels::CountAbove(data, n, t)) / k;
  EXPECT_GE(histogram_landed, 0.9) << distribution;
  EXPECT_LE(histogram_landed, 1.1) << distribution;
  std::printf(
      "[ landing  ] %-10s density %.3f: gaussiank+ %.3f k (histogram path %.3f k), "
      "gaussiank %.3f k\n",
      distribution.c_str(), density, landed, histogram_landed,
      static_cast<double>(paper_count) / k);
}

INSTANTIATE_TEST_SUITE_P(Distributions, GaussianKPlusLanding,
                         ::testing::Combine(::testing::Values("normal", "laplace", "student_t2",
                                                              "post_relu"),
                                            ::testing::Values(0.001, 0.01, 0.1)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(static_cast<int>(std::get<1>(info.param) * 1000));
                         });

// On a CUDA tensor (device path in CUDA builds, a copy otherwise) every method chooses what it
// chooses on the CPU: exactly for topk and randomk, closely for the threshold methods.
TEST(CompressorTest, CudaTensorsSelectLikeTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "LibTorch without CUDA or no device";
  for (const int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1} << 20}) {
    const at::Tensor x = Sample("laplace", n, 4);
    const at::Tensor on_device = x.to(at::kCUDA);
    for (const Method method :
         {Method::kTopK, Method::kRandomK, Method::kGaussianK, Method::kGaussianKPlus}) {
      const Selection cpu = MakeCompressor({method, 0.01, 3})->Compress(x);
      const Selection gpu = MakeCompressor({method, 0.01, 3})->Compress(on_device);
      EXPECT_EQ(gpu.shape, cpu.shape);
      const double k = static_cast<double>(std::max<int64_t>(1, std::llround(0.01 * n)));
      if (method == Method::kGaussianKPlus) {
        EXPECT_NEAR(static_cast<double>(gpu.indices.size()), k, 0.1 * k + 1)
            << MethodName(method) << n;
      } else if (method == Method::kGaussianK) {
        EXPECT_NEAR(static_cast<double>(gpu.indices.size()),
                    static_cast<double>(cpu.indices.size()), 0.001 * k + 1)
            << MethodName(method) << n;
      } else {
        EXPECT_EQ(gpu.indices, cpu.indices) << MethodName(method) << n;
        EXPECT_EQ(gpu.values, cpu.values) << MethodName(method) << n;
      }
      for (size_t i = 0; i < gpu.indices.size(); ++i) {
        ASSERT_EQ(gpu.values[i], x[gpu.indices[i]].item<float>());
        if (i > 0) {
          ASSERT_GT(gpu.indices[i], gpu.indices[i - 1]);
        }
      }
    }
  }
}

TEST(ErrorFeedbackTest, SentPlusResidualIsUpdatePlusOldResidualExactly) {
  for (const Method method :
       {Method::kTopK, Method::kGaussianK, Method::kGaussianKPlus, Method::kRandomK}) {
    ErrorFeedback feedback({method, 0.05, 1});
    at::Tensor old_residual = at::zeros({40, 50});
    for (int step = 0; step < 4; ++step) {
      const at::Tensor update = at::randn({40, 50});
      const Selection sent = feedback.Compress("layer1.weight", update);
      const at::Tensor residual = feedback.Residual("layer1.weight");
      EXPECT_TRUE((Decompress(sent) + residual).equal(update + old_residual)) << MethodName(method);
      for (uint32_t index : sent.indices) EXPECT_EQ(residual.view(-1)[index].item<float>(), 0.0f);
      old_residual = residual.clone();
    }
  }
}

}  // namespace
}  // namespace cleave
