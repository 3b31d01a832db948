// Image quality metrics for judging reconstructions: PSNR and SSIM (Wang et al. 2004).
#pragma once

#include <ATen/Tensor.h>

namespace cleave::privacy {

// Mean over the batch of each image's PSNR, 10 log10(data_range^2 / MSE_i), for two tensors of
// the same shape [N, ...]. Each image's MSE is floored at 1e-10 data_range^2, so identical images
// score 100 dB instead of infinity (and one perfect image cannot swamp the average).
double Psnr(const at::Tensor& original, const at::Tensor& reconstruction, double data_range = 1.0);

// Mean over the batch of each image's SSIM for [N, C, H, W] tensors (C = 1 for Fashion-MNIST;
// channels are averaged), as in Wang et al. 2004 and their reference code: an 11x11 Gaussian
// window with sigma 1.5 applied without padding ("valid", so H and W must be >= 11),
// K1 = 0.01, K2 = 0.03, C1 = (K1 L)^2, C2 = (K2 L)^2 with L = data_range, local variances and
// covariance weighted by the window (biased), the SSIM map averaged per image.
double Ssim(const at::Tensor& original, const at::Tensor& reconstruction, double data_range = 1.0);

}  // namespace cleave::privacy
