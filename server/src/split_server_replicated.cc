// SplitServer's replicas (replicated_top.h): the group is joined once the model (and any
// checkpoint) is loaded, rank 0's model and step count win, and every step goes through the
// group's step clock, which also runs the learning-rate schedule and the periodic checkpoint
// for the group's step count (the same on every replica). With --merge-max-batch each tick
// takes all of this replica's waiting steps (up to that many samples) as one merged batch.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "cleave/core/error.h"
#include "cleave/server/split_server.h"

namespace cleave::server {

using Clock = std::chrono::steady_clock;

namespace {

// What must be equal on every replica for their steps to be the same (the weights themselves
// come from rank 0).
std::string ReplicatedSettings(const SplitServerOptions& options, const std::string& fingerprint) {
  const LearningRateSchedule& schedule = options.lr_schedule;
  return detail::Concat(
      "model ", fingerprint, ", optimizer ", options.optimizer, " lr ", options.learning_rate,
      " weight decay ", options.weight_decay, " momentum ", options.momentum, ", lr schedule ",
      schedule.kind, " ", schedule.total_steps, "/", schedule.warmup_steps, "/",
      schedule.final_fraction, ", max batch ", options.max_batch, ", checkpoint every ",
      options.checkpoint_every, ", compression ", options.compression.ShortDebugString());
}

}  // namespace

// Every replica learns whether all run rank 0's settings, and fails with the difference if not.
void SplitServer::CheckSameSettings(ReplicaGroup& group) const {
  const std::string mine = ReplicatedSettings(options_, fingerprint_);
  std::string rank0 = mine;
  group.BroadcastBytes(rank0, 0);
  const bool differs = rank0 != mine;
  if (group.AllReduceSums({differs ? 1.0 : 0.0})[0] == 0) return;
  throw UserError(detail::Concat(
      "replica ", group.rank(), " of ", group.size(), ": the replicas run different settings",
      differs ? detail::Concat(": rank 0 runs ", rank0, "; this replica runs ", mine)
              : std::string(" (see the other replicas' logs)")));
}

void SplitServer::SetUpReplicas() {
  const ReplicaGroupOptions& replicas = options_.replicas;
  if (replicas.replicas <= 1) return;
  const std::string who = detail::Concat("replica ", replicas.rank, " of ", replicas.replicas);
  CLEAVE_CHECK_USER(options_.config == SplitConfig::kVanilla,
                    "--replicas: only the vanilla configuration is replicated, not ",
                    SplitConfigName(options_.config));
  CLEAVE_CHECK_USER(options_.rounds.schedule == Schedule::kSingle,
                    "--replicas: rounds are not replicated; use --schedule single");
  CLEAVE_CHECK_USER(options_.optimizer != "kfac",
                    "--replicas: K-FAC's factors are not averaged over replicas; use adam, adamw "
                    "or sgd");
  CLEAVE_CHECK_USER(options_.replica_idle_tick.count() > 0, "--replica-idle-us must be positive");
  CLEAVE_CHECK_USER(options_.merge.max_wait < replicas.timeout,
                    "--replicas: --merge-wait-us must be shorter than --replica-timeout-ms (the "
                    "other replicas wait for this one's step)");
  spdlog::info("{}: rendezvous at {}:{}, Gloo on {}", who, replicas.rendezvous_host,
               replicas.rendezvous_port, replicas.interface);
  auto group = std::make_unique<ReplicaGroup>(replicas);
  CheckSameSettings(*group);
  std::vector<at::Tensor> step{at::tensor({step_}, at::kLong)};
  group->Broadcast(step, 0);  // rank 0's count: the learning-rate schedule agrees
  step_ = step[0].item<int64_t>();
  ReplicatedTopHooks hooks;
  hooks.before_tick = [this] { ScheduleLearningRateLocked(); };
  hooks.after_step = [this] {
    ++step_;
    if (options_.checkpoint_every <= 0 || step_ % options_.checkpoint_every != 0) return;
    try {
      SaveCheckpointLocked();
    } catch (const std::exception& error) {
      spdlog::error("checkpoint at step {} not written: {}", step_, error.what());
    }
  };
  hooks.expected_steps = [this] { return sessions_.size(); };
  replicated_ = std::make_unique<ReplicatedTop>(*top_, mutex_, std::move(group), std::move(hooks),
                                                options_.replica_idle_tick, options_.merge);
  spdlog::info("{}: in step with the group at step {} (rank 0's model)", who, step_);
}

v1::TrainReply SplitServer::TrainReplicated(const std::string& identity,
                                            const v1::TrainRequest& request) {
  CLEAVE_CHECK_INPUT(!request.has_middle_gradient(),
                     "a middle gradient belongs to the u-shaped configuration; this server runs ",
                     SplitConfigName(options_.config));
  // As Refusable (split_server.cc): the decoding and the step are counted when refused.
  StepCodec::Batch batch;
  TopModel::Step step;
  const auto started = Clock::now();
  try {
    batch = step_codec_->Decode(request);
    // The single schedule: no staleness, every batch weighs its samples.
    step = replicated_->Train(batch.activations.dense, batch.labels, [] { return 1.0; });
  } catch (const InvalidInput& error) {
    Refused("step", error, identity, /*exclude=*/true);
    throw;
  } catch (const Refusal& error) {
    Refused("step", error, identity, /*exclude=*/false);
    throw;
  }
  int64_t server_step = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    samples_ += batch.size();
    server_step = step_;
  }
  const v1::TrainReply reply = step_codec_->Encode(request, batch, step, false, server_step);
  sessions_.Count(request.session_id(), 1, batch.size(), 0, 0);
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  if (observer_) {
    observer_->OnStep(batch.size(), std::chrono::duration<double>(Clock::now() - started).count());
  }
  return reply;
}

}  // namespace cleave::server
