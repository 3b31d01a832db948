// Learning-rate schedules both halves of a split model can follow, step by step: constant, or a
// linear warm-up followed by a cosine decay (Loshchilov & Hutter 2017) from the base rate to a
// fraction of it. Each end counts its own optimizer steps: the client its steps, the server every
// step it takes for any hospital.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace torch::optim {
class Optimizer;
}

namespace cleave {

struct LearningRateSchedule {
  std::string kind = "constant";  // "constant" or "cosine"
  int64_t total_steps = 0;        // cosine: steps from the end of warm-up to the final rate
  int64_t warmup_steps = 0;       // linear ramp from base/warmup_steps to base
  double final_fraction = 0;      // cosine: the rate at total_steps, as a fraction of the base

  // Throws UserError for an unknown kind, a cosine without total steps, negative counts or a
  // final fraction outside [0, 1].
  void Validate() const;
  // The rate at `step` (0-based) for a base rate `base`; past total_steps it stays at the final.
  double At(double base, int64_t step) const;
};

// Sets every parameter group's learning rate (Adam, AdamW and SGD keep it in their options).
void SetLearningRate(torch::optim::Optimizer& optimizer, double learning_rate);

// The optimizer tuning flags both binaries share, into `weight_decay` and `schedule`:
// --weight-decay, --lr-schedule, --lr-schedule-steps, --lr-warmup-steps, --lr-final-fraction.
// `side` names the layers in the help text ("client-side", "server-side").
void AddOptimizerTuningFlags(CLI::App& app, const std::string& side, double* weight_decay,
                             LearningRateSchedule* schedule);

}  // namespace cleave
