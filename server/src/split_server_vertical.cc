// SplitServer's vertical configuration (--config vertical): the parts of SplitServer that only
// vertical uses, kept apart from the vanilla spine in split_server.cc.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "cleave/core/error.h"
#include "cleave/protocol/vertical_fingerprint.h"
#include "cleave/server/refusal.h"
#include "cleave/server/split_server.h"

namespace cleave::server {

namespace {

// The batch order the parties share comes from the server's seed, but is not the seed itself
// (which also initialises the top's weights).
constexpr uint64_t kBatchSeedSalt = 0x9e3779b97f4a7c15ULL;

}  // namespace

void SplitServer::SetUpVertical(v1::ServerConfig& told) {
  CLEAVE_CHECK_USER(options_.rounds.schedule == Schedule::kSingle,
                    "--config vertical runs the single schedule only: the parties' bottoms are "
                    "different models, there are no shared client-side weights to pass around or "
                    "average (--schedule ",
                    ScheduleName(options_.rounds.schedule), " refused)");
  vertical_ = std::make_unique<VerticalTraining>(options_.vertical, link_spec_, cut_shape_,
                                                 options_.max_batch, activation_bound_,
                                                 options_.model.num_classes, options_.seed);
  join_rules_.fingerprint = protocol::VerticalFingerprint(options_.model.num_classes);
  vertical_->Describe(&told, options_.seed ^ kBatchSeedSalt);
  spdlog::info(
      "vertical: {} parties, {} join into the top's input {}, party {} holds the labels, "
      "a step waits {} ms for every party",
      options_.vertical.parties, JoinModeName(options_.vertical.join),
      protocol::ShapeToString(cut_shape_), options_.vertical.label_holder,
      options_.vertical.party_timeout.count());
}

v1::TrainReply SplitServer::TrainVertical(const std::string& identity,
                                          const v1::TrainRequest& request) {
  v1::TrainReply reply;
  try {
    reply = vertical_->Train(
        identity, request, [&](const at::Tensor& joined, const at::Tensor& labels) {
          const auto started = std::chrono::steady_clock::now();
          VerticalTraining::TopStep top;
          {
            std::lock_guard<std::mutex> lock(mutex_);
            ScheduleLearningRateLocked();
            top.step = top_->Train(joined, labels, [] { return 1.0; });
            top.server_step = ++step_;
            samples_ += labels.size(0);
            if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) {
              SaveCheckpointLocked();
            }
          }
          if (observer_) {
            observer_->OnStep(
                labels.size(0),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
          }
          return top;
        });
  } catch (const InvalidInput& error) {
    Refused("step", error, identity, /*exclude=*/false);
    throw;
  } catch (const Refusal& error) {
    Refused("step", error, identity, /*exclude=*/false);
    throw;
  }
  const int64_t rows = request.activations().shape_size() > 0 ? request.activations().shape(0) : 0;
  sessions_.Count(request.session_id(), 1, rows, 0, 0);
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

v1::EvaluateReply SplitServer::EvaluateVertical(const std::string& identity,
                                                const v1::EvaluateRequest& request) {
  const v1::EvaluateReply reply = vertical_->Evaluate(
      identity, request, [&](const at::Tensor& joined, const at::Tensor& labels) {
        std::lock_guard<std::mutex> lock(mutex_);
        return top_->Evaluate(joined, labels);
      });
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

}  // namespace cleave::server
