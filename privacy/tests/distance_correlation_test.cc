#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "cleave/privacy/distance_correlation.h"

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

at::Tensor ToTensor(const std::vector<std::vector<double>>& rows) {
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())},
                           at::kDouble);
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
  EXPECT_LT(plain, 0.2);                    // design notes: about 0.16 at n = 1024
  EXPECT_LT(std::fabs(corrected), 0.05);    // bias-corrected: near 0
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

TEST(DistanceCorrelationTest, GradientIsFiniteWithIdenticalRows) {
  at::Tensor x = at::randn({6, 4});
  x[3] = x[1];
  at::Tensor z = at::randn({6, 3}).requires_grad_(true);
  at::Tensor zz = z.clone();
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
                              DistanceCorrelation(x, minus).item<double>()) / (2 * h);
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
