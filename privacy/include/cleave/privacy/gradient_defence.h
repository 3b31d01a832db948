// A defence against label inference from returned gradients: what the label holder does to the
// per-sample gradients before they leave it. Both kinds are scaled to the batch (the median
// per-sample gradient norm, m), so one strength means the same at any point in training.
#pragma once

#include <ATen/Tensor.h>

#include <atomic>
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

// The defence as the party sending the gradients applies it, one batch after another: each
// call's noise is seeded from `seed` and the number of calls before it, so a run is
// reproducible and no two batches share noise. cleave-client (U-shaped: the middle gradient),
// cleave-server (vertical: the passive parties' slices) and cleave-leakage's measurement all
// defend through this. Keep one per sender for its whole run (a sender that joins again goes on
// counting, so no noise repeats). Apply is thread-safe.
class GradientDefender {
 public:
  // Throws UserError if the defence is on and its strength is not finite and > 0.
  GradientDefender(GradientDefence defence, uint64_t seed);
  bool active() const { return defence_.kind != GradientDefenceKind::kNone; }
  const GradientDefence& defence() const { return defence_; }
  // `gradients` itself when the defence is off, else the defended copy.
  at::Tensor Apply(const at::Tensor& gradients);

 private:
  GradientDefence defence_;
  uint64_t seed_;
  std::atomic<uint64_t> applied_{0};  // batches defended so far
};

}  // namespace cleave::privacy
