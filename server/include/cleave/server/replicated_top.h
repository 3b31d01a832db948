// The top model of one replica of a replicated server: hospitals' Train calls hand their batch
// to a step clock (one thread) that ticks in lockstep with the other replicas (one batch of
// this replica's per tick; with merging, all the batches waiting, up to merge.max_batch
// samples, as one merged batch (TopModel::BackwardMerged); a tick without local work joins with
// zero weight, after waiting up to `idle_tick` for some). Each tick averages the replicas'
// gradients, weighted by samples x staleness scale, and every replica takes the same optimizer
// step: the replicas stay
// bit-identical. Rank 0's parameters, buffers and optimizer state are copied to every replica
// at start. When the group ends (a replica died or stopped answering: ReplicaFailure; or one
// voted to stop) every waiting and later Train call is refused with kReplicaLost and ended()
// says why; the server should then exit (a c10d group cannot take a replica back).
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cleave/server/replica_group.h"
#include "cleave/server/replicated_stepper.h"
#include "cleave/server/step_merger.h"
#include "cleave/server/top_model.h"

namespace cleave::server {

struct ReplicatedTopHooks {
  // On the clock thread, holding the model lock: before a tick's local backward (e.g. the
  // learning-rate schedule for the global step) and after the group stepped (every replica
  // counts the same steps).
  std::function<void()> before_tick;
  std::function<void()> after_step;
  // Merging: how many hospitals may send a step (null: unknown); a tick stops waiting for
  // company once this many steps are queued. Called holding the clock's queue lock.
  std::function<size_t()> expected_steps;
};

class ReplicatedTop {
 public:
  // `top` and `model_mutex` (held by the clock around each tick's model work; whoever else
  // touches `top` holds it too) are not owned. Synchronises with rank 0, then starts the clock.
  ReplicatedTop(TopModel& top, std::mutex& model_mutex, std::unique_ptr<ReplicaGroup> group,
                ReplicatedTopHooks hooks,
                std::chrono::microseconds idle_tick = std::chrono::microseconds(2000),
                StepMergerOptions merge = {});
  // Stop()s.
  ~ReplicatedTop();
  ReplicatedTop(const ReplicatedTop&) = delete;
  ReplicatedTop& operator=(const ReplicatedTop&) = delete;

  // TopModel::Train's contract, across the replicas: the batch is trained at a coming tick;
  // `admit` (on the clock thread, holding the model lock) returns the step's staleness scale in
  // (0, 1], which weights the batch (weight = samples x scale) rather than scaling the step.
  // Throws what TopModel::Train throws for this batch, Refusal kReplicaLost once the group
  // ended.
  TopModel::Step Train(const at::Tensor& activations, const at::Tensor& labels,
                       const std::function<double()>& admit);

  // Votes to stop and waits for the clock: every replica stops at the same tick.
  void Stop();
  // Empty while the group trains; why it ended otherwise.
  std::string ended() const;
  int rank() const { return group_->rank(); }
  int size() const { return group_->size(); }
  int64_t ticks() const { return stepper_->ticks(); }

 private:
  struct Job {
    at::Tensor activations, labels;
    const std::function<double()>* admit;
    std::promise<TopModel::Step> done;
    // Filled on the clock thread during a tick.
    TopModel::Step result;
    double scale = 1.0;
    std::exception_ptr error;  // this job's own refusal or failure
  };
  using Jobs = std::vector<std::unique_ptr<Job>>;
  // Rank 0's parameters, buffers and optimizer state on every replica.
  void Synchronize();
  void Clock();
  // Waits up to idle_tick for a job (empty when none came); with merging, then up to
  // merge.max_wait for merge.max_batch samples (or every expected hospital's step), and takes
  // up to merge.max_batch samples (at least one job); without, one job.
  Jobs NextJobs();
  bool ReadyLocked() const;
  // One tick with `jobs` (may be empty); false when the group ended.
  bool Tick(Jobs& jobs);
  // The tick's local forward and backward on `jobs` (not empty); returns their weight (sum of
  // samples x scale) or throws when none of them trained.
  double LocalBackward(Jobs& jobs);
  // Admitted jobs as one merged batch; a merged batch that fails is found out job by job (each
  // alone), and the rest train together.
  double BackwardTogether(const std::vector<Job*>& jobs);
  double BackwardMerged(const std::vector<Job*>& jobs);
  // Each job's reply: its own error, else `error` (the tick's), else its result.
  static void Answer(Jobs& jobs, const std::exception_ptr& error);
  void End(const std::string& why);

  TopModel& top_;
  std::mutex& model_mutex_;
  std::unique_ptr<ReplicaGroup> group_;
  std::unique_ptr<ReplicatedStepper> stepper_;
  ReplicatedTopHooks hooks_;
  const std::chrono::microseconds idle_tick_;
  const StepMergerOptions merge_;

  mutable std::mutex mutex_;  // guards the four below
  std::condition_variable changed_;
  std::deque<std::unique_ptr<Job>> jobs_;
  bool stop_requested_ = false;
  std::string ended_;
  std::thread clock_;
};

}  // namespace cleave::server
