// K-FAC's per-layer mathematics against direct computations: factors by explicit loops over
// samples and patches, the eigen-preconditioned gradient against (G ⊗ A + λI)⁻¹ vec(∇W) solved
// directly (and, with λ -> 0, against G⁻¹ ∇W A⁻¹), the KL clip's value.
#include "cleave/server/kfac_factors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

namespace cleave::server {
namespace {

at::Tensor RandomSpd(int64_t n, double shift) {
  const at::Tensor m = at::randn({n, 2 * n}, at::kDouble);
  return m.matmul(m.t()) / (2 * n) + shift * at::eye(n, at::kDouble);
}

TEST(KfacFactorsTest, LinearFactorsAreSumsOverSamples) {
  at::manual_seed(1);
  const int64_t batch = 5;
  const at::Tensor a = at::randn({batch, 3}, at::kDouble);
  const at::Tensor g = at::randn({batch, 2}, at::kDouble);
  at::Tensor a_direct = at::zeros({4, 4}, at::kDouble);
  at::Tensor g_direct = at::zeros({2, 2}, at::kDouble);
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor row = at::cat({a[b], at::ones({1}, at::kDouble)});
    a_direct += at::outer(row, row) / batch;
    const at::Tensor sample_gradient = g[b] * batch;  // the loss is a batch mean
    g_direct += at::outer(sample_gradient, sample_gradient) / batch;
  }
  EXPECT_TRUE(at::allclose(LinearInputFactor(a, true), a_direct, 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(LinearInputFactor(a, false), a_direct.slice(0, 0, 3).slice(1, 0, 3),
                           1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(LinearOutputGradientFactor(g), g_direct, 1e-10, 1e-12));
}

// Every output position's patch (channel outermost, then kernel row and column), gathered by
// hand from the zero-padded input.
TEST(KfacFactorsTest, ConvInputFactorUnfoldsPatches) {
  at::manual_seed(2);
  const int64_t batch = 2, channels = 2, size = 5;
  const at::Tensor x = at::randn({batch, channels, size, size}, at::kDouble);
  ConvGeometry geometry;
  geometry.kernel = {3, 2};
  geometry.stride = {2, 1};
  geometry.padding = {1, 0};
  const at::Tensor padded = at::constant_pad_nd(x, {0, 0, 1, 1});
  const int64_t out_h = (size + 2 - 3) / 2 + 1, out_w = size - 2 + 1;
  const int64_t positions = out_h * out_w;
  at::Tensor direct = at::zeros({channels * 6 + 1, channels * 6 + 1}, at::kDouble);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < out_h; ++y) {
      for (int64_t x0 = 0; x0 < out_w; ++x0) {
        const at::Tensor patch = padded[b].slice(1, y * 2, y * 2 + 3).slice(2, x0, x0 + 2);
        const at::Tensor row = at::cat({patch.reshape({-1}), at::ones({1}, at::kDouble)});
        direct += at::outer(row, row) / (positions * positions * batch);
      }
    }
  }
  EXPECT_TRUE(at::allclose(ConvInputFactor(x, geometry, true), direct, 1e-10, 1e-12));
}

TEST(KfacFactorsTest, ConvOutputGradientFactorSumsOverPositions) {
  at::manual_seed(3);
  const int64_t batch = 3, channels = 4, h = 2, w = 3;
  const at::Tensor g = at::randn({batch, channels, h, w}, at::kDouble);
  at::Tensor direct = at::zeros({channels, channels}, at::kDouble);
  const double scale = static_cast<double>(batch * h * w);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        const at::Tensor column = g[b].select(1, y).select(1, x) * scale;
        direct += at::outer(column, column) / (batch * h * w);
      }
    }
  }
  EXPECT_TRUE(at::allclose(ConvOutputGradientFactor(g), direct, 1e-10, 1e-12));
}

TEST(KfacFactorsTest, EigenReconstructsTheFactorWithoutNegativeValues) {
  at::manual_seed(4);
  const at::Tensor factor = RandomSpd(6, 0.1).to(at::kFloat);
  const EigenBasis basis = SymmetricEigen(factor);
  EXPECT_EQ(basis.vectors.scalar_type(), at::kFloat);
  const at::Tensor rebuilt = basis.vectors.matmul(at::diag(basis.values)).matmul(basis.vectors.t());
  EXPECT_TRUE(at::allclose(rebuilt, factor, 1e-4, 1e-5));
  // Rank one: the zero eigenvalues may come out slightly negative; they are clamped to 0.
  const at::Tensor v = at::randn({5}, at::kDouble);
  EXPECT_GE(SymmetricEigen(at::outer(v, v)).values.min().item<double>(), 0.0);
}

// With the eigen method, the damped preconditioner is (G ⊗ A + λI)⁻¹ on vec(∇W) (row-major
// vec: (G ⊗ A) vec(W) = vec(G W A) for symmetric G, A): solved directly here.
TEST(KfacFactorsTest, PreconditionedGradientEqualsTheDampedKroneckerSolve) {
  at::manual_seed(5);
  const at::Tensor a = RandomSpd(4, 0.0), g = RandomSpd(3, 0.0);
  const at::Tensor gradient = at::randn({3, 4}, at::kDouble);
  for (const double damping : {1e-3, 0.1, 1.0}) {
    const at::Tensor result =
        PreconditionWithEigen(gradient, SymmetricEigen(a), SymmetricEigen(g), damping);
    const at::Tensor system = at::kron(g, a) + damping * at::eye(12, at::kDouble);
    const at::Tensor direct = at::linalg_solve(system, gradient.reshape({12, 1})).reshape({3, 4});
    EXPECT_TRUE(at::allclose(result, direct, 1e-8, 1e-10)) << "damping " << damping;
  }
  // Without damping it is G⁻¹ ∇W A⁻¹.
  const at::Tensor a_spd = RandomSpd(4, 0.5), g_spd = RandomSpd(3, 0.5);
  const at::Tensor undamped =
      PreconditionWithEigen(gradient, SymmetricEigen(a_spd), SymmetricEigen(g_spd), 1e-12);
  const at::Tensor direct = at::linalg_solve(g_spd, gradient).matmul(at::linalg_inv(a_spd));
  EXPECT_TRUE(at::allclose(undamped, direct, 1e-8, 1e-10));
}

TEST(KfacFactorsTest, KlClipScale) {
  // sum = |4| x 0.1² = 0.04; sqrt(0.001 / 0.04) = 0.158...
  EXPECT_NEAR(KlClipScale(4.0, 0.1, 0.001), std::sqrt(0.001 / 0.04), 1e-12);
  EXPECT_NEAR(KlClipScale(-4.0, 0.1, 0.001), std::sqrt(0.001 / 0.04), 1e-12);
  EXPECT_EQ(KlClipScale(4.0, 0.1, 1.0), 1.0);
  EXPECT_EQ(KlClipScale(0.0, 0.1, 0.001), 1.0);
  EXPECT_EQ(KlClipScale(std::nan(""), 0.1, 0.001), 1.0);
  EXPECT_EQ(KlClipScale(INFINITY, 0.1, 0.001), 1.0);
}

TEST(KfacFactorsTest, GradientMatrixRoundTripsConvWeightAndBias) {
  const at::Tensor weight = at::randn({3, 2, 2, 2});
  const at::Tensor bias = at::randn({3});
  const at::Tensor matrix = GradientMatrix(weight, bias);
  ASSERT_EQ(matrix.sizes(), (std::vector<int64_t>{3, 9}));
  EXPECT_TRUE(matrix.select(1, 8).equal(bias));
  at::Tensor weight_out = at::zeros_like(weight), bias_out = at::zeros_like(bias);
  SetGradients(matrix, weight_out, bias_out);
  EXPECT_TRUE(weight_out.equal(weight));
  EXPECT_TRUE(bias_out.equal(bias));
}

}  // namespace
}  // namespace cleave::server
