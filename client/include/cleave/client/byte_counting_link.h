// A SplitLink decorator that counts the protobuf bytes of every request it passes on and every
// reply it gets back, per kind of message. The trainer talks to the server through one, so byte
// accounting lives in one place whatever the link underneath (gRPC or in-process). A request is
// counted when it is handed to the link (it is sent even if the call then fails), a reply when it
// arrives. Not thread-safe: one trainer, one thread, like the links it wraps.
#pragma once

#include <cstdint>

#include "cleave/protocol/split_link.h"

namespace cleave::client {

struct MessageBytes {
  int64_t sent = 0;      // requests
  int64_t received = 0;  // replies
};

struct LinkBytes {
  MessageBytes train;     // Train stream: activations up, gradients down
  MessageBytes evaluate;  // Evaluate: activations up, loss and counts down
  MessageBytes update;    // SubmitUpdate (rounds): client-model deltas up
  MessageBytes sync;      // Sync (rounds)
  MessageBytes session;   // Join and Leave (the server counts a session's bytes between them)
  MessageBytes Total() const;
};

class ByteCountingLink final : public protocol::SplitLink {
 public:
  explicit ByteCountingLink(protocol::SplitLink& inner) : inner_(inner) {}

  v1::JoinReply Join(const v1::JoinRequest& request) override;
  void OpenTrainStream() override { inner_.OpenTrainStream(); }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override;
  void CloseTrainStream() override { inner_.CloseTrainStream(); }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override;
  void Leave(const v1::LeaveRequest& request) override;
  v1::SyncReply Sync(const v1::SyncRequest& request) override;
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override;

  const LinkBytes& bytes() const { return bytes_; }

 private:
  protocol::SplitLink& inner_;
  LinkBytes bytes_;
};

}  // namespace cleave::client
