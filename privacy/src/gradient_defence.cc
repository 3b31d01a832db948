#include "cleave/privacy/gradient_defence.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "cleave/core/error.h"

namespace cleave::privacy {

GradientDefenceKind ParseGradientDefenceKind(const std::string& name) {
  if (name == "none") return GradientDefenceKind::kNone;
  if (name == "clip") return GradientDefenceKind::kClip;
  if (name == "noise") return GradientDefenceKind::kNoise;
  throw UserError("unknown label defence '" + name + "' (choices: none, clip, noise)");
}

const char* GradientDefenceName(GradientDefenceKind kind) {
  switch (kind) {
    case GradientDefenceKind::kClip:
      return "clip";
    case GradientDefenceKind::kNoise:
      return "noise";
    case GradientDefenceKind::kNone:
      break;
  }
  return "none";
}

at::Tensor ApplyGradientDefence(const at::Tensor& gradients, const GradientDefence& defence,
                                uint64_t generator_seed) {
  if (defence.kind == GradientDefenceKind::kNone) return gradients.clone();
  CLEAVE_CHECK_INPUT(std::isfinite(defence.strength) && defence.strength > 0,
                     "label defence strength must be finite and > 0, got ", defence.strength);
  CLEAVE_CHECK_INPUT(gradients.dim() >= 1 && gradients.size(0) > 0,
                     "label defence: gradients need a non-empty batch dimension");
  const at::Tensor rows = gradients.detach().reshape({gradients.size(0), -1});
  const at::Tensor norms = rows.norm(2, {1}, /*keepdim=*/true);
  const at::Tensor bound = defence.strength * norms.median();
  if (defence.kind == GradientDefenceKind::kClip) {
    const at::Tensor scale = (bound / norms.clamp_min(1e-30)).clamp_max(1.0);
    return (rows * scale).reshape(gradients.sizes());
  }
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(generator_seed);
  const at::Tensor noise =
      at::normal(0.0, 1.0, rows.sizes(), generator, rows.options().device(at::kCPU))
          .to(rows.device());
  const double per_element = 1.0 / std::sqrt(static_cast<double>(rows.size(1)));
  return (rows + noise * (bound * per_element)).reshape(gradients.sizes());
}

GradientDefender::GradientDefender(GradientDefence defence, uint64_t seed)
    : defence_(defence), seed_(seed) {
  CLEAVE_CHECK_USER(!active() || (std::isfinite(defence_.strength) && defence_.strength > 0),
                    "--label-defence-strength must be finite and > 0, got ", defence_.strength);
}

at::Tensor GradientDefender::Apply(const at::Tensor& gradients) {
  if (!active()) return gradients;
  return ApplyGradientDefence(gradients, defence_, seed_ * 1000003u + applied_++);
}

}  // namespace cleave::privacy
