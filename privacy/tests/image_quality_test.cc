#include "cleave/privacy/image_quality.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cleave/core/error.h"

namespace cleave::privacy {
namespace {

TEST(PsnrTest, MatchesKnownValues) {
  const at::Tensor zeros = at::zeros({2, 1, 4, 4});
  EXPECT_NEAR(Psnr(zeros, zeros + 0.1), 20.0, 1e-5);  // MSE 0.01 -> 20 dB
  // 8-bit range: MSE 65.025 = 255^2 / 1000 -> 30 dB.
  EXPECT_NEAR(Psnr(zeros, zeros + std::sqrt(65.025), 255.0), 30.0, 1e-5);
  // Per image, then averaged: 20 dB and 40 dB give 30 dB (the PSNR of the mean MSE is 22.97).
  at::Tensor mixed = zeros.clone();
  mixed[0].fill_(0.1);
  mixed[1].fill_(0.01);
  EXPECT_NEAR(Psnr(zeros, mixed), 30.0, 1e-5);
  // Identical images are capped at 100 dB, not infinity.
  EXPECT_NEAR(Psnr(zeros, zeros), 100.0, 1e-9);
}

TEST(PsnrTest, RejectsMismatchedShapes) {
  EXPECT_THROW(Psnr(at::zeros({2, 1, 4, 4}), at::zeros({2, 1, 4, 5})), UserError);
  EXPECT_THROW(Psnr(at::zeros({2, 4}), at::zeros({2, 4}), 0.0), UserError);
}

// SSIM by explicit loops: Gaussian window, every fully covered 11x11 position, per image mean.
double ReferenceSsim(const at::Tensor& x_in, const at::Tensor& y_in, double range) {
  const at::Tensor x = x_in.to(at::kDouble).contiguous(), y = y_in.to(at::kDouble).contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  std::vector<double> window(121);
  double total = 0;
  for (int i = 0; i < 11; ++i) {
    for (int j = 0; j < 11; ++j) {
      window[i * 11 + j] = std::exp(-((i - 5) * (i - 5) + (j - 5) * (j - 5)) / (2 * 1.5 * 1.5));
      total += window[i * 11 + j];
    }
  }
  for (double& v : window) v /= total;
  const double c1 = std::pow(0.01 * range, 2), c2 = std::pow(0.03 * range, 2);
  const double* px = x.data_ptr<double>();
  const double* py = y.data_ptr<double>();
  double batch_sum = 0;
  for (int64_t b = 0; b < n; ++b) {
    double image_sum = 0;
    int64_t positions = 0;
    for (int64_t ch = 0; ch < c; ++ch) {
      const double* ix = px + (b * c + ch) * h * w;
      const double* iy = py + (b * c + ch) * h * w;
      for (int64_t r = 0; r + 11 <= h; ++r) {
        for (int64_t s = 0; s + 11 <= w; ++s) {
          double mx = 0, my = 0, xx = 0, yy = 0, xy = 0;
          for (int i = 0; i < 11; ++i) {
            for (int j = 0; j < 11; ++j) {
              const double g = window[i * 11 + j];
              const double a = ix[(r + i) * w + s + j], d = iy[(r + i) * w + s + j];
              mx += g * a;
              my += g * d;
              xx += g * a * a;
              yy += g * d * d;
              xy += g * a * d;
            }
          }
          const double vx = xx - mx * mx, vy = yy - my * my, cov = xy - mx * my;
          image_sum +=
              (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2));
          ++positions;
        }
      }
    }
    batch_sum += image_sum / static_cast<double>(positions);
  }
  return batch_sum / static_cast<double>(n);
}

class SsimSizeTest : public ::testing::TestWithParam<std::vector<int64_t>> {};

TEST_P(SsimSizeTest, IsOneForIdenticalImagesAndMatchesLoops) {
  at::manual_seed(5);
  const at::Tensor x = at::rand(GetParam());
  EXPECT_NEAR(Ssim(x, x), 1.0, 1e-9);
  const at::Tensor y = (x + 0.2 * at::randn(GetParam())).clamp(0, 1);
  const double value = Ssim(x, y);
  EXPECT_GT(value, 0.0);
  EXPECT_LT(value, 0.9);
  EXPECT_NEAR(value, ReferenceSsim(x, y, 1.0), 1e-9);
  EXPECT_NEAR(Ssim(y, x), value, 1e-12);  // symmetric
  // Scale-free given the range (float32 rounding of 255 x limits the agreement).
  EXPECT_NEAR(Ssim(255 * x, 255 * y, 255.0), value, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SsimSizeTest,
                         ::testing::Values(std::vector<int64_t>{1, 1, 11, 11},
                                           std::vector<int64_t>{3, 1, 28, 28},
                                           std::vector<int64_t>{2, 3, 16, 13}));

TEST(SsimTest, MatchesTheClosedFormForConstantImages) {
  // Every window is flat: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 1e-4.
  const at::Tensor a = at::full({2, 1, 14, 12}, 0.5), b = at::full({2, 1, 14, 12}, 0.25);
  EXPECT_NEAR(Ssim(a, b), (2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4), 1e-12);
}

TEST(SsimTest, FallsAsNoiseGrows) {
  at::manual_seed(6);
  const at::Tensor x = at::rand({4, 1, 28, 28});
  double previous = 1.0;
  for (double noise : {0.02, 0.1, 0.3}) {
    const double value = Ssim(x, x + noise * at::randn({4, 1, 28, 28}));
    EXPECT_LT(value, previous) << noise;
    previous = value;
  }
}

TEST(SsimTest, RejectsSmallOrNonImageTensors) {
  EXPECT_THROW(Ssim(at::zeros({1, 1, 10, 28}), at::zeros({1, 1, 10, 28})), UserError);
  EXPECT_THROW(Ssim(at::zeros({4, 784}), at::zeros({4, 784})), UserError);
  EXPECT_THROW(Ssim(at::zeros({1, 1, 28, 28}), at::zeros({2, 1, 28, 28})), UserError);
}

}  // namespace
}  // namespace cleave::privacy
