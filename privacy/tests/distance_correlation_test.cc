#include "cleave/privacy/distance_correlation.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "cleave/core/error.h"

namespace cleave::privacy {
namespace {

// dCor by explicit loops in double, straight from the definition (Szekely et al. 2007).
double ReferenceDcor(const std::vector<std::vector<double>>& x,
                     const std::vector<std::vector<double>>& z) {
  const size_t n = x.size();
  auto distances = [n](const std::vector<std::vector<double>>& rows) {
    std::vector<std::vector<double>> d(n, std::vector<double>(n));
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        double s = 0;
        for (size_t k = 0; k < rows[i].size(); ++k) s += std::pow(rows[i][k] - rows[j][k], 2);
        d[i][j] = std::sqrt(s);
      }
    }
    std::vector<double> row_mean(n, 0), col_mean(n, 0);
    double mean = 0;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        row_mean[i] += d[i][j] / n;
        col_mean[j] += d[i][j] / n;
        mean += d[i][j] / (n * n);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) d[i][j] += mean - row_mean[i] - col_mean[j];
    }
    return d;
  };
  const auto a = distances(x), b = distances(z);
  double xy = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      xy += a[i][j] * b[i][j];
      xx += a[i][j] * a[i][j];
      yy += b[i][j] * b[i][j];
    }
  }
  return std::sqrt(xy / std::sqrt(xx * yy));
}

// Bias-corrected dCor^2 by explicit loops (Szekely & Rizzo 2014): U-centred distance matrices
// (zero diagonal), inner products over i != j divided by n (n - 3).
double ReferenceBiasCorrectedDcor2(const std::vector<std::vector<double>>& x,
                                   const std::vector<std::vector<double>>& z) {
  const size_t n = x.size();
  auto u_centred = [n](const std::vector<std::vector<double>>& rows) {
    std::vector<std::vector<double>> d(n, std::vector<double>(n));
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        double s = 0;
        for (size_t k = 0; k < rows[i].size(); ++k) s += std::pow(rows[i][k] - rows[j][k], 2);
        d[i][j] = std::sqrt(s);
      }
    }
    std::vector<double> row_sum(n, 0);
    double total = 0;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        row_sum[i] += d[i][j];
        total += d[i][j];
      }
    }
    std::vector<std::vector<double>> u(n, std::vector<double>(n, 0.0));
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        if (i == j) continue;  // symmetric distances: column sums equal row sums
        u[i][j] = d[i][j] - row_sum[i] / (n - 2.0) - row_sum[j] / (n - 2.0) +
                  total / ((n - 1.0) * (n - 2.0));
      }
    }
    return u;
  };
  const auto a = u_centred(x), b = u_centred(z);
  double xy = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      xy += a[i][j] * b[i][j];
      xx += a[i][j] * a[i][j];
      yy += b[i][j] * b[i][j];
    }
  }
  return xy / std::sqrt(xx * yy);  // the n (n - 3) normalisers cancel
}

std::vector<std::vector<double>> RandomRows(size_t n, size_t dims, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> rows(n, std::vector<double>(dims));
  for (auto& row : rows) {
    for (double& v : row) v = normal(rng);
  }
  return rows;
}

at::Tensor ToTensor(const std::vector<std::vector<double>>& rows) {
  at::Tensor t = at::empty(
      {static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())}, at::kDouble);
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t k = 0; k < rows[i].size(); ++k) t[i][k] = rows[i][k];
  }
  return t;
}

TEST(DistanceCorrelationTest, MatchesAHandComputedExample) {
  const std::vector<std::vector<double>> x = {{1, 0}, {0, 2}, {3, 1}, {-1, -1}, {2, 2}};
  const std::vector<std::vector<double>> z = {{1}, {4}, {2}, {0}, {5}};
  const double expected = ReferenceDcor(x, z);
  EXPECT_GT(expected, 0.3);
  EXPECT_LT(expected, 1.0);
  EXPECT_NEAR(DistanceCorrelation(ToTensor(x), ToTensor(z)).item<double>(), expected, 1e-9);
}

// (n, dims of X, dims of Z): both estimators against the loop references, with a dependent Z.
class DistanceCorrelationSizeTest
    : public ::testing::TestWithParam<std::tuple<size_t, size_t, size_t>> {};

TEST_P(DistanceCorrelationSizeTest, MatchesLoopReferences) {
  const auto [n, x_dims, z_dims] = GetParam();
  std::mt19937_64 rng(n * 100 + x_dims * 10 + z_dims);
  const auto x = RandomRows(n, x_dims, rng);
  auto z = RandomRows(n, z_dims, rng);
  for (size_t i = 0; i < n; ++i) z[i][0] += x[i][0] * x[i][0];  // nonlinear dependence
  const double plain = DistanceCorrelation(ToTensor(x), ToTensor(z)).item<double>();
  EXPECT_NEAR(plain, ReferenceDcor(x, z), 1e-9);
  EXPECT_NEAR(BiasCorrectedDistanceCorrelation(ToTensor(x), ToTensor(z)).item<double>(),
              ReferenceBiasCorrectedDcor2(x, z), 1e-9);
  // Both from one computation of the distances (row products in float): the same two values.
  const DistanceCorrelations both = BothDistanceCorrelations(ToTensor(x), ToTensor(z));
  EXPECT_NEAR(both.plain.item<double>(), ReferenceDcor(x, z), 1e-6);
  EXPECT_NEAR(both.bias_corrected.item<double>(), ReferenceBiasCorrectedDcor2(x, z), 1e-6);
  // Float inputs: same value (computed in double inside), float result.
  const at::Tensor as_float =
      DistanceCorrelation(ToTensor(x).to(at::kFloat), ToTensor(z).to(at::kFloat));
  EXPECT_EQ(as_float.scalar_type(), at::kFloat);
  EXPECT_NEAR(as_float.item<double>(), plain, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Sizes, DistanceCorrelationSizeTest,
                         ::testing::Values(std::make_tuple(4, 1, 1), std::make_tuple(7, 3, 2),
                                           std::make_tuple(16, 10, 5), std::make_tuple(65, 20, 3)));

TEST(DistanceCorrelationTest, IsOneForTheSameDataAndSimilarityTransforms) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({64, 5}, at::kDouble);
  EXPECT_NEAR(DistanceCorrelation(x, x).item<double>(), 1.0, 1e-9);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({5, 5}, at::kDouble)));  // orthogonal
  const at::Tensor transformed = 3.5 * x.matmul(q) + at::randn({1, 5}, at::kDouble);
  EXPECT_NEAR(DistanceCorrelation(x, transformed).item<double>(), 1.0, 1e-9);
  // Works on [n, C, H, W] batches (flattened rows).
  const at::Tensor images = at::rand({16, 1, 4, 4}, at::kDouble);
  EXPECT_NEAR(DistanceCorrelation(images, 2 * images).item<double>(), 1.0, 1e-9);
}

TEST(DistanceCorrelationTest, IndependentSamplesAreSmallForLargeN) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({1024, 10}), z = at::randn({1024, 5});
  const double plain = DistanceCorrelation(x, z).item<double>();
  const double corrected = BiasCorrectedDistanceCorrelation(x, z).item<double>();
  EXPECT_LT(plain, 0.2);                  // design notes: about 0.16 at n = 1024
  EXPECT_LT(std::fabs(corrected), 0.05);  // bias-corrected: near 0
  // The plain estimator is biased upward on small batches (about 0.54 at n = 64).
  const at::Tensor xs = at::randn({64, 10}), zs = at::randn({64, 5});
  EXPECT_GT(DistanceCorrelation(xs, zs).item<double>(), 0.35);
  EXPECT_NEAR(IndependenceBaseline(xs, zs, 7), DistanceCorrelation(xs, zs).item<double>(), 0.2);
}

TEST(DistanceCorrelationTest, ValuesStayInTheUnitInterval) {
  at::manual_seed(3);
  for (int trial = 0; trial < 20; ++trial) {
    const at::Tensor x = at::randn({8 + trial, 3});
    const at::Tensor z = trial % 2 ? x.pow(3) : at::randn({8 + trial, 2});
    const double d = DistanceCorrelation(x, z).item<double>();
    EXPECT_GE(d, 0.0);
    EXPECT_LE(d, 1.0 + 1e-6);
  }
  // Zero variance on one side: defined as 0.
  EXPECT_NEAR(DistanceCorrelation(at::randn({8, 3}), at::ones({8, 2})).item<double>(), 0, 1e-5);
}

TEST(DistanceCorrelationTest, ConstantRowsWithAnOffsetHaveZeroCorrelation) {
  // Identical rows whose Gram-matrix distances do not cancel exactly (norms far from 0): the
  // rounding noise left must not be read as a varying sample.
  at::manual_seed(8);
  const at::Tensor x = at::randn({32, 4});
  const at::Tensor row = at::rand({1, 784}) * 3.7 + 0.1;
  const at::Tensor constant = row.expand({32, 784}).contiguous();
  EXPECT_LT(DistanceCorrelation(x, constant).item<double>(), 1e-6);
  EXPECT_LT(DistanceCorrelation(constant, x).item<double>(), 1e-6);
  EXPECT_EQ(BiasCorrectedDistanceCorrelation(x, constant).item<double>(), 0.0);
  // Gradients stay finite (zero) through the zero-variance branch, also for exactly equal rows.
  for (const at::Tensor& rows : {constant, at::zeros({32, 3})}) {
    at::Tensor z = rows.clone().requires_grad_(true);
    DistanceCorrelation(x, z).backward();
    EXPECT_TRUE(at::isfinite(z.grad()).all().item<bool>());
    at::Tensor w = rows.clone().requires_grad_(true);
    BiasCorrectedDistanceCorrelation(x, w).backward();
    EXPECT_TRUE(at::isfinite(w.grad()).all().item<bool>());
  }
}

TEST(DistanceCorrelationTest, IgnoresALargeCommonOffsetInFloat) {
  at::manual_seed(9);
  const at::Tensor x = at::randn({64, 20}), z = x.slice(1, 0, 5) + 0.5 * at::randn({64, 5});
  const double reference = DistanceCorrelation(x.to(at::kDouble), z.to(at::kDouble)).item<double>();
  EXPECT_NEAR(DistanceCorrelation(x + 1000.0f, z).item<double>(), reference, 1e-4);
  EXPECT_NEAR(DistanceCorrelation(x, z - 500.0f).item<double>(), reference, 1e-4);
}

// The measurement path (row products in float) at the size cleave-client evaluates: 500
// Fashion-MNIST-like inputs against 500 wide, sparse, post-ReLU activations that depend on them,
// with a common offset on the inputs; the same values as the double computation.
TEST(DistanceCorrelationTest, BothEstimatesMatchTheDoubleComputationAtEvaluationSize) {
  at::manual_seed(12);
  const at::Tensor pixels = at::rand({500, 784});
  const at::Tensor z = at::relu((pixels - 0.5f).matmul(at::randn({784, 6272}) * 0.05f)) *
                       (at::rand({500, 6272}) < 0.25f).to(at::kFloat);
  const at::Tensor x = pixels + 3.0f;
  const DistanceCorrelations both = BothDistanceCorrelations(x, z);
  EXPECT_EQ(both.plain.scalar_type(), at::kFloat);
  const double plain = DistanceCorrelation(x, z).item<double>();
  const double corrected = BiasCorrectedDistanceCorrelation(x, z).item<double>();
  EXPECT_GT(corrected, 0.05);  // dependent, so the comparison is not between two zeros
  EXPECT_NEAR(both.plain.item<double>(), plain, 1e-6);
  EXPECT_NEAR(both.bias_corrected.item<double>(), corrected, 1e-6);
}

TEST(DistanceCorrelationTest, BiasCorrectedIsNearZeroForSmallIndependentBatches) {
  // n = 64: the plain estimator sits near 0.54 (design notes), the U-centred one near 0 (its
  // standard deviation is about 0.023 per batch here, so 0.02 is 6 standard errors of the mean).
  at::manual_seed(10);
  double plain = 0, corrected = 0, baseline = 0;
  const int trials = 50;
  for (int trial = 0; trial < trials; ++trial) {
    const at::Tensor x = at::randn({64, 10}), z = at::randn({64, 5});
    plain += DistanceCorrelation(x, z).item<double>() / trials;
    corrected += BiasCorrectedDistanceCorrelation(x, z).item<double>() / trials;
    baseline += IndependenceBaseline(x, z, trial, /*bias_corrected=*/true) / trials;
  }
  EXPECT_NEAR(plain, 0.54, 0.05);
  EXPECT_NEAR(corrected, 0.0, 0.02);
  EXPECT_NEAR(baseline, 0.0, 0.02);
}

TEST(DistanceCorrelationTest, IndependenceBaselineDestroysDependence) {
  at::manual_seed(15);
  const at::Tensor x = at::randn({256, 10});
  // Z is a 5-d normal fully determined by X: shuffled, it is the design notes' independent case.
  const at::Tensor z = x.slice(1, 0, 5) * 2;
  EXPECT_GT(DistanceCorrelation(x, z).item<double>(), 0.6);
  const double shuffled = IndependenceBaseline(x, z, 1);
  EXPECT_NEAR(shuffled, 0.31, 0.06);  // design notes: 0.31 at n = 256 for independent normals
  EXPECT_EQ(shuffled, IndependenceBaseline(x, z, 1));  // seeded
  EXPECT_NE(shuffled, IndependenceBaseline(x, z, 2));
}

TEST(DistanceCorrelationTest, RejectsMismatchedOrTinyBatches) {
  EXPECT_THROW(DistanceCorrelation(at::randn({8, 3}), at::randn({7, 3})), UserError);
  EXPECT_THROW(DistanceCorrelation(at::randn({1, 3}), at::randn({1, 3})), UserError);
  EXPECT_THROW(BiasCorrectedDistanceCorrelation(at::randn({3, 3}), at::randn({3, 3})), UserError);
}

TEST(DistanceCorrelationTest, GradientIsFiniteWithIdenticalRows) {
  at::Tensor x = at::randn({6, 4});
  x[3] = x[1];
  at::Tensor z = at::randn({6, 3}).requires_grad_(true);
  DistanceCorrelation(x, z).backward();
  EXPECT_TRUE(at::isfinite(z.grad()).all().item<bool>());
  at::Tensor same = at::randn({6, 3});
  same[2] = same[4];
  same.requires_grad_(true);
  DistanceCorrelation(x, same).backward();
  EXPECT_TRUE(at::isfinite(same.grad()).all().item<bool>());
}

TEST(DistanceCorrelationTest, GradientMatchesFiniteDifferencesInDouble) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({7, 3}, at::kDouble);
  at::Tensor z = at::randn({7, 2}, at::kDouble).requires_grad_(true);
  DistanceCorrelation(x, z).backward();
  const at::Tensor analytic = z.grad().clone();
  const double h = 1e-6;
  for (int64_t i = 0; i < z.size(0); ++i) {
    for (int64_t k = 0; k < z.size(1); ++k) {
      at::Tensor plus = z.detach().clone(), minus = z.detach().clone();
      plus[i][k] += h;
      minus[i][k] -= h;
      const double numeric = (DistanceCorrelation(x, plus).item<double>() -
                              DistanceCorrelation(x, minus).item<double>()) /
                             (2 * h);
      EXPECT_NEAR(analytic[i][k].item<double>(), numeric, 1e-6) << i << "," << k;
    }
  }
}

TEST(DistanceCorrelationTest, GradientWithRespectToTheInputsMatchesFiniteDifferences) {
  // Both sides carry gradients (the NoPeek term reaches inputs when they are themselves
  // activations of an earlier layer).
  at::manual_seed(16);
  at::Tensor x = at::randn({6, 4}, at::kDouble).requires_grad_(true);
  const at::Tensor z = x.detach().slice(1, 0, 2).pow(2) + 0.3 * at::randn({6, 2}, at::kDouble);
  BiasCorrectedDistanceCorrelation(x, z).backward();
  const at::Tensor analytic = x.grad().clone();
  const double h = 1e-6;
  for (int64_t i = 0; i < x.size(0); ++i) {
    for (int64_t k = 0; k < x.size(1); ++k) {
      at::Tensor plus = x.detach().clone(), minus = x.detach().clone();
      plus[i][k] += h;
      minus[i][k] -= h;
      const double numeric = (BiasCorrectedDistanceCorrelation(plus, z).item<double>() -
                              BiasCorrectedDistanceCorrelation(minus, z).item<double>()) /
                             (2 * h);
      EXPECT_NEAR(analytic[i][k].item<double>(), numeric, 1e-6) << i << "," << k;
    }
  }
}

TEST(NoPeekLossTest, ScalesWithAlpha) {
  const at::Tensor x = at::randn({10, 3}), z = at::randn({10, 3});
  EXPECT_NEAR(NoPeekLoss(x, z, 2.0).item<double>(), 2 * DistanceCorrelation(x, z).item<double>(),
              1e-6);
  EXPECT_EQ(NoPeekLoss(x, z, 0.0).item<double>(), 0.0);
}

}  // namespace
}  // namespace cleave::privacy
