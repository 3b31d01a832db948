#include "cleave/privacy/image_quality.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "cleave/core/error.h"

namespace cleave::privacy {

namespace {

constexpr int64_t kSsimWindow = 11;
constexpr double kSsimSigma = 1.5;
constexpr double kSsimK1 = 0.01;
constexpr double kSsimK2 = 0.03;
constexpr double kMseFloor = 1e-10;  // relative to data_range^2: caps PSNR at 100 dB

void CheckSameShape(const at::Tensor& original, const at::Tensor& reconstruction,
                    const char* metric) {
  CLEAVE_CHECK_USER(
      original.defined() && reconstruction.defined() && original.sizes() == reconstruction.sizes(),
      metric, " needs two tensors of the same shape, got ",
      original.defined() ? original.sizes() : at::IntArrayRef{}, " and ",
      reconstruction.defined() ? reconstruction.sizes() : at::IntArrayRef{});
  CLEAVE_CHECK_USER(original.dim() >= 2 && original.size(0) > 0 && original.numel() > 0, metric,
                    " needs a non-empty batch [N, ...], got ", original.sizes());
}

// Normalised 2-D Gaussian window [channels, 1, 11, 11] for a depthwise convolution.
at::Tensor GaussianWindow(int64_t channels, const at::TensorOptions& options) {
  const at::Tensor offsets =
      at::arange(kSsimWindow, options) - static_cast<double>(kSsimWindow / 2);
  at::Tensor profile = at::exp(-offsets.pow(2) / (2 * kSsimSigma * kSsimSigma));
  profile = profile / profile.sum();
  return at::outer(profile, profile).expand({channels, 1, kSsimWindow, kSsimWindow}).contiguous();
}

}  // namespace

double Psnr(const at::Tensor& original, const at::Tensor& reconstruction, double data_range) {
  CheckSameShape(original, reconstruction, "PSNR");
  CLEAVE_CHECK_USER(data_range > 0, "PSNR needs a positive data range, got ", data_range);
  const int64_t n = original.size(0);
  const at::Tensor difference =
      (original.to(at::kDouble) - reconstruction.to(at::kDouble)).reshape({n, -1});
  const double squared_range = data_range * data_range;
  const at::Tensor mse = difference.pow(2).mean(1).clamp_min(kMseFloor * squared_range);
  return (10.0 * at::log10(squared_range / mse)).mean().item<double>();
}

double Ssim(const at::Tensor& original, const at::Tensor& reconstruction, double data_range) {
  CheckSameShape(original, reconstruction, "SSIM");
  CLEAVE_CHECK_USER(original.dim() == 4, "SSIM needs images [N, C, H, W], got ", original.sizes());
  CLEAVE_CHECK_USER(original.size(2) >= kSsimWindow && original.size(3) >= kSsimWindow,
                    "SSIM needs images of at least ", kSsimWindow, "x", kSsimWindow, ", got ",
                    original.sizes());
  CLEAVE_CHECK_USER(data_range > 0, "SSIM needs a positive data range, got ", data_range);
  const at::Tensor x = original.to(at::kDouble);
  const at::Tensor y = reconstruction.to(at::kDouble);
  const int64_t channels = x.size(1);
  const at::Tensor window = GaussianWindow(channels, x.options());
  // Depthwise, unpadded: every local statistic sees a full window.
  const std::vector<int64_t> ones = {1, 1}, zeros = {0, 0};
  auto filter = [&](const at::Tensor& t) {
    return at::conv2d(t, window, /*bias=*/at::Tensor(), /*stride=*/ones, /*padding=*/zeros,
                      /*dilation=*/ones, /*groups=*/channels);
  };
  const at::Tensor mu_x = filter(x);
  const at::Tensor mu_y = filter(y);
  const at::Tensor var_x = filter(x * x) - mu_x * mu_x;
  const at::Tensor var_y = filter(y * y) - mu_y * mu_y;
  const at::Tensor covariance = filter(x * y) - mu_x * mu_y;
  const double c1 = std::pow(kSsimK1 * data_range, 2);
  const double c2 = std::pow(kSsimK2 * data_range, 2);
  const at::Tensor map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) /
                         ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2));
  return map.reshape({x.size(0), -1}).mean(1).mean().item<double>();
}

}  // namespace cleave::privacy
