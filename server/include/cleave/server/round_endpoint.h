// Sync and SubmitUpdate as the rounds see them: a request checked and translated into a
// RoundCoordinator call, its decision or outcome into the reply. SplitServer checks the session
// first and does the accounting after; this does the translation only.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/client_model_codec.h"
#include "cleave/server/round_coordinator.h"

namespace cleave::server {

class RoundEndpoint {
 public:
  // `updates`: how update deltas travel (the link contract's); `max_sync_wait`: the longest a
  // Sync is held.
  RoundEndpoint(RoundCoordinator& rounds, const protocol::DirectionSpec& updates,
                std::chrono::milliseconds max_sync_wait);

  // Waits (up to the request's wait, capped) for what the hospital should do. Throws InvalidInput
  // for a malformed request.
  v1::SyncReply Sync(const std::string& identity, const v1::SyncRequest& request);
  // Decodes the delta (bounded by the rounds' max_update_abs) and submits it. Throws InvalidInput
  // (a delta that does not decode) or Refusal (RoundCoordinator::Submit).
  v1::UpdateReply Submit(const std::string& identity, const v1::UpdateRequest& request);

 private:
  RoundCoordinator& rounds_;
  const protocol::UpdateDecoder decoder_;
  const std::chrono::milliseconds max_sync_wait_;
};

}  // namespace cleave::server
