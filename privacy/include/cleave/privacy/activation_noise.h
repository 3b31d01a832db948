// Noise defence (Titcombe et al. 2021, "Practical defences against model inversion attacks for
// split neural networks"): the hospital adds Gaussian noise to the activations it sends, during
// training and evaluation alike, so that the server never receives a clean activation. The noise
// is drawn from the defence's own seeded generator on the CPU (reproducible whatever the device)
// and moved to the activations' device; it is a constant for autograd, so the gradient that
// reaches the bottom is the server's gradient unchanged.
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

#include <cstdint>

namespace cleave::privacy {

class ActivationNoise {
 public:
  // sigma: standard deviation of the added noise, in the activations' own units (>= 0 and finite,
  // else UserError). sigma 0: Apply returns its argument unchanged and draws nothing.
  ActivationNoise(double sigma, uint64_t seed);

  // activations + sigma * N(0, 1), element-wise independent; a new draw on every call.
  at::Tensor Apply(const at::Tensor& activations);

  double sigma() const { return sigma_; }
  bool enabled() const { return sigma_ > 0; }

 private:
  double sigma_;
  at::Generator generator_;
};

}  // namespace cleave::privacy
