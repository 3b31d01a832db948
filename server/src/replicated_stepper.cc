#include "cleave/server/replicated_stepper.h"

#include <ATen/ATen.h>

#include <cmath>

#include "cleave/core/error.h"

namespace cleave::server {

ReplicatedStepper::ReplicatedStepper(ReplicaGroup& group, std::vector<at::Tensor> parameters)
    : group_(group), parameters_(std::move(parameters)) {
  CLEAVE_ENFORCE(!parameters_.empty(), "a replicated model needs parameters");
}

void ReplicatedStepper::Synchronize(std::string* state) {
  group_.Broadcast(parameters_, 0);
  if (state) group_.BroadcastBytes(*state, 0);
}

void ReplicatedStepper::ZeroGradients() {
  at::NoGradGuard no_grad;
  for (at::Tensor& parameter : parameters_) {
    // Every replica sends every gradient, defined or not, so the flat buffers line up.
    if (parameter.grad().defined()) {
      parameter.mutable_grad().detach_().zero_();
    } else {
      parameter.mutable_grad() = at::zeros_like(parameter);
    }
  }
}

std::vector<at::Tensor> ReplicatedStepper::Gradients() const {
  std::vector<at::Tensor> grads;
  grads.reserve(parameters_.size());
  for (const at::Tensor& parameter : parameters_) grads.push_back(parameter.grad());
  return grads;
}

TickOutcome ReplicatedStepper::Tick(double local_weight, const ReplicatedStep& step,
                                    bool want_stop) {
  CLEAVE_ENFORCE(std::isfinite(local_weight) && local_weight >= 0, "bad weight ", local_weight);
  ++ticks_;
  TickOutcome outcome;
  // The vote is tiny: an idle group pays it alone, never a gradient-sized allreduce.
  const std::vector<double> votes =
      group_.AllReduceSums({local_weight > 0 ? 1.0 : 0.0, want_stop ? 1.0 : 0.0});
  outcome.anyone_had_work = votes[0] > 0;
  outcome.stop = votes[1] > 0;
  if (!outcome.anyone_had_work) return outcome;
  ZeroGradients();
  double weight = 0;
  if (local_weight > 0) {
    try {
      weight = step.backward();
      CLEAVE_ENFORCE(std::isfinite(weight) && weight > 0, "a local step of weight ", weight);
    } catch (...) {
      outcome.local_error = std::current_exception();
      weight = 0;
      ZeroGradients();
    }
  }
  outcome.global_weight = group_.AllReduceGradients(Gradients(), weight);
  if (outcome.global_weight > 0) {
    step.step();
    outcome.stepped = true;
  }
  return outcome;
}

}  // namespace cleave::server
