// SplitServer's U-shaped calls (config "u-shaped"): the step's bookkeeping (rounds, counts,
// checkpoints, metrics) around UShapedMiddle, which holds the middle between a step's two messages.
#include <spdlog/spdlog.h>

#include <chrono>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/server/refusal.h"
#include "cleave/server/split_server.h"

namespace cleave::server {

using Clock = std::chrono::steady_clock;

namespace {

// A tail exactly when the configuration is u-shaped.
void CheckSplitConfig(SplitConfig config, const ModelSpec& model) {
  CLEAVE_CHECK_USER((config == SplitConfig::kUShaped) == (model.tail_layers > 0),
                    config == SplitConfig::kUShaped
                        ? "the u-shaped configuration needs a tail of at least 1 block"
                        : "a tail (--tail-layers) needs --config u-shaped");
}

}  // namespace

std::unique_ptr<UShapedMiddle> SplitServer::MakeUShapedMiddle(
    const std::vector<int64_t>& middle_shape) const {
  CheckSplitConfig(options_.config, options_.model);
  if (options_.config != SplitConfig::kUShaped) return nullptr;
  return std::make_unique<UShapedMiddle>(link_spec_, ActivationSpec(), middle_shape,
                                         options_.middle_gradient_timeout, options_.seed);
}

v1::TrainReply SplitServer::TrainUShaped(const std::string& identity,
                                         const v1::TrainRequest& request) {
  const auto started = Clock::now();
  bool round_closing = false;
  int64_t samples = 0;
  const auto admit = [&](int64_t model_version, int64_t batch) {  // under the middle's lock
    ScheduleLearningRateLocked();
    if (!coordinator_) return 1.0;
    const StepAdmission admission = coordinator_->AdmitStep(identity, model_version, batch);
    round_closing = admission.round_closing;
    return admission.scale;
  };
  const auto committed = [&](int64_t batch) {  // under the middle's lock (mutex_)
    samples = batch;
    ++step_;
    samples_ += batch;
    if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) {
      SaveCheckpointLocked();
    }
    return step_;
  };
  // The lock is released before a refusal is counted: a round it closes calls SaveCheckpoint.
  // As Refusable: bad input puts the hospital out of the round, a Refusal was dealt with.
  v1::TrainReply reply;
  try {
    reply = u_shaped_->Train(request.session_id(), request, {*top_, mutex_}, admit, committed);
  } catch (const InvalidInput& error) {
    Refused("step", error, identity, /*exclude=*/true);
    throw;
  } catch (const Refusal& error) {
    Refused("step", error, identity, /*exclude=*/false);
    throw;
  }
  reply.set_round_closing(round_closing);
  if (samples > 0) {  // the step's second message: the middle stepped
    sessions_.Count(request.session_id(), 1, samples, 0, 0);
    if (observer_) {
      observer_->OnStep(samples, std::chrono::duration<double>(Clock::now() - started).count());
    }
  }
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

v1::EvaluateReply SplitServer::EvaluateUShaped(const v1::EvaluateRequest& request) {
  const v1::EvaluateReply reply = u_shaped_->Evaluate(request, {*top_, mutex_});
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

void SplitServer::AbandonEndedUShapedStep() {
  if (u_shaped_ &&
      u_shaped_->AbandonEnded([this](const std::string& id) { return sessions_.Contains(id); })) {
    spdlog::info("dropped a U-shaped step whose session ended before its middle gradient came");
  }
}

void SplitServer::TrainStreamEnded(const std::string& identity, const std::string& session_id) {
  if (!u_shaped_ || session_id.empty()) return;
  try {
    sessions_.Touch(identity, session_id, Clock::now());  // only the owner's stream counts
  } catch (const std::exception&) {
    AbandonEndedUShapedStep();
    return;
  }
  if (u_shaped_->Abandon(session_id)) {
    spdlog::warn(
        "Train stream of '{}' ended with a U-shaped step waiting for its middle gradient; "
        "the step was dropped",
        PeerText(identity));
  }
}

}  // namespace cleave::server
