// A defence against label inference from returned gradients: what the label holder does to the
// per-sample gradients before they leave it. Both kinds are scaled to the batch (the median
// per-sample gradient norm, m), so one strength means the same at any point in training.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

namespace cleave::privacy {

enum class GradientDefenceKind {
  kNone,
  kClip,   // each sample's gradient scaled down to norm <= strength * m (norms become alike)
  kNoise,  // Gaussian noise added, per element std strength * m / sqrt(row size), so the noise
           // vector's norm is about strength * m
};

struct GradientDefence {
  GradientDefenceKind kind = GradientDefenceKind::kNone;
  double strength = 1.0;  // > 0
};

// "none", "clip", "noise". Throws UserError naming the choices otherwise.
GradientDefenceKind ParseGradientDefenceKind(const std::string& name);
const char* GradientDefenceName(GradientDefenceKind kind);

// The defended gradients (same shape and dtype, a new tensor). `generator_seed` seeds the noise
// (ignored by kNone and kClip). Throws InvalidInput if strength is not finite and > 0.
at::Tensor ApplyGradientDefence(const at::Tensor& gradients, const GradientDefence& defence,
                                uint64_t generator_seed);

}  // namespace cleave::privacy
