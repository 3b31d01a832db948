// RoundParticipant against a scripted server: an update refused as stale or from outside the round
// (ABORTED) makes it start again from the server's current weights in the same session; a fatal
// mismatch (FAILED_PRECONDITION) ends it at once; a lost connection makes it reconnect
// and keep the version it has; failures in a row beyond max_reconnects make it give up with the
// last error, and a refusal that retrying cannot cure ends it at once.
#include "cleave/client/round_participant.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/protocol/split_link.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave::client {
namespace {

using protocol::StatusError;

ModelSpec Mlp() { return test_support::MlpSpec(6, {8}, 2); }

Dataset Data() { return test_support::RandomData(32, 6, 2, 1); }

// A server whose Join, Sync and SubmitUpdate answers come from the test, one call at a time;
// training steps get a zero gradient and "the round is closing". Records what the client asked.
class ScriptedLink final : public protocol::SplitLink {
 public:
  std::function<v1::JoinReply(int call)> join;
  std::function<v1::SyncReply(const v1::SyncRequest&, int call)> sync;
  std::function<v1::UpdateReply(const v1::UpdateRequest&, int call)> update;

  int joins = 0, syncs = 0, updates = 0, steps = 0;
  std::vector<int64_t> sync_have_versions;
  std::vector<std::string> sync_sessions;
  std::vector<int64_t> update_base_versions;
  std::vector<std::string> update_sessions;

  v1::JoinReply Join(const v1::JoinRequest&) override { return join(joins++); }
  void OpenTrainStream() override {}
  void CloseTrainStream() override {}
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    ++steps;
    protocol::TensorSpec spec;
    spec.sample_shape = {8};
    const at::Tensor activations = protocol::DecodeTensor(request.activations(), spec).dense;
    v1::TrainReply reply;
    reply.set_protocol_version(protocol::kProtocolVersion);
    reply.set_step(request.step());
    reply.set_model_version(request.model_version());
    reply.set_round_closing(true);
    protocol::EncodeDense(at::zeros_like(activations), reply.mutable_gradients());
    return reply;
  }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest&) override { return {}; }
  void Leave(const v1::LeaveRequest&) override {}
  v1::SyncReply Sync(const v1::SyncRequest& request) override {
    sync_have_versions.push_back(request.have_version());
    sync_sessions.push_back(request.session_id());
    return sync(request, syncs++);
  }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override {
    update_base_versions.push_back(request.base_version());
    update_sessions.push_back(request.session_id());
    return update(request, updates++);
  }
};

v1::JoinReply Joined(int call) {
  v1::JoinReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_session_id("session-" + std::to_string(call + 1));
  reply.mutable_server()->set_max_batch(64);
  reply.mutable_server()->set_max_message_bytes(64 << 20);
  reply.mutable_server()->set_schedule("splitfed");
  for (v1::CompressionSettings* settings : {reply.mutable_compression()->mutable_activations(),
                                            reply.mutable_compression()->mutable_gradients(),
                                            reply.mutable_compression()->mutable_updates()}) {
    settings->set_method("none");
    settings->set_density(1.0);
    settings->set_value_precision("fp32");
  }
  return reply;
}

v1::SyncReply Train(int64_t round, int64_t version, const at::Tensor& weights) {
  v1::SyncReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_action(v1::SyncReply::TRAIN);
  reply.set_round(round);
  reply.set_rounds(10);
  reply.set_model_version(version);
  if (weights.defined()) protocol::EncodeDense(weights, reply.mutable_weights());
  return reply;
}

v1::SyncReply Done(int64_t version) {
  v1::SyncReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_action(v1::SyncReply::DONE);
  reply.set_model_version(version);
  return reply;
}

v1::UpdateReply Accepted(int64_t version) {
  v1::UpdateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_model_version(version);
  reply.set_scale(1.0);
  return reply;
}

RoundParticipantOptions Fast(int max_reconnects) {
  RoundParticipantOptions options;
  options.initial_backoff = std::chrono::milliseconds(1);
  options.max_backoff = std::chrono::milliseconds(1);
  options.max_reconnects = max_reconnects;
  return options;
}

TrainerOptions Trainer() {
  TrainerOptions options;
  options.model = Mlp();
  options.batch_size = 8;
  return options;
}

TEST(RoundParticipantTest, AnUpdateRefusedAsStaleResynchronisesFromTheServersWeights) {
  ScriptedLink link;
  SplitTrainer trainer(Trainer(), link);
  const at::Tensor v0 = trainer.ClientWeights();
  const at::Tensor v3 = v0 + 0.5;  // the server moved on while this hospital trained
  link.join = Joined;
  link.sync = [&](const v1::SyncRequest&, int call) {
    switch (call) {
      case 0:
        return Train(1, 0, v0);
      case 1:
        return Train(4, 3, v3);
      default:
        return Done(3);
    }
  };
  link.update = [&](const v1::UpdateRequest&, int call) -> v1::UpdateReply {
    if (call == 0) throw StatusError(grpc::StatusCode::ABORTED, "update is 3 versions old");
    return Accepted(4);
  };
  RoundParticipant participant(trainer, Fast(5));
  const Dataset data = Data();
  const ParticipationStats stats = participant.Run(data, data.size(), nullptr);

  // The same session (an ABORTED refusal keeps it), and a Sync that asks for the weights again
  // (have_version -1), not version 0.
  EXPECT_EQ(link.joins, 1);
  EXPECT_EQ(link.sync_have_versions, (std::vector<int64_t>{-1, -1, 3}));
  EXPECT_EQ(link.sync_sessions, (std::vector<std::string>{"session-1", "session-1", "session-1"}));
  // The second update is based on the version the server sent.
  EXPECT_EQ(link.update_base_versions, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(link.update_sessions, (std::vector<std::string>{"session-1", "session-1"}));
  EXPECT_EQ(stats.updates_refused, 1);
  EXPECT_EQ(stats.updates_sent, 1);
  EXPECT_EQ(stats.errors_recovered, 1);
  EXPECT_EQ(stats.reconnects, 0);
  EXPECT_EQ(stats.rounds_trained, 2);
  EXPECT_EQ(stats.final_version, 3);
  EXPECT_EQ(trainer.model_version(), 3);
}

TEST(RoundParticipantTest, ALostConnectionReconnectsAndKeepsTheVersionItHas) {
  ScriptedLink link;
  SplitTrainer trainer(Trainer(), link);
  const at::Tensor v0 = trainer.ClientWeights();
  link.join = Joined;
  link.sync = [&](const v1::SyncRequest&, int call) -> v1::SyncReply {
    if (call == 0) return Train(1, 0, v0);
    if (call == 1) throw StatusError(grpc::StatusCode::UNAVAILABLE, "connection reset");
    return Done(1);
  };
  link.update = [&](const v1::UpdateRequest&, int) { return Accepted(1); };
  RoundParticipant participant(trainer, Fast(5));
  const Dataset data = Data();
  const ParticipationStats stats = participant.Run(data, data.size(), nullptr);
  EXPECT_EQ(link.joins, 2);
  // Reconnected, it still has version 0: the server need not send the weights again.
  EXPECT_EQ(link.sync_have_versions, (std::vector<int64_t>{-1, 0, 0}));
  EXPECT_EQ(stats.reconnects, 1);
  EXPECT_EQ(stats.updates_refused, 0);
  EXPECT_EQ(stats.updates_sent, 1);
}

TEST(RoundParticipantTest, GivesUpAfterMaxReconnectsFailedSyncsInARow) {
  ScriptedLink link;
  SplitTrainer trainer(Trainer(), link);
  link.join = Joined;
  link.sync = [&](const v1::SyncRequest&, int) -> v1::SyncReply {
    throw StatusError(grpc::StatusCode::UNAVAILABLE, "server gone");
  };
  link.update = [&](const v1::UpdateRequest&, int) { return Accepted(0); };
  RoundParticipant participant(trainer, Fast(4));
  const Dataset data = Data();
  try {
    participant.Run(data, data.size(), nullptr);
    FAIL() << "Run did not give up";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::UNAVAILABLE) << error.what();
  }
  EXPECT_EQ(link.syncs, 4);
  EXPECT_EQ(link.joins, 4);  // the first Join and one after each of the first three failures
}

TEST(RoundParticipantTest, GivesUpAfterMaxReconnectsFailedJoins) {
  ScriptedLink link;
  SplitTrainer trainer(Trainer(), link);
  link.join = [](int call) -> v1::JoinReply {
    if (call == 0) return Joined(call);
    throw StatusError(grpc::StatusCode::UNAVAILABLE, "cannot reach the server");
  };
  link.sync = [&](const v1::SyncRequest&, int) -> v1::SyncReply {
    throw StatusError(grpc::StatusCode::UNAVAILABLE, "server gone");
  };
  link.update = [&](const v1::UpdateRequest&, int) { return Accepted(0); };
  RoundParticipant participant(trainer, Fast(3));
  const Dataset data = Data();
  EXPECT_THROW(participant.Run(data, data.size(), nullptr), StatusError);
  EXPECT_EQ(link.syncs, 1);
  EXPECT_EQ(link.joins, 1 + 3);
}

TEST(RoundParticipantTest, ARefusalThatRetryingCannotCureEndsItAtOnce) {
  ScriptedLink link;
  SplitTrainer trainer(Trainer(), link);
  link.join = Joined;
  link.sync = [&](const v1::SyncRequest&, int) -> v1::SyncReply {
    throw StatusError(grpc::StatusCode::PERMISSION_DENIED, "not on the allowlist");
  };
  link.update = [&](const v1::UpdateRequest&, int) { return Accepted(0); };
  RoundParticipant participant(trainer, Fast(10));
  const Dataset data = Data();
  try {
    participant.Run(data, data.size(), nullptr);
    FAIL() << "Run did not end";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  EXPECT_EQ(link.syncs, 1);
  EXPECT_EQ(link.joins, 1);
}

TEST(RoundParticipantTest, AStepOrUpdateFromOutsideTheRoundResynchronises) {
  ScriptedLink link;
  SplitTrainer trainer(Trainer(), link);
  const at::Tensor v0 = trainer.ClientWeights();
  link.join = Joined;
  link.sync = [&](const v1::SyncRequest&, int call) {
    if (call == 0) return Train(1, 0, v0);
    if (call == 1) return Train(1, 0, v0);
    return Done(1);
  };
  link.update = [&](const v1::UpdateRequest&, int call) -> v1::UpdateReply {
    // The server restarted meanwhile and forgot that it told this hospital to train.
    if (call == 0) {
      throw StatusError(grpc::StatusCode::ABORTED,
                        "this hospital was not told to train client model version 0 (round 1): "
                        "Sync first");
    }
    return Accepted(1);
  };
  RoundParticipant participant(trainer, Fast(5));
  const Dataset data = Data();
  const ParticipationStats stats = participant.Run(data, data.size(), nullptr);
  EXPECT_EQ(link.syncs, 3);
  EXPECT_EQ(link.sync_have_versions, (std::vector<int64_t>{-1, -1, 0}));  // weights asked again
  EXPECT_EQ(link.updates, 2);
  EXPECT_EQ(stats.updates_refused, 1);
  EXPECT_EQ(stats.updates_sent, 1);
  EXPECT_EQ(stats.reconnects, 0);
}

TEST(RoundParticipantTest, AFatalMismatchEndsItWithoutResynchronising) {
  for (const bool in_sync : {true, false}) {
    ScriptedLink link;
    SplitTrainer trainer(Trainer(), link);
    const at::Tensor v0 = trainer.ClientWeights();
    const StatusError mismatch(grpc::StatusCode::FAILED_PRECONDITION,
                               "model fingerprint mismatch: client 0123, server 4567");
    link.join = Joined;
    link.sync = [&](const v1::SyncRequest&, int call) -> v1::SyncReply {
      if (call >= 3) return Done(0);  // a client that resynchronised ends here, not in a loop
      if (in_sync) throw mismatch;
      return Train(1, 0, v0);
    };
    link.update = [&](const v1::UpdateRequest&, int) -> v1::UpdateReply { throw mismatch; };
    RoundParticipant participant(trainer, Fast(40));
    const Dataset data = Data();
    try {
      participant.Run(data, data.size(), nullptr);
      FAIL() << "Run went on after a fatal mismatch";
    } catch (const StatusError& error) {
      EXPECT_EQ(error.code(), grpc::StatusCode::FAILED_PRECONDITION);
      EXPECT_NE(std::string(error.what()).find("fingerprint"), std::string::npos);
    }
    EXPECT_EQ(link.syncs, 1) << (in_sync ? "in Sync" : "in SubmitUpdate");
    EXPECT_EQ(link.updates, in_sync ? 0 : 1);
    EXPECT_EQ(link.joins, 1);
  }
}

}  // namespace
}  // namespace cleave::client
