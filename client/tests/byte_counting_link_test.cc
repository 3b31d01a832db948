// ByteCountingLink counts the protobuf bytes of each request it passes on and each reply it gets
// back, per kind of message; a request whose call fails still counts as sent.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "cleave/client/byte_counting_link.h"

namespace cleave::client {
namespace {

// Answers every call with a reply of a known size, or throws when told to.
class ScriptedLink : public protocol::SplitLink {
 public:
  bool fail = false;
  int train_streams_opened = 0;

  v1::JoinReply Join(const v1::JoinRequest&) override {
    Check();
    v1::JoinReply reply;
    reply.set_session_id("session-0123456789");
    return reply;
  }
  void OpenTrainStream() override { ++train_streams_opened; }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    Check();
    v1::TrainReply reply;
    reply.set_step(request.step());
    reply.mutable_gradients()->mutable_shape()->Add(7);
    return reply;
  }
  void CloseTrainStream() override {}
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest&) override {
    Check();
    v1::EvaluateReply reply;
    reply.set_count(12);
    reply.set_correct(9);
    return reply;
  }
  void Leave(const v1::LeaveRequest&) override { Check(); }
  v1::SyncReply Sync(const v1::SyncRequest&) override {
    Check();
    v1::SyncReply reply;
    reply.set_round(3);
    return reply;
  }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest&) override {
    Check();
    v1::UpdateReply reply;
    reply.set_model_version(4);
    return reply;
  }

 private:
  void Check() const {
    if (fail) throw std::runtime_error("link down");
  }
};

int64_t Size(const google::protobuf::Message& message) {
  return static_cast<int64_t>(message.ByteSizeLong());
}

TEST(ByteCountingLinkTest, CountsEachKindOfMessageBothWays) {
  ScriptedLink inner;
  ByteCountingLink link(inner);
  v1::JoinRequest join;
  join.set_model_fingerprint("0123456789abcdef");
  const v1::JoinReply join_reply = link.Join(join);
  v1::TrainRequest train;
  train.set_session_id("s");
  train.set_step(41);
  train.mutable_activations()->mutable_shape()->Add(2);
  link.OpenTrainStream();
  const v1::TrainReply train_reply = link.TrainStep(train);
  const v1::TrainReply train_reply_2 = link.TrainStep(train);
  v1::EvaluateRequest evaluate;
  evaluate.set_session_id("evaluation");
  const v1::EvaluateReply evaluate_reply = link.Evaluate(evaluate);
  v1::UpdateRequest update;
  update.set_samples(640);
  update.mutable_delta()->mutable_shape()->Add(100);
  const v1::UpdateReply update_reply = link.SubmitUpdate(update);
  v1::SyncRequest sync;
  sync.set_have_version(2);
  const v1::SyncReply sync_reply = link.Sync(sync);
  v1::LeaveRequest leave;
  leave.set_session_id("s");
  link.Leave(leave);

  EXPECT_EQ(inner.train_streams_opened, 1);
  const LinkBytes& bytes = link.bytes();
  EXPECT_EQ(bytes.train.sent, 2 * Size(train));
  EXPECT_EQ(bytes.train.received, Size(train_reply) + Size(train_reply_2));
  EXPECT_EQ(bytes.evaluate.sent, Size(evaluate));
  EXPECT_EQ(bytes.evaluate.received, Size(evaluate_reply));
  EXPECT_EQ(bytes.update.sent, Size(update));
  EXPECT_EQ(bytes.update.received, Size(update_reply));
  EXPECT_EQ(bytes.sync.sent, Size(sync));
  EXPECT_EQ(bytes.sync.received, Size(sync_reply));
  EXPECT_EQ(bytes.session.sent, Size(join) + Size(leave));
  EXPECT_EQ(bytes.session.received, Size(join_reply));
  const MessageBytes total = bytes.Total();
  EXPECT_EQ(total.sent, bytes.train.sent + bytes.evaluate.sent + bytes.update.sent +
                            bytes.sync.sent + bytes.session.sent);
  EXPECT_EQ(total.received, bytes.train.received + bytes.evaluate.received +
                                bytes.update.received + bytes.sync.received +
                                bytes.session.received);
  EXPECT_GT(bytes.train.received, 0);
}

TEST(ByteCountingLinkTest, ARequestWhoseCallFailsIsStillCountedAsSent) {
  ScriptedLink inner;
  inner.fail = true;
  ByteCountingLink link(inner);
  v1::TrainRequest train;
  train.set_step(5);
  EXPECT_THROW(link.TrainStep(train), std::runtime_error);
  EXPECT_EQ(link.bytes().train.sent, Size(train));
  EXPECT_EQ(link.bytes().train.received, 0);
}

}  // namespace
}  // namespace cleave::client
