// Merged steps of the vanilla configuration (step_merger.h): the steps of hospitals waiting at
// the same time go through one forward/backward pass and one optimizer step of the top.
// Each step was decoded and validated on its own thread before it queued. The merger's leader
// runs a group under the model's lock: every step is admitted by the rounds on its own (a
// refused one leaves the group, the others go on), the admitted ones train together
// (TopModel::TrainMerged), and if that merged step is not finite or out of bounds (nothing
// changed), each admitted step is retried on its own with the admission it had, so that a
// hostile batch is refused alone and does not hold the others back. A group of one step is the
// unmerged step exactly (admitted after its gradients were checked).
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "cleave/core/error.h"
#include "cleave/server/split_server.h"

namespace cleave::server {

using Clock = std::chrono::steady_clock;

struct SplitServer::MergedStep : StepMerger::Entry {
  MergedStep(const std::string& identity_, const v1::TrainRequest& request_,
             const StepCodec::Batch& batch_)
      : Entry(batch_.size()), identity(identity_), request(request_), batch(batch_) {}
  const std::string& identity;
  const v1::TrainRequest& request;
  const StepCodec::Batch& batch;
  // The outcome (or Entry::error).
  TopModel::Step step;
  double scale = 1.0;  // its staleness scale once admitted
  bool round_closing = false;
  bool trained = false;
  bool merged = false;  // trained in a step of two or more
  int64_t server_step = 0;
};

void SplitServer::SetUpMerging() {
  if (options_.merge.max_batch == 0 && options_.merge.max_wait.count() == 0) return;
  ValidateStepMergerOptions(options_.merge);
  CLEAVE_CHECK_USER(options_.config == SplitConfig::kVanilla,
                    "merged steps (--merge-max-batch) apply to the vanilla configuration; this "
                    "server runs ",
                    SplitConfigName(options_.config));
  if (options_.replicas.replicas > 1) return;  // the replicas' step clock merges (SetUpReplicas)
  merger_ = std::make_unique<StepMerger>(
      options_.merge,
      [this](const std::vector<StepMerger::Entry*>& group) { RunMergedGroup(group); },
      [this] { return sessions_.size(); });
  spdlog::info("merged steps: up to {} samples, waiting up to {} us for company",
               options_.merge.max_batch, options_.merge.max_wait.count());
}

v1::TrainReply SplitServer::TrainMerged(const std::string& identity,
                                        const v1::TrainRequest& request,
                                        const StepCodec::Batch& batch) {
  const auto started = Clock::now();
  MergedStep pending(identity, request, batch);
  merger_->Run(pending);
  // Rethrown here, outside every lock (a refusal may close a round), and counted as
  // SplitServer::Refusable counts it.
  if (pending.error) {
    try {
      std::rethrow_exception(pending.error);
    } catch (const InvalidInput& error) {
      Refused("step", error, identity, /*exclude=*/true);
      throw;
    } catch (const Refusal& error) {
      Refused("step", error, identity, /*exclude=*/false);
      throw;
    }
  }
  return ReplyToStep(request, batch, pending.step, pending.round_closing, pending.server_step,
                     started);
}

void SplitServer::RunMergedGroup(const std::vector<StepMerger::Entry*>& group) {
  std::vector<MergedStep*> steps;
  for (StepMerger::Entry* entry : group) steps.push_back(static_cast<MergedStep*>(entry));
  int64_t merged = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ScheduleLearningRateLocked();
    if (steps.size() == 1) {
      TrainAloneLocked(*steps.front(), /*admitted=*/false);
    } else {
      merged = TrainTogetherLocked(AdmitMergedLocked(steps));
    }
    CommitMergedLocked(steps);
  }
  if (!observer_) return;
  int64_t merged_samples = 0;
  for (const MergedStep* step : steps) {
    if (step->merged) merged_samples += step->samples;
    if (step->trained && !step->merged) observer_->OnTopStep(1, step->samples);
  }
  if (merged > 0) observer_->OnTopStep(merged, merged_samples);
}

std::vector<SplitServer::MergedStep*> SplitServer::AdmitMergedLocked(
    const std::vector<MergedStep*>& steps) {
  std::vector<MergedStep*> admitted;
  for (MergedStep* step : steps) {
    if (!coordinator_) {
      admitted.push_back(step);
      continue;
    }
    try {
      const StepAdmission admission =
          coordinator_->AdmitStep(step->identity, step->request.model_version(), step->samples);
      step->scale = admission.scale;
      step->round_closing = admission.round_closing;
      admitted.push_back(step);
    } catch (...) {
      step->error = std::current_exception();  // refused alone
    }
  }
  return admitted;
}

int64_t SplitServer::TrainTogetherLocked(const std::vector<MergedStep*>& steps) {
  if (steps.size() <= 1) {
    if (!steps.empty()) TrainAloneLocked(*steps.front(), /*admitted=*/true);
    return 0;
  }
  std::vector<at::Tensor> activations, labels;
  std::vector<TopModel::Slice> slices;
  for (const MergedStep* step : steps) {
    activations.push_back(step->batch.activations.dense);
    labels.push_back(step->batch.labels);
    slices.push_back({step->samples, step->scale});
  }
  try {
    std::vector<TopModel::Step> taken =
        top_->TrainMerged(at::cat(activations), at::cat(labels), slices);
    for (size_t i = 0; i < steps.size(); ++i) {
      steps[i]->step = std::move(taken[i]);
      steps[i]->trained = steps[i]->merged = true;
    }
  } catch (const InvalidInput& error) {  // not finite or out of bounds: nothing changed
    spdlog::warn("a merged step of {} hospitals was not applied ({}); each is retried alone",
                 steps.size(), error.what());
    for (MergedStep* step : steps) TrainAloneLocked(*step, /*admitted=*/true);
    return 0;
  }
  ++merged_steps_;
  merged_away_ += static_cast<int64_t>(steps.size()) - 1;
  return static_cast<int64_t>(steps.size());
}

void SplitServer::TrainAloneLocked(MergedStep& step, bool admitted) {
  try {
    step.step = top_->Train(step.batch.activations.dense, step.batch.labels, [&] {
      if (admitted || !coordinator_) return step.scale;
      const StepAdmission admission =
          coordinator_->AdmitStep(step.identity, step.request.model_version(), step.samples);
      step.round_closing = admission.round_closing;
      return admission.scale;
    });
    step.trained = true;
  } catch (...) {
    step.error = std::current_exception();
  }
}

void SplitServer::CommitMergedLocked(const std::vector<MergedStep*>& steps) {
  const int64_t before = step_;
  for (MergedStep* step : steps) {
    if (!step->trained) continue;
    step->server_step = ++step_;
    samples_ += step->samples;
  }
  const int64_t every = options_.checkpoint_every;
  if (every > 0 && step_ / every != before / every) SaveCheckpointLocked();
}

}  // namespace cleave::server
