// A SplitLink that calls a SplitServer in the same process, with messages serialised and parsed
// as on the wire, so local training and benchmarks exercise the same validation as gRPC.
#pragma once

#include <string>

#include "cleave/protocol/split_link.h"

namespace cleave::server {

class SplitServer;

class InProcessLink final : public protocol::SplitLink {
 public:
  InProcessLink(SplitServer& server, std::string identity)
      : server_(server), identity_(std::move(identity)) {}
  v1::JoinReply Join(const v1::JoinRequest& request) override;
  void OpenTrainStream() override {}
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override;
  void CloseTrainStream() override {}
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override;
  void Leave(const v1::LeaveRequest& request) override;
  v1::SyncReply Sync(const v1::SyncRequest& request) override;
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override;

 private:
  SplitServer& server_;
  std::string identity_;
};

}  // namespace cleave::server
