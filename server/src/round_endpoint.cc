#include "cleave/server/round_endpoint.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/core/error.h"
#include "cleave/protocol/version.h"

namespace cleave::server {

namespace {

v1::SyncReply::Action ActionOf(SyncDecision::Action action) {
  switch (action) {
    case SyncDecision::Action::kTrain:
      return v1::SyncReply::TRAIN;
    case SyncDecision::Action::kDone:
      return v1::SyncReply::DONE;
    case SyncDecision::Action::kWait:
      break;
  }
  return v1::SyncReply::WAIT;
}

}  // namespace

RoundEndpoint::RoundEndpoint(RoundCoordinator& rounds, const protocol::DirectionSpec& updates,
                             std::chrono::milliseconds max_sync_wait)
    : rounds_(rounds),
      decoder_(updates, rounds.num_parameters(), rounds.options().max_update_abs),
      max_sync_wait_(max_sync_wait) {}

v1::SyncReply RoundEndpoint::Sync(const std::string& identity, const v1::SyncRequest& request) {
  CLEAVE_CHECK_INPUT(request.have_version() >= -1, "have_version ", request.have_version(),
                     " is not a version");
  const auto wait =
      std::min(std::chrono::milliseconds(std::max<int64_t>(0, request.wait_ms())), max_sync_wait_);
  const SyncDecision decision = rounds_.Sync(identity, request.have_version(), wait);
  v1::SyncReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_action(ActionOf(decision.action));
  reply.set_round(decision.round);
  reply.set_model_version(decision.version);
  reply.set_rounds(rounds_.options().rounds);
  if (decision.weights.defined())
    protocol::EncodeWeights(decision.weights, reply.mutable_weights());
  return reply;
}

v1::UpdateReply RoundEndpoint::Submit(const std::string& identity,
                                      const v1::UpdateRequest& request) {
  const at::Tensor delta = decoder_.Decode(request.delta());
  const UpdateOutcome outcome =
      rounds_.Submit(identity, request.base_version(), request.round(), request.samples(), delta);
  v1::UpdateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_duplicate(outcome.duplicate);
  reply.set_staleness(outcome.staleness);
  reply.set_scale(outcome.scale);
  reply.set_model_version(outcome.version);
  return reply;
}

}  // namespace cleave::server
