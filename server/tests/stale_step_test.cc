// A training step computed with a client-side model s versions old moves the server's layers
// 1/(1+s) as far as a fresh step (Dai et al.). Under SGD a step is linear in the learning rate, so
// this is exact: two servers go through the same history and differ only in whether the measured
// step is stale. The stale step is a legitimate one: its hospital was told to train version 0,
// then restarted (its new session replaced the old, and the round stopped waiting for it) while
// another hospital finished s rounds alone.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using test::JoinFor;
using test::SyncFor;

constexpr int64_t kWidth = 128;  // cut width of test::MlpOptions()'s model
constexpr int64_t kBatch = 4;

SplitServerOptions Options() {
  SplitServerOptions options = test::MlpOptions();
  options.optimizer = "sgd";
  options.learning_rate = 0.05;
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.min_clients = 2;
  options.rounds.round_samples = 1000;  // rounds close on updates, not on samples
  options.rounds.max_staleness = 2;
  options.compression.mutable_updates()->set_method("none");
  options.session_idle_timeout = std::chrono::milliseconds(0);
  return options;
}

struct Batch {
  at::Tensor activations, labels;
};

std::vector<Batch> Batches(int count) {
  const at::Generator generator = at::detail::createCPUGenerator(7);
  std::vector<Batch> batches;
  for (int i = 0; i < count; ++i) {
    batches.push_back({at::randn({kBatch, kWidth}, generator, at::kFloat),
                       at::randint(0, 3, {kBatch}, generator, at::kLong)});
  }
  return batches;
}

v1::TrainRequest TrainFor(const std::string& session, const Batch& batch, int64_t version) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_model_version(version);
  protocol::EncodeDense(batch.activations, request.mutable_activations());
  protocol::EncodeDense(batch.labels, request.mutable_labels());
  return request;
}

v1::UpdateRequest UpdateFor(const std::string& session, int64_t base_version, int64_t round,
                            const at::Tensor& delta) {
  return test::UpdateFor(session, base_version, round, kBatch, delta);
}

// Two hospitals; `a` holds an assignment to train version 0 in a session that outlived `rounds`
// rounds closed by `b` alone.
struct AgedServer {
  AgedServer(int64_t rounds, const std::vector<Batch>& batches) : server(Options()) {
    a = server.Join("a", JoinFor(server)).session_id();
    b = server.Join("b", JoinFor(server)).session_id();
    EXPECT_EQ(server.Sync("a", SyncFor(a, -1)).action(), v1::SyncReply::TRAIN);
    EXPECT_EQ(server.Sync("b", SyncFor(b, -1)).action(), v1::SyncReply::TRAIN);
    // a restarts: the round no longer waits for it, its assignment to version 0 stays.
    a = server.Join("a", JoinFor(server)).session_id();
    const at::Tensor delta = at::full({server.rounds()->num_parameters()}, 1e-3);
    for (int64_t version = 0; version < rounds; ++version) {
      if (version > 0) {
        EXPECT_EQ(server.Sync("b", SyncFor(b, version - 1)).action(), v1::SyncReply::TRAIN);
      }
      server.Train("b", TrainFor(b, batches[static_cast<size_t>(version)], version));
      server.SubmitUpdate("b", UpdateFor(b, version, version + 1, delta));
      EXPECT_EQ(server.rounds()->version(), version + 1);
    }
  }
  SplitServer server;
  std::string a, b;
};

std::vector<at::Tensor> Minus(const std::vector<at::Tensor>& x, const std::vector<at::Tensor>& y) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < x.size(); ++i) out.push_back(x[i] - y[i]);
  return out;
}

double Norm(const std::vector<at::Tensor>& tensors) {
  double sum = 0;
  for (const at::Tensor& t : tensors) sum += t.pow(2).sum().item<double>();
  return std::sqrt(sum);
}

class StaleStepTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(StaleStepTest, MovesTheServersLayersOneOverOnePlusSAsFarAsAFreshStep) {
  const int64_t s = GetParam();
  const std::vector<Batch> batches = Batches(4);
  const Batch& measured = batches.back();

  AgedServer stale(s, batches), fresh(s, batches);
  // The fresh twin's hospital a asks for work and trains the current version.
  const v1::SyncReply sync = fresh.server.Sync("a", SyncFor(fresh.a, -1));
  ASSERT_EQ(sync.action(), v1::SyncReply::TRAIN);
  ASSERT_EQ(sync.model_version(), s);

  const auto stale_before = stale.server.top_parameters();
  const auto fresh_before = fresh.server.top_parameters();
  for (size_t i = 0; i < stale_before.size(); ++i) {
    ASSERT_TRUE(at::equal(stale_before[i], fresh_before[i])) << "the twins' histories differ";
  }
  const v1::TrainReply stale_reply =
      stale.server.Train("a", TrainFor(stale.a, measured, /*version=*/0));
  const v1::TrainReply fresh_reply =
      fresh.server.Train("a", TrainFor(fresh.a, measured, /*version=*/s));
  // The same batch through the same layers: the same loss, and the stale hospital is told to stop.
  EXPECT_DOUBLE_EQ(stale_reply.loss(), fresh_reply.loss());
  EXPECT_TRUE(stale_reply.round_closing());

  const auto stale_step = Minus(stale.server.top_parameters(), stale_before);
  const auto fresh_step = Minus(fresh.server.top_parameters(), fresh_before);
  ASSERT_GT(Norm(fresh_step), 1e-4) << "the fresh step did not move the layers";
  const double scale = 1.0 / (1.0 + static_cast<double>(s));
  EXPECT_NEAR(Norm(stale_step) / Norm(fresh_step), scale, 1e-4);
  for (size_t i = 0; i < stale_step.size(); ++i) {
    EXPECT_TRUE(at::allclose(stale_step[i], fresh_step[i] * scale, 1e-3, 1e-7))
        << "parameter " << i << ": largest difference "
        << (stale_step[i] - fresh_step[i] * scale).abs().max().item<double>();
  }
  // Both servers count the step.
  EXPECT_EQ(stale.server.step(), fresh.server.step());
}

INSTANTIATE_TEST_SUITE_P(Staleness, StaleStepTest, ::testing::Values(1, 2),
                         [](const auto& info) { return "s" + std::to_string(info.param); });

TEST(StaleStepTest, AStepOlderThanMaxStalenessIsAbortedAndMovesNothing) {
  const std::vector<Batch> batches = Batches(4);
  AgedServer aged(3, batches);  // max staleness 2
  const auto before = aged.server.top_parameters();
  try {
    aged.server.Train("a", TrainFor(aged.a, batches.back(), 0));
    FAIL() << "a step 3 versions old was taken";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kStale) << error.what();
  }
  const auto after = aged.server.top_parameters();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(at::equal(before[i], after[i]));
}

}  // namespace
}  // namespace cleave::server
