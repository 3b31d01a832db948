// K-FAC's per-layer mathematics (Martens & Grosse 2015; the eigen method of Pauloski et al., SC20,
// and kfac-pytorch): the Kronecker factors of one batch for a Linear or Conv2d layer, their
// eigendecomposition, and the eigen-damped preconditioned gradient. Plain functions on tensors, so
// tests can check each against a direct computation.
//
// Conventions (kfac-pytorch's, with its `batch_averaged` loss, as in the SC20 code):
//   Linear: A = aᵀa / B over the layer inputs a [B, in] (a ones column appended for the bias);
//           G = (B g)ᵀ(B g) / B over the gradients g [B, out] of the layer output (the loss is a
//           batch mean, so B g is each sample's own gradient).
//   Conv2d: the input unfolded into patches [B·L, C·kh·kw] (L output positions; a ones column for
//           the bias), divided by L: A = pᵀp / B; the output gradient as [B·L, O], multiplied by
//           B·L: G = gᵀg / (B·L).
// Gradients are viewed as one matrix [out, in (+1 for the bias)]: the weight's gradient flattened
// per output (a conv weight [O, C, kh, kw] as [O, C·kh·kw]) with the bias's as the last column.
#pragma once

#include <ATen/Tensor.h>

#include <array>
#include <cstdint>

namespace cleave::server {

struct ConvGeometry {
  std::array<int64_t, 2> kernel{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
};

// One batch's factors. Inputs of rank > 2 (Linear) are flattened to [-1, features].
at::Tensor LinearInputFactor(const at::Tensor& input, bool bias);
at::Tensor LinearOutputGradientFactor(const at::Tensor& output_gradient);
at::Tensor ConvInputFactor(const at::Tensor& input, const ConvGeometry& geometry, bool bias);
at::Tensor ConvOutputGradientFactor(const at::Tensor& output_gradient);

// factor = Q diag(d) Qᵀ of a symmetric positive semi-definite factor (symmetrised first; computed
// in float64, returned in the factor's type; eigenvalues below 0, from rounding, set to 0).
// LAPACK's float32 solver (ssyevd) of Debian's reference LAPACK rejects its own workspace size
// from n = 3000 on ("Parameter 8 ... was incorrect"): float64 avoids it.
struct EigenBasis {
  at::Tensor vectors;  // Q, columns are eigenvectors
  at::Tensor values;   // d, ascending
};
EigenBasis SymmetricEigen(const at::Tensor& factor);

// The eigen method: V = Qgᵀ ∇W Qa; V /= (dg daᵀ + damping); returns Qg V Qaᵀ. This is
// (G ⊗ A + damping·I)⁻¹ applied to ∇W (with G and A as their eigendecompositions).
at::Tensor PreconditionWithEigen(const at::Tensor& gradient, const EigenBasis& a,
                                 const EigenBasis& g, double damping);

// kfac-pytorch's KL clip: ν = min(1, sqrt(kl_clip / |Σ lr² ⟨∇W', ∇W⟩|)) over every
// preconditioned layer (`dot` is Σ ⟨∇W', ∇W⟩); 1 when the sum is 0 or not finite.
double KlClipScale(double dot, double learning_rate, double kl_clip);

// The gradient matrix of a layer from its parameters' gradients, and back.
at::Tensor GradientMatrix(const at::Tensor& weight_grad, const at::Tensor& bias_grad);
void SetGradients(const at::Tensor& matrix, at::Tensor& weight_grad, at::Tensor& bias_grad);

}  // namespace cleave::server
