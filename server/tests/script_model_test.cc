// SplitServer with a TorchScript top (cleave-server --top): trains it, writes it back as
// TorchScript, refuses the bottom of another export at Join, and needs the bottom for rounds.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cleave/core/error.h"
#include "cleave/core/script_half.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/refusal.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/script_halves.h"
#include "cleave/test_support/temp_dir.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using test::JoinFor;

SplitServerOptions ScriptOptions(const std::string& bottom, const std::string& top) {
  SplitServerOptions options;
  options.model = TorchScriptSpec(bottom, top);
  options.max_batch = 16;
  return options;
}

TEST(ScriptModelServerTest, TrainsATorchScriptTopAndWritesItBack) {
  test_support::TempDir dir;
  const auto halves = test_support::WriteScriptHalves(dir.path(), "a", "split-a");
  SplitServerOptions options = ScriptOptions("", halves.top);
  options.save_top_path = dir.File("trained_top.pt");
  SplitServer server(options);
  EXPECT_EQ(server.fingerprint(), ModelFingerprint(TorchScriptSpec(halves.bottom, "")));
  const std::string session = server.Join("st-mary", JoinFor(server)).session_id();

  const std::vector<at::Tensor> before = server.top_parameters();
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  protocol::EncodeDense(at::rand({6, 4}), request.mutable_activations());
  protocol::EncodeDense(at::randint(0, 3, {6}, at::kLong), request.mutable_labels());
  const v1::TrainReply reply = server.Train("st-mary", request);
  protocol::TensorSpec spec;
  spec.sample_shape = {4};
  EXPECT_EQ(protocol::DecodeTensor(reply.gradients(), spec).dense.sizes(),
            (std::vector<int64_t>{6, 4}));
  const std::vector<at::Tensor> after = server.top_parameters();
  ASSERT_EQ(after.size(), 2u);
  EXPECT_FALSE(after[0].equal(before[0]));

  server.SaveCheckpoint();  // no --checkpoint: the TorchScript top is still written
  ScriptHalf saved = LoadScriptHalf(options.save_top_path, "top");
  EXPECT_TRUE(saved->parameters()[0].equal(after[0]));
  EXPECT_EQ(saved->meta().split_id, "split-a");
}

TEST(ScriptModelServerTest, JoinRefusesTheBottomOfAnotherExport) {
  test_support::TempDir dir;
  const auto ours = test_support::WriteScriptHalves(dir.path(), "a", "split-a");
  const auto theirs = test_support::WriteScriptHalves(dir.path(), "b", "split-b");
  SplitServer server(ScriptOptions("", ours.top));
  v1::JoinRequest request = JoinFor(server);
  request.set_model_fingerprint(ModelFingerprint(TorchScriptSpec(theirs.bottom, "")));
  try {
    server.Join("st-mary", request);
    FAIL() << "the bottom of another export joined";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kMismatch);
  }
  request.set_model_fingerprint(ModelFingerprint(TorchScriptSpec(ours.bottom, "")));
  EXPECT_NO_THROW(server.Join("st-mary", request));
}

TEST(ScriptModelServerTest, RoundsNeedTheBottomToo) {
  test_support::TempDir dir;
  const auto halves = test_support::WriteScriptHalves(dir.path(), "a", "split-a");
  SplitServerOptions top_only = ScriptOptions("", halves.top);
  top_only.rounds.schedule = Schedule::kSplitFed;
  EXPECT_THROW(SplitServer{top_only}, UserError);
  SplitServerOptions both = ScriptOptions(halves.bottom, halves.top);
  both.rounds.schedule = Schedule::kSplitFed;
  SplitServer server(both);
  EXPECT_EQ(server.fingerprint(), ModelFingerprint(TorchScriptSpec("", halves.top)));
  SplitServerOptions bottom_only = ScriptOptions(halves.bottom, "");
  EXPECT_THROW(SplitServer{bottom_only}, UserError);
  SplitServerOptions zoo = test::MlpOptions();
  zoo.save_top_path = dir.File("never.pt");
  EXPECT_THROW(SplitServer{zoo}, UserError);
}

}  // namespace
}  // namespace cleave::server
