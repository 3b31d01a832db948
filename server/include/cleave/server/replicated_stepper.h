// The step clock of replicated servers (replica_group.h): every replica calls Tick the same
// number of times, whether or not it has work, so the group's collectives stay in lockstep.
// One tick: the replicas vote (who has work, who wants to stop); when anyone has work, each
// computes its local gradients (or zeros), the gradients are averaged weighted by samples x
// staleness scale, and every replica takes the same optimizer step. A local batch that fails
// (a hostile hospital's non-finite numbers) contributes zero weight; the replica still joins.
// Not thread-safe: one thread ticks.
#pragma once

#include <ATen/Tensor.h>

#include <exception>
#include <functional>
#include <vector>

#include "cleave/server/replica_group.h"

namespace cleave::server {

// What a server supplies for one tick.
struct ReplicatedStep {
  // Forward and backward on this replica's pending work: accumulates into the parameters'
  // grads (zeroed before) the gradient of the local loss averaged over the local weight, and
  // returns that weight (samples x staleness scale, > 0). Called only when the replica
  // announced work. May throw to refuse the batch: the replica then contributes nothing.
  std::function<double()> backward;
  // The optimizer step on the averaged gradients; called on every replica when the global
  // weight is positive. Must be deterministic (identical inputs give identical bits).
  std::function<void()> step;
};

struct TickOutcome {
  bool anyone_had_work = false;
  double global_weight = 0;  // sum of the replicas' weights; 0: nobody stepped
  bool stepped = false;
  bool stop = false;               // some replica asked to stop: every replica stops after this
  std::exception_ptr local_error;  // this replica's backward threw (it contributed nothing)
};

class ReplicatedStepper {
 public:
  // `parameters`: the replicated model's, in the same order on every replica. The group is not
  // owned and must outlive the stepper.
  ReplicatedStepper(ReplicaGroup& group, std::vector<at::Tensor> parameters);

  // Makes every replica's parameters (and `state`, e.g. the optimizer's serialised state, if
  // any: replaced by rank 0's) equal to rank 0's. Call once, on every replica, before ticking.
  void Synchronize(std::string* state = nullptr);

  // One tick. `local_weight` > 0 announces work (step.backward is then called), 0 none;
  // `want_stop` votes to stop. Throws ReplicaFailure when a replica died or stopped answering.
  TickOutcome Tick(double local_weight, const ReplicatedStep& step, bool want_stop = false);

  int64_t ticks() const { return ticks_; }

 private:
  void ZeroGradients();
  std::vector<at::Tensor> Gradients() const;

  ReplicaGroup& group_;
  std::vector<at::Tensor> parameters_;
  int64_t ticks_ = 0;
};

}  // namespace cleave::server
