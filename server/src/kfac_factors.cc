#include "cleave/server/kfac_factors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace cleave::server {

namespace {

at::Tensor AppendOnes(const at::Tensor& rows) {
  return at::cat({rows, at::ones({rows.size(0), 1}, rows.options())}, 1);
}

// [B, O, H, W] -> [B·H·W, O]: one row per output position.
at::Tensor PositionsAsRows(const at::Tensor& maps) {
  return maps.permute({0, 2, 3, 1}).reshape({-1, maps.size(1)});
}

}  // namespace

at::Tensor LinearInputFactor(const at::Tensor& input, bool bias) {
  at::Tensor a = input.reshape({-1, input.size(-1)});
  if (bias) a = AppendOnes(a);
  return a.t().matmul(a / static_cast<double>(a.size(0)));
}

at::Tensor LinearOutputGradientFactor(const at::Tensor& output_gradient) {
  const at::Tensor g = output_gradient.reshape({-1, output_gradient.size(-1)});
  const auto batch = static_cast<double>(g.size(0));
  return (g * batch).t().matmul(g);  // (B g)ᵀ (B g) / B
}

at::Tensor ConvInputFactor(const at::Tensor& input, const ConvGeometry& geometry, bool bias) {
  const int64_t batch = input.size(0);
  // [B, C·kh·kw, L], channels outermost as in the weight's [O, C, kh, kw].
  const at::Tensor columns =
      at::im2col(input, geometry.kernel, geometry.dilation, geometry.padding, geometry.stride);
  const int64_t positions = columns.size(2);
  at::Tensor patches = columns.transpose(1, 2).reshape({-1, columns.size(1)});
  if (bias) patches = AppendOnes(patches);
  patches = patches / static_cast<double>(positions);
  return patches.t().matmul(patches / static_cast<double>(batch));
}

at::Tensor ConvOutputGradientFactor(const at::Tensor& output_gradient) {
  const int64_t batch = output_gradient.size(0);
  const int64_t positions = output_gradient.size(2) * output_gradient.size(3);
  const at::Tensor g = PositionsAsRows(output_gradient) * static_cast<double>(batch * positions);
  return g.t().matmul(g / static_cast<double>(g.size(0)));
}

EigenBasis SymmetricEigen(const at::Tensor& factor) {
  const at::Tensor symmetric = (factor.to(at::kDouble) + factor.to(at::kDouble).t()) / 2;
  auto [values, vectors] = at::linalg_eigh(symmetric);
  return {vectors.to(factor.scalar_type()), values.clamp_min(0).to(factor.scalar_type())};
}

at::Tensor PreconditionWithEigen(const at::Tensor& gradient, const EigenBasis& a,
                                 const EigenBasis& g, double damping) {
  const at::Tensor v = g.vectors.t().matmul(gradient).matmul(a.vectors);
  const at::Tensor scaled = v / (g.values.unsqueeze(1) * a.values.unsqueeze(0) + damping);
  return g.vectors.matmul(scaled).matmul(a.vectors.t());
}

double KlClipScale(double dot, double learning_rate, double kl_clip) {
  const double sum = std::abs(dot) * learning_rate * learning_rate;
  if (!(sum > 0) || !std::isfinite(sum)) return 1.0;
  return std::min(1.0, std::sqrt(kl_clip / sum));
}

at::Tensor GradientMatrix(const at::Tensor& weight_grad, const at::Tensor& bias_grad) {
  const at::Tensor weight = weight_grad.reshape({weight_grad.size(0), -1});
  if (!bias_grad.defined()) return weight;
  return at::cat({weight, bias_grad.reshape({-1, 1})}, 1);
}

void SetGradients(const at::Tensor& matrix, at::Tensor& weight_grad, at::Tensor& bias_grad) {
  const int64_t weight_columns = weight_grad.numel() / weight_grad.size(0);
  weight_grad.copy_(matrix.narrow(1, 0, weight_columns).reshape(weight_grad.sizes()));
  if (bias_grad.defined()) bias_grad.copy_(matrix.select(1, weight_columns));
}

}  // namespace cleave::server
