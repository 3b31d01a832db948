#include "cleave/privacy/activation_noise.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "cleave/core/error.h"

namespace cleave::privacy {

ActivationNoise::ActivationNoise(double sigma, uint64_t seed)
    : sigma_(sigma), generator_(at::make_generator<at::CPUGeneratorImpl>(seed)) {
  CLEAVE_CHECK_USER(std::isfinite(sigma) && sigma >= 0,
                    "the activation noise sigma must be finite and >= 0, got ", sigma);
}

at::Tensor ActivationNoise::Apply(const at::Tensor& activations) {
  if (sigma_ <= 0) return activations;
  // at::normal takes the generator's lock itself.
  const at::Tensor noise = at::normal(0.0, sigma_, activations.sizes(), generator_,
                                      activations.options().device(at::kCPU));
  return activations + noise.to(activations.device());
}

}  // namespace cleave::privacy
