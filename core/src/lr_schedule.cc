#include "cleave/core/lr_schedule.h"

#include <CLI/CLI.hpp>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <cmath>

#include "cleave/core/error.h"

namespace cleave {

void LearningRateSchedule::Validate() const {
  CLEAVE_CHECK_USER(kind == "constant" || kind == "cosine", "unknown learning-rate schedule '",
                    kind, "' (use constant or cosine)");
  CLEAVE_CHECK_USER(total_steps >= 0 && warmup_steps >= 0,
                    "learning-rate schedule steps must be >= 0");
  CLEAVE_CHECK_USER(kind != "cosine" || total_steps > 0,
                    "--lr-schedule cosine needs --lr-schedule-steps (the steps the rate falls over)");
  CLEAVE_CHECK_USER(final_fraction >= 0 && final_fraction <= 1,
                    "--lr-final-fraction must be in [0, 1], got ", final_fraction);
}

double LearningRateSchedule::At(double base, int64_t step) const {
  if (step < warmup_steps) return base * static_cast<double>(step + 1) / warmup_steps;
  if (kind != "cosine") return base;
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return base * (final_fraction + (1.0 - final_fraction) * cosine);
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double learning_rate) {
  for (torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    group.options().set_lr(learning_rate);
  }
}

void AddOptimizerTuningFlags(CLI::App& app, const std::string& side, double* weight_decay,
                             LearningRateSchedule* schedule) {
  app.add_option("--weight-decay", *weight_decay,
                 "Weight decay of the " + side +
                     " layers (adamw: decoupled; adam, sgd: added to the gradient)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--lr-schedule", schedule->kind,
                 "Learning-rate schedule of the " + side +
                     " layers: constant, or cosine (decays to --lr-final-fraction of --lr over "
                     "--lr-schedule-steps steps after the warm-up)")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
  app.add_option("--lr-schedule-steps", schedule->total_steps,
                 "Optimizer steps of the " + side +
                     " layers the cosine decay spans after the warm-up (0: a client training "
                     "--epochs uses all its steps; otherwise required with cosine)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--lr-warmup-steps", schedule->warmup_steps,
                 "Steps over which the " + side + " learning rate ramps up linearly to --lr")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--lr-final-fraction", schedule->final_fraction,
                 "cosine: the last learning rate as a fraction of --lr")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
}

}  // namespace cleave
