// The client's view of the server, as protocol messages. Two implementations: the gRPC link
// (client/grpc_link.h) and the in-process link (server/in_process_link.h) that calls a SplitServer
// directly, so local training (benchmarks, cleave-leakage sweeps) runs the same code path.
#pragma once

#include "cleave/protocol/cleave.pb.h"

namespace cleave::protocol {

class SplitLink {
 public:
  virtual ~SplitLink() = default;
  virtual v1::JoinReply Join(const v1::JoinRequest& request) = 0;
  // Opens the Train stream; TrainStep sends one batch and waits for its gradients.
  virtual void OpenTrainStream() = 0;
  virtual v1::TrainReply TrainStep(const v1::TrainRequest& request) = 0;
  virtual void CloseTrainStream() = 0;
  virtual v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) = 0;
  virtual void Leave(const v1::LeaveRequest& request) = 0;
  // Rounds (schedules sequential and splitfed): what to do next, and the client-model update.
  virtual v1::SyncReply Sync(const v1::SyncRequest& request) = 0;
  virtual v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) = 0;
};

}  // namespace cleave::protocol
