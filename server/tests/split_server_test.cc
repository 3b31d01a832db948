// SplitServer without a network: Join checks, validation of what clients send, sessions owned by
// identities, checkpoints and resume.
#include "cleave/server/split_server.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <limits>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/in_process_link.h"
#include "cleave/test_support/temp_dir.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using test::JoinFor;
using test::MlpOptions;
using test::SyncFor;
using test::UpdateFor;

v1::TrainRequest Batch(const std::string& session, int64_t width, int64_t batch = 4) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  protocol::EncodeDense(at::randn({batch, width}), request.mutable_activations());
  protocol::EncodeDense(at::randint(0, 3, {batch}, at::kLong), request.mutable_labels());
  return request;
}

// A file in this process's own temporary directory, removed when the process exits.
std::string TempPath(const std::string& name) {
  static const test_support::TempDir dir;
  return dir.File(name);
}

TEST(SplitServerTest, PerSampleSelectionIsAdvertisedForActivationsOnly) {
  SplitServerOptions options = MlpOptions();
  auto* act = options.compression.mutable_activations();
  act->set_method("gaussiank+");
  act->set_density(0.1);
  act->set_per_sample(true);
  SplitServer server(options);
  const v1::JoinReply reply = server.Join("st-mary", JoinFor(server));
  EXPECT_TRUE(reply.compression().activations().per_sample());
  EXPECT_NE(DescribeCompression(reply.compression()).find("gaussiank+:0.100000:fp32:per-sample"),
            std::string::npos)
      << DescribeCompression(reply.compression());

  v1::CompressionConfig dense;
  dense.mutable_activations()->set_per_sample(true);  // method none: nothing to choose
  EXPECT_FALSE(NormalizeCompression(dense).activations().per_sample());

  v1::CompressionConfig gradients_per_sample = options.compression;
  gradients_per_sample.mutable_gradients()->set_method("gaussiank");
  gradients_per_sample.mutable_gradients()->set_density(0.5);
  gradients_per_sample.mutable_gradients()->set_per_sample(true);
  EXPECT_THROW(NormalizeCompression(gradients_per_sample), UserError);
}

TEST(SplitServerTest, JoinRefusesOtherFingerprintNamingBoth) {
  SplitServer server(MlpOptions());
  v1::JoinRequest request = JoinFor(server);
  request.set_model_fingerprint("0123456789abcdef");
  try {
    server.Join("a", request);
    FAIL();
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kMismatch);
    EXPECT_NE(std::string(error.what()).find("0123456789abcdef"), std::string::npos);
    EXPECT_NE(std::string(error.what()).find(server.fingerprint()), std::string::npos);
  }
}

TEST(SplitServerTest, JoinRefusesOtherProtocolVersion) {
  SplitServer server(MlpOptions());
  v1::JoinRequest request = JoinFor(server);
  request.set_protocol_version(99);
  try {
    server.Join("a", request);
    FAIL() << "a client of another protocol version joined";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kMismatch);
  }
}

TEST(SplitServerTest, AllowlistRefusesOthersWithPermissionDenied) {
  SplitServerOptions options = MlpOptions();
  const std::string path = TempPath("clients.txt");
  WriteFileAtomic(path, "# hospitals\nst-mary\n  riverside  # east wing\n\n");
  options.allowed_clients = LoadClientAllowlist(path);
  EXPECT_EQ(options.allowed_clients, (std::set<std::string>{"st-mary", "riverside"}));
  SplitServer server(options);
  EXPECT_NO_THROW(server.Join("riverside", JoinFor(server)));
  try {
    server.Join("mallory", JoinFor(server));
    FAIL() << "an unlisted client joined";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kNotAllowed);
  }
  EXPECT_EQ(server.active_sessions(), 1u);
  WriteFileAtomic(path, "st mary\n");
  EXPECT_THROW(LoadClientAllowlist(path), UserError);
  EXPECT_THROW(LoadClientAllowlist(TempPath("missing.txt")), UserError);
}

TEST(SplitServerTest, TrainReturnsGradientOfTheCutShape) {
  SplitServer server(MlpOptions());
  const auto joined = server.Join("a", JoinFor(server));
  const auto reply = server.Train("a", Batch(joined.session_id(), 128));
  protocol::TensorSpec spec;
  spec.sample_shape = {128};
  const at::Tensor gradient = protocol::DecodeTensor(reply.gradients(), spec).dense;
  EXPECT_EQ(gradient.sizes(), (std::vector<int64_t>{4, 128}));
  EXPECT_GT(gradient.abs().sum().item<double>(), 0);
  EXPECT_EQ(server.step(), 1);
  EXPECT_GT(reply.loss(), 0);
}

TEST(SplitServerTest, RejectsBadTensorsWithoutStepping) {
  SplitServer server(MlpOptions());
  const auto session = server.Join("a", JoinFor(server)).session_id();
  EXPECT_THROW(server.Train("a", Batch(session, 127)), InvalidInput);      // shape
  EXPECT_THROW(server.Train("a", Batch(session, 128, 17)), InvalidInput);  // batch > max
  auto nan = Batch(session, 128);
  at::Tensor values = at::randn({4, 128});
  values[0][0] = std::numeric_limits<float>::quiet_NaN();
  protocol::EncodeDense(values, nan.mutable_activations());
  EXPECT_THROW(server.Train("a", nan), InvalidInput);
  EXPECT_EQ(server.step(), 0);
}

TEST(SplitServerTest, SessionsBelongToTheirIdentity) {
  SplitServer server(MlpOptions());
  const auto session = server.Join("alice", JoinFor(server)).session_id();
  try {
    server.Train("bob", Batch(session, 128));
    FAIL();
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kNotAllowed);
  }
  EXPECT_THROW(server.Leave("bob", session), Refusal);
  try {
    server.Train("alice", Batch("no-such-session", 128));
    FAIL();
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kUnknownSession);
  }
  server.Leave("alice", session);
  EXPECT_EQ(server.active_sessions(), 0u);
}

TEST(SplitServerTest, InProcessLinkRoundTripsMessages) {
  SplitServer server(MlpOptions());
  InProcessLink link(server, "local");
  const auto joined = link.Join(JoinFor(server));
  EXPECT_EQ(joined.client_name(), "local");
  link.TrainStep(Batch(joined.session_id(), 128));
  EXPECT_EQ(server.step(), 1);
}

TEST(SplitServerTest, EvaluateCountsTheCorrectSamplesOfEachClass) {
  const SplitServerOptions options = MlpOptions();
  SplitServer server(options);
  const auto session = server.Join("a", JoinFor(server)).session_id();
  // The reference: the same top layers, run here on the same activations.
  SplitModel reference = BuildSplitModel(options.model, options.seed);
  const std::vector<at::Tensor> weights = server.top_parameters();
  ASSERT_EQ(reference.top->parameters().size(), weights.size());
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < weights.size(); ++i) reference.top->parameters()[i].copy_(weights[i]);
  }
  reference.top->eval();
  const at::Tensor activations = at::randn({16, 128});
  const at::Tensor predicted = reference.top->forward(activations).argmax(1);
  // Rows 0..9 labelled as predicted (correct), the rest as another class (wrong).
  at::Tensor labels = predicted.clone();
  labels.slice(0, 10) = (labels.slice(0, 10) + 1) % 3;
  std::vector<int64_t> expected(3, 0);
  for (int64_t row = 0; row < 10; ++row) ++expected[labels[row].item<int64_t>()];

  v1::EvaluateRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  protocol::EncodeDense(activations, request.mutable_activations());
  protocol::EncodeDense(labels, request.mutable_labels());
  const v1::EvaluateReply reply = server.Evaluate("a", request);
  EXPECT_EQ(reply.count(), 16);
  EXPECT_EQ(reply.correct(), 10);
  const std::vector<int64_t> per_class(reply.correct_per_class().begin(),
                                       reply.correct_per_class().end());
  EXPECT_EQ(per_class, expected);
}

TEST(SplitServerTest, CheckpointEveryNStepsAndResume) {
  const std::string path = TempPath("resume.ckpt");
  std::remove(path.c_str());
  SplitServerOptions options = MlpOptions();
  options.checkpoint_path = path;
  options.checkpoint_every = 5;
  {
    SplitServer server(options);
    const auto session = server.Join("a", JoinFor(server)).session_id();
    for (int i = 0; i < 7; ++i) server.Train("a", Batch(session, 128));
  }
  ASSERT_TRUE(FileExists(path));
  options.resume = true;
  SplitServer resumed(options);
  EXPECT_EQ(resumed.step(), 5);  // the checkpoint written at step 5
}

TEST(SplitServerTest, CorruptCheckpointIsRefusedAndKept) {
  const std::string path = TempPath("corrupt.ckpt");
  SplitServerOptions options = MlpOptions();
  options.checkpoint_path = path;
  {
    SplitServer server(options);
    server.SaveCheckpoint();
  }
  std::string bytes = ReadFile(path, "checkpoint");
  bytes[bytes.size() / 2] ^= 0x5a;
  WriteFileAtomic(path, bytes);
  options.resume = true;
  try {
    SplitServer server(options);
    FAIL() << "a corrupt checkpoint was accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
  }
  EXPECT_EQ(ReadFile(path, "checkpoint"), bytes);  // left as it was, for inspection
}

TEST(SplitServerTest, RestartedServerResumesTheRoundFromItsCheckpoint) {
  const std::string path = TempPath("rounds.ckpt");
  std::remove(path.c_str());
  SplitServerOptions options = MlpOptions();
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.min_clients = 2;
  options.rounds.round_samples = 8;
  options.compression.mutable_updates()->set_method("none");
  options.checkpoint_path = path;
  RoundState before;
  at::Tensor delta_a;
  int64_t parameters = 0;
  {
    SplitServer server(options);
    const std::string a = server.Join("a", JoinFor(server)).session_id();
    const std::string b = server.Join("b", JoinFor(server)).session_id();
    EXPECT_EQ(server.Sync("a", SyncFor(a, -1)).action(), v1::SyncReply::TRAIN);
    EXPECT_EQ(server.Sync("b", SyncFor(b, -1)).action(), v1::SyncReply::TRAIN);
    const int64_t width = server.rounds()->Snapshot().weights.numel();
    parameters = width;
    v1::TrainReply reply = server.Train("a", Batch(a, 128));
    EXPECT_FALSE(reply.round_closing());
    reply = server.Train("b", Batch(b, 128));
    EXPECT_TRUE(reply.round_closing());  // 8 samples: the round's target
    delta_a = at::randn({parameters});
    const v1::UpdateReply accepted = server.SubmitUpdate("a", UpdateFor(a, 0, 1, 4, delta_a));
    EXPECT_FALSE(accepted.duplicate());
    before = server.rounds()->Snapshot();
    // The server dies here, without a shutdown: the accepted update must be on disk already.
  }
  options.resume = true;
  SplitServer resumed(options);
  const RoundState after = resumed.rounds()->Snapshot();
  EXPECT_EQ(after.round, 1);
  EXPECT_EQ(after.version, 0);
  EXPECT_EQ(after.updates_accepted, 1);
  ASSERT_EQ(after.pending.size(), 1u);
  EXPECT_EQ(after.pending[0].samples, 4);
  EXPECT_EQ(after.last_round_submitted.at("a"), 1);
  EXPECT_EQ(after.submitted.count("a"), 1u);
  EXPECT_TRUE(at::equal(after.weights, before.weights));
  EXPECT_TRUE(at::equal(after.pending[0].delta, before.pending[0].delta));
  EXPECT_EQ(resumed.step(), 2);

  const std::string a = resumed.Join("a", JoinFor(resumed)).session_id();
  const std::string b = resumed.Join("b", JoinFor(resumed)).session_id();
  EXPECT_TRUE(resumed.SubmitUpdate("a", UpdateFor(a, 0, 1, 4, delta_a)).duplicate());
  const v1::SyncReply sync = resumed.Sync("b", SyncFor(b, 0));
  EXPECT_EQ(sync.action(), v1::SyncReply::TRAIN);
  resumed.Train("b", Batch(b, 128));
  const at::Tensor delta_b = at::randn({parameters});
  const v1::UpdateReply closed = resumed.SubmitUpdate("b", UpdateFor(b, 0, 1, 4, delta_b));
  EXPECT_EQ(closed.model_version(), 1);
  const RoundState done = resumed.rounds()->Snapshot();
  EXPECT_TRUE(at::allclose(done.weights, before.weights + (delta_a + delta_b) / 2.0));
  EXPECT_EQ(done.updates_accepted, 2);
  EXPECT_EQ(done.updates_applied, 2);
  std::remove(path.c_str());
}

// After its last round the server's work is over once every hospital has left, or after the
// linger at the latest; never before the last round has closed.
TEST(SplitServerTest, FinishedServingAfterTheLastRoundOnceEveryHospitalHasLeft) {
  using std::chrono::seconds;
  SplitServerOptions options = MlpOptions();
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.rounds = 1;
  options.rounds.round_samples = 4;
  options.compression.mutable_updates()->set_method("none");
  SplitServer server(options);
  const auto linger = std::chrono::milliseconds(60000);
  const auto later = [] { return std::chrono::steady_clock::now() + seconds(3600); };
  const std::string a = server.Join("a", JoinFor(server)).session_id();
  const std::string b = server.Join("b", JoinFor(server)).session_id();
  ASSERT_EQ(server.Sync("a", SyncFor(a, -1)).action(), v1::SyncReply::TRAIN);
  EXPECT_FALSE(server.FinishedServing(later(), linger)) << "rounds left: no linger applies";
  EXPECT_TRUE(server.Train("a", Batch(a, 128)).round_closing());
  const int64_t parameters = server.rounds()->num_parameters();
  server.SubmitUpdate("a", UpdateFor(a, 0, 1, 4, at::zeros({parameters})));
  ASSERT_TRUE(server.rounds()->finished());
  // a evaluates and fetches the final weights (DONE names round 1 of 1), then leaves.
  const v1::SyncReply done = server.Sync("a", SyncFor(a, 0));
  EXPECT_EQ(done.action(), v1::SyncReply::DONE);
  EXPECT_EQ(done.round(), 1);
  server.Leave("a", a);
  EXPECT_FALSE(server.FinishedServing(std::chrono::steady_clock::now(), linger))
      << "b has not left";
  std::string why;
  EXPECT_TRUE(server.FinishedServing(later(), linger, &why)) << "b outstayed the linger";
  EXPECT_NE(why.find("1 session(s) still open"), std::string::npos) << why;
  server.Leave("b", b);
  EXPECT_TRUE(server.FinishedServing(std::chrono::steady_clock::now(), linger, &why));
  EXPECT_NE(why.find("every hospital has left"), std::string::npos) << why;
}

TEST(SplitServerTest, WithoutARoundLimitTheServerNeverFinishesServing) {
  SplitServerOptions options = MlpOptions();
  SplitServer single(options);
  EXPECT_FALSE(single.FinishedServing(std::chrono::steady_clock::now() + std::chrono::hours(1),
                                      std::chrono::milliseconds(0)));
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.rounds = 0;
  SplitServer unlimited(options);
  EXPECT_FALSE(unlimited.FinishedServing(std::chrono::steady_clock::now() + std::chrono::hours(1),
                                         std::chrono::milliseconds(0)));
}

TEST(SplitServerTest, AnotherHospitalCannotSyncOrUpdateThroughASession) {
  SplitServerOptions options = MlpOptions();
  options.rounds.schedule = Schedule::kSplitFed;
  SplitServer server(options);
  const std::string a = server.Join("a", JoinFor(server)).session_id();
  server.Join("b", JoinFor(server));
  for (auto call : {0, 1}) {
    try {
      if (call == 0) {
        server.Sync("b", SyncFor(a, -1));
      } else {
        server.SubmitUpdate("b", UpdateFor(a, 0, 1, 4, at::zeros({4})));
      }
      FAIL() << "b used a's session";
    } catch (const Refusal& error) {
      EXPECT_EQ(error.kind(), RefusalKind::kNotAllowed);
    }
  }
}

TEST(SplitServerTest, OnlyTheOwnerOfASessionCanHaveItReleased) {
  SplitServer server(MlpOptions());
  const std::string a = server.Join("a", JoinFor(server)).session_id();
  // b names a's session on a stream it then cancels: a's session must survive.
  server.ReleaseSession("b", a, "stream cancelled");
  EXPECT_EQ(server.active_sessions(), 1u);
  server.ReleaseSession("a", a, "stream cancelled");
  EXPECT_EQ(server.active_sessions(), 0u);
}

TEST(SplitServerTest, SingleScheduleHasNoRounds) {
  SplitServer server(MlpOptions());
  const std::string a = server.Join("a", JoinFor(server)).session_id();
  try {
    server.Sync("a", SyncFor(a, -1));
    FAIL() << "Sync worked without rounds";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kMismatch);
  }
}

}  // namespace
}  // namespace cleave::server
