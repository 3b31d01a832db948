// Sample distance correlation (Szekely et al. 2007) between a batch of raw inputs and the
// activations that leave the client; the NoPeek penalty (Vepakomma et al. 2020).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

namespace cleave::privacy {

// Differentiable dCor(X, Z) in [0, 1] for X [n, ...] and Z [n, ...] (rows flattened), using
// Euclidean (not squared) pairwise distances with a small floor under the squared distance
// before the square root (finite gradients when two rows coincide), double centring, and
// dCor = sqrt(dCov^2 / sqrt(dVarX^2 * dVarZ^2)). Returns 0 when either variance is 0. The plain
// estimator is biased upward for small n: state the batch size with any figure. Computed in
// double on the tensors' device (CPU or CUDA, no host sync); the result has z's dtype.
at::Tensor DistanceCorrelation(const at::Tensor& x, const at::Tensor& z);

// The bias-corrected estimate of dCor^2 (U-centred, Szekely & Rizzo 2014), for measurement: near
// 0 for independent samples at any n, may be slightly negative, and is a squared correlation
// (compare it with dCor(x, z)^2, not dCor). Needs n >= 4.
at::Tensor BiasCorrectedDistanceCorrelation(const at::Tensor& x, const at::Tensor& z);

// For measurement: both estimates of one batch pair from one computation of the pairwise
// distances, whose row products (most of the cost) are taken in float by a fast kernel on the
// CPU (in double on other devices); the rest is in double as above. Within about 1e-6 of
// DistanceCorrelation and BiasCorrectedDistanceCorrelation; about ten times faster on Debian's CPU
// LibTorch. Train with DistanceCorrelation. Needs n >= 4.
struct DistanceCorrelations {
  at::Tensor plain;           // dCor
  at::Tensor bias_corrected;  // the U-centred estimate of dCor^2
};
DistanceCorrelations BothDistanceCorrelations(const at::Tensor& x, const at::Tensor& z);

// The independence baseline: the same estimator with Z's rows shuffled (seeded), computed as
// BothDistanceCorrelations computes it (a measurement).
double IndependenceBaseline(const at::Tensor& x, const at::Tensor& z, uint64_t seed,
                            bool bias_corrected = false);

// alpha * dCor(x, z): the NoPeek term added to the client's loss.
at::Tensor NoPeekLoss(const at::Tensor& x, const at::Tensor& z, double alpha);

}  // namespace cleave::privacy
