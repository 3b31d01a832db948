// SplitServer against a hospital with a valid certificate and hostile numbers: values beyond the
// bounds, steps whose loss is not finite, steps and updates from outside the round, inflated
// sample counts, sessions left behind, and peer text meant for the log. Each case checks the
// status, that the shared model is untouched (or stays finite), and that the round goes on.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>
#include <sstream>

#include "cleave/core/error.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"
#include "cleave/server/status_mapping.h"
#include "cleave/test_support/temp_dir.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using test::JoinFor;
using test::MlpOptions;
using test::SyncFor;
using test::UpdateFor;

constexpr int64_t kWidth = 128;  // cut width of MlpOptions()'s model

SplitServerOptions SplitFed(int min_clients) {
  SplitServerOptions options = MlpOptions();
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.min_clients = min_clients;
  options.rounds.round_samples = 1000;
  options.compression.mutable_updates()->set_method("none");
  return options;
}

v1::TrainRequest Batch(const std::string& session, const at::Tensor& activations,
                       int64_t model_version = 0) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_model_version(model_version);
  protocol::EncodeDense(activations, request.mutable_activations());
  protocol::EncodeDense(at::randint(0, 3, {activations.size(0)}, at::kLong),
                        request.mutable_labels());
  return request;
}

v1::TrainRequest Honest(const std::string& session, int64_t model_version = 0) {
  return Batch(session, at::randn({4, kWidth}), model_version);
}

// The server's layers, copied.
std::vector<at::Tensor> TopWeights(SplitServer& server) {
  std::vector<at::Tensor> copy;
  for (const at::Tensor& p : server.top_parameters()) copy.push_back(p.detach().clone());
  return copy;
}

bool Same(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!at::equal(a[i], b[i])) return false;
  }
  return true;
}

bool Finite(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) {
    if (!t.isfinite().all().item<bool>()) return false;
  }
  return true;
}

template <typename Fn>
grpc::StatusCode CodeOf(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& error) {
    return StatusFor(error).error_code();
  }
  return grpc::StatusCode::OK;
}

TEST(HostileInputTest, TheDerivedBoundsSitFarAboveHonestValuesAndFarBelowOverflow) {
  SplitServer server(MlpOptions());
  EXPECT_GE(server.activation_bound(), 100);
  EXPECT_LT(server.activation_bound(), 1e6);
  EXPECT_GE(server.update_bound(), 1);
  EXPECT_LT(server.update_bound(), 1e4);
  SplitServerOptions explicit_bounds = MlpOptions();
  explicit_bounds.max_activation_abs = 7;
  explicit_bounds.rounds.max_update_abs = 3;
  SplitServer configured(explicit_bounds);
  EXPECT_EQ(configured.activation_bound(), 7);
  EXPECT_EQ(configured.update_bound(), 3);
}

TEST(HostileInputTest, HugeFiniteActivationsAreRefusedAndTheModelIsUntouched) {
  SplitServer server(MlpOptions());
  const std::string honest = server.Join("st-mary", JoinFor(server)).session_id();
  const std::string hostile = server.Join("mallory", JoinFor(server)).session_id();
  server.Train("st-mary", Honest(honest));
  const auto before = TopWeights(server);
  EXPECT_EQ(CodeOf([&] {
              server.Train("mallory", Batch(hostile, at::full({4, kWidth}, 3e38)));
            }),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Same(before, TopWeights(server)));
  EXPECT_EQ(server.step(), 1);
  EXPECT_EQ(server.counters().refused_steps, 1);
  // The honest hospital goes on, and its steps move the model.
  const v1::TrainReply reply = server.Train("st-mary", Honest(honest));
  EXPECT_TRUE(std::isfinite(reply.loss()));
  EXPECT_FALSE(Same(before, TopWeights(server)));
  EXPECT_TRUE(Finite(TopWeights(server)));
}

TEST(HostileInputTest, AStepWhoseLossOrGradientIsNotFiniteIsRefusedBeforeTheOptimizerSteps) {
  SplitServerOptions options = MlpOptions();
  options.max_activation_abs = 3.4e38;  // no magnitude bound: only the step's own checks are left
  SplitServer server(options);
  const std::string session = server.Join("mallory", JoinFor(server)).session_id();
  server.Train("mallory", Honest(session));  // Adam has state now
  const auto before = TopWeights(server);
  // 3e38 overflows the first layer: the loss is not finite.
  try {
    server.Train("mallory", Batch(session, at::full({4, kWidth}, 3e38)));
    FAIL() << "a step with a non-finite loss was taken";
  } catch (const NotFinite& error) {
    EXPECT_NE(std::string(error.what()).find("loss"), std::string::npos) << error.what();
  }
  // 3e37 gives a finite loss but gradients whose squares overflow Adam's second moment.
  try {
    server.Train("mallory", Batch(session, at::full({4, kWidth}, 3e37)));
    FAIL() << "a step with an overflowing gradient was taken";
  } catch (const OutOfBounds& error) {
    EXPECT_NE(std::string(error.what()).find("gradient"), std::string::npos) << error.what();
  }
  EXPECT_TRUE(Same(before, TopWeights(server)));
  EXPECT_EQ(server.step(), 1);
  EXPECT_EQ(server.counters().refused_steps, 2);
  // The optimizer's state was not poisoned either: the next honest steps stay finite.
  for (int i = 0; i < 3; ++i) server.Train("mallory", Honest(session));
  EXPECT_TRUE(Finite(TopWeights(server)));
}

// The last line of defence: a step whose loss and gradients pass every check but whose result is
// not finite (here a learning rate large enough to overflow the layers) is not committed.
TEST(HostileInputTest, AStepThatWouldMakeTheLayersNonFiniteIsUndone) {
  SplitServerOptions options = MlpOptions();
  options.optimizer = "sgd";
  options.learning_rate = 1e38;
  SplitServer server(options);
  const std::string session = server.Join("mallory", JoinFor(server)).session_id();
  const auto before = TopWeights(server);
  try {
    server.Train("mallory", Batch(session, at::full({4, kWidth}, 50.0)));
    FAIL() << "a step that overflows the layers was taken";
  } catch (const NotFinite& error) {
    EXPECT_NE(std::string(error.what()).find("non-finite"), std::string::npos) << error.what();
  }
  EXPECT_TRUE(Same(before, TopWeights(server)));
  EXPECT_EQ(server.step(), 0);
  EXPECT_EQ(server.counters().refused_steps, 1);
}

TEST(HostileInputTest, ARefusedStepNeverReachesTheCheckpoint) {
  const test_support::TempDir dir;
  SplitServerOptions options = MlpOptions();
  options.max_activation_abs = 3.4e38;
  options.checkpoint_path = dir.File("server.ckpt");
  options.checkpoint_every = 1;
  std::vector<at::Tensor> saved;
  {
    SplitServer server(options);
    const std::string session = server.Join("mallory", JoinFor(server)).session_id();
    server.Train("mallory", Honest(session));
    saved = TopWeights(server);
    EXPECT_THROW(server.Train("mallory", Batch(session, at::full({4, kWidth}, 3e38))), NotFinite);
    server.SaveCheckpoint();
  }
  options.resume = true;
  SplitServer resumed(options);
  EXPECT_TRUE(Same(saved, TopWeights(resumed)));
}

// Two hospitals in a splitfed round: a trains honestly, m is the attacker.
struct Round {
  explicit Round(SplitServerOptions options) : server(options) {
    a = server.Join("a", JoinFor(server)).session_id();
    m = server.Join("m", JoinFor(server)).session_id();
  }
  SplitServer server;
  std::string a, m;
};

TEST(HostileInputTest, StepsAndUpdatesFromOutsideTheRoundAreRefusedWhateverTheirStaleness) {
  Round round(SplitFed(1));
  SplitServer& server = round.server;
  ASSERT_EQ(server.Sync("a", SyncFor(round.a, -1)).action(), v1::SyncReply::TRAIN);
  server.Train("a", Honest(round.a));
  const int64_t parameters = server.rounds()->num_parameters();
  server.SubmitUpdate("a", UpdateFor(round.a, 0, 1, 4, at::zeros({parameters})));
  ASSERT_EQ(server.rounds()->version(), 1);
  const int64_t steps = server.step();
  const auto before = TopWeights(server);
  // m never synced: a step one version old (within --max-staleness) or current is refused.
  for (int64_t version : {0, 1}) {
    EXPECT_EQ(CodeOf([&] { server.Train("m", Honest(round.m, version)); }),
              grpc::StatusCode::ABORTED)
        << "version " << version;
    EXPECT_EQ(CodeOf([&] {
                server.SubmitUpdate(
                    "m", UpdateFor(round.m, version, version + 1, 4, at::zeros({parameters})));
              }),
              grpc::StatusCode::ABORTED)
        << "version " << version;
  }
  // Nor may a, once its round's update is in, train on in the old version.
  EXPECT_EQ(CodeOf([&] { server.Train("a", Honest(round.a, 0)); }), grpc::StatusCode::ABORTED);
  EXPECT_EQ(server.step(), steps);
  EXPECT_TRUE(Same(before, TopWeights(server)));
  EXPECT_EQ(server.counters().refused_steps, 3);
  EXPECT_EQ(server.counters().refused_updates, 2);
}

TEST(HostileInputTest, TheSamplesAnUpdateClaimsAreCappedByWhatTheServerCounted) {
  Round round(SplitFed(2));
  SplitServer& server = round.server;
  ASSERT_EQ(server.Sync("a", SyncFor(round.a, -1)).action(), v1::SyncReply::TRAIN);
  ASSERT_EQ(server.Sync("m", SyncFor(round.m, -1)).action(), v1::SyncReply::TRAIN);
  const at::Tensor weights = server.rounds()->Snapshot().weights;
  for (int i = 0; i < 3; ++i) server.Train("a", Honest(round.a));  // 12 samples
  server.Train("m", Honest(round.m));                              // 4 samples
  // m claims 10^12 samples for a delta that erases the model.
  server.SubmitUpdate("m", UpdateFor(round.m, 0, 1, 1000000000000LL, -weights));
  const at::Tensor honest_delta = at::randn_like(weights) * 0.01;
  server.SubmitUpdate("a", UpdateFor(round.a, 0, 1, 12, honest_delta));
  const RoundState state = server.rounds()->Snapshot();
  ASSERT_EQ(state.version, 1);
  EXPECT_EQ(state.updates_capped, 1);
  const at::Tensor expected = weights + (12 * honest_delta + 4 * -weights) / 16.0;
  EXPECT_TRUE(at::allclose(state.weights, expected, 1e-5, 1e-6));
  // Not replaced by the attacker's model: 3/4 of the norm is left, not 1e-7 of it.
  EXPECT_GT(state.weights.norm().item<double>(), 0.7 * weights.norm().item<double>());
}

TEST(HostileInputTest, AnUpdateWithoutCountedStepsIsRefused) {
  Round round(SplitFed(2));
  SplitServer& server = round.server;
  server.Sync("a", SyncFor(round.a, -1));
  server.Sync("m", SyncFor(round.m, -1));
  const int64_t parameters = server.rounds()->num_parameters();
  EXPECT_EQ(CodeOf([&] {
              server.SubmitUpdate("m", UpdateFor(round.m, 0, 1, 64, at::zeros({parameters})));
            }),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(server.rounds()->Snapshot().updates_accepted, 0);
}

TEST(HostileInputTest, HugeOrNonFiniteDeltasAreRefusedAndDoNotHoldTheRoundUp) {
  Round round(SplitFed(2));
  SplitServer& server = round.server;
  server.Sync("a", SyncFor(round.a, -1));
  server.Sync("m", SyncFor(round.m, -1));
  server.Train("a", Honest(round.a));
  server.Train("m", Honest(round.m));
  const RoundState before = server.rounds()->Snapshot();
  const int64_t parameters = before.weights.numel();
  EXPECT_EQ(CodeOf([&] {
              server.SubmitUpdate("m", UpdateFor(round.m, 0, 1, 1, at::full({parameters}, 1e30)));
            }),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(server.rounds()->Snapshot().updates_accepted, 0);
  // m is out of the round: a's update alone closes it.
  const at::Tensor delta = at::full({parameters}, 0.01);
  server.SubmitUpdate("a", UpdateFor(round.a, 0, 1, 4, delta));
  const RoundState after = server.rounds()->Snapshot();
  EXPECT_EQ(after.version, 1);
  EXPECT_TRUE(at::allclose(after.weights, before.weights + delta));
  EXPECT_EQ(server.counters().refused_updates, 1);
}

TEST(HostileInputTest, LeaveChecksTheProtocolVersionToo) {
  SplitServer server(MlpOptions());
  const std::string session = server.Join("a", JoinFor(server)).session_id();
  EXPECT_EQ(CodeOf([&] { server.Leave("a", session, protocol::kProtocolVersion + 1); }),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(server.active_sessions(), 1u);
  server.Leave("a", session);
  EXPECT_EQ(server.active_sessions(), 0u);
}

TEST(HostileInputTest, IdleSessionsExpireAndNoLongerCountAsConnected) {
  SplitServerOptions options = SplitFed(1);
  options.session_idle_timeout = std::chrono::hours(1);  // the test moves the clock, not time
  SplitServer server(options);
  for (int i = 0; i < 50; ++i) server.Join("ghost-" + std::to_string(i), JoinFor(server));
  EXPECT_EQ(server.active_sessions(), 50u);
  const auto now = std::chrono::steady_clock::now();
  EXPECT_EQ(server.ExpireIdleSessions(now + std::chrono::minutes(59)), 0);
  EXPECT_EQ(server.ExpireIdleSessions(now + std::chrono::minutes(61)), 50);
  EXPECT_EQ(server.active_sessions(), 0u);
  EXPECT_EQ(server.counters().expired_sessions, 50);
  EXPECT_EQ(server.counters().active_clients, 0);
}

TEST(HostileInputTest, TheServerReleasesIdleSessionsByItself) {
  SplitServerOptions options = MlpOptions();
  options.session_idle_timeout = std::chrono::milliseconds(50);
  SplitServer server(options);
  server.Join("ghost", JoinFor(server));
  // Waits for the event (the reaper thread's release), not for a fixed time.
  EXPECT_TRUE(server.WaitForActiveSessions(0, std::chrono::seconds(20)));
  EXPECT_EQ(server.counters().expired_sessions, 1);
}

TEST(HostileInputTest, ACallKeepsASessionAlive) {
  SplitServerOptions options = MlpOptions();
  options.session_idle_timeout = std::chrono::seconds(60);
  SplitServer server(options);
  const std::string session = server.Join("a", JoinFor(server)).session_id();
  const auto joined = std::chrono::steady_clock::now();
  server.Train("a", Honest(session));
  EXPECT_EQ(server.ExpireIdleSessions(joined + std::chrono::seconds(59)), 0);
  EXPECT_EQ(server.ExpireIdleSessions(std::chrono::steady_clock::now() + std::chrono::seconds(61)),
            1);
  EXPECT_EQ(CodeOf([&] { server.Train("a", Honest(session)); }), grpc::StatusCode::NOT_FOUND);
}

TEST(HostileInputTest, ANewJoinReplacesTheIdentitysOldestSession) {
  SplitServer server(MlpOptions());
  const std::string first = server.Join("m", JoinFor(server)).session_id();
  for (int i = 0; i < 499; ++i) server.Join("m", JoinFor(server));
  EXPECT_EQ(server.active_sessions(), 1u);
  EXPECT_EQ(server.counters().replaced_sessions, 499);
  EXPECT_EQ(CodeOf([&] { server.Train("m", Honest(first)); }), grpc::StatusCode::NOT_FOUND);

  SplitServerOptions three = MlpOptions();
  three.max_sessions_per_identity = 3;
  SplitServer roomy(three);
  std::vector<std::string> sessions;
  for (int i = 0; i < 5; ++i) sessions.push_back(roomy.Join("m", JoinFor(roomy)).session_id());
  EXPECT_EQ(roomy.active_sessions(), 3u);
  EXPECT_EQ(CodeOf([&] { roomy.Train("m", Honest(sessions[1])); }), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(CodeOf([&] { roomy.Train("m", Honest(sessions[2])); }), grpc::StatusCode::OK);
}

TEST(HostileInputTest, ARestartedHospitalRejoinsTheRunningRound) {
  SplitServerOptions options = SplitFed(2);
  options.rounds.round_samples = 8;
  Round round(options);
  SplitServer& server = round.server;
  server.Sync("a", SyncFor(round.a, -1));
  server.Sync("m", SyncFor(round.m, -1));
  server.Train("a", Honest(round.a));
  EXPECT_TRUE(server.Train("m", Honest(round.m)).round_closing());
  // m dies without a word; a sends its update. The round waits for m...
  const int64_t parameters = server.rounds()->num_parameters();
  server.SubmitUpdate("a", UpdateFor(round.a, 0, 1, 4, at::zeros({parameters})));
  EXPECT_EQ(server.rounds()->round(), 1);
  // ...until m, restarted, joins again: its new session replaces the old, the round closes
  // without it, and m trains in the next one.
  const std::string again = server.Join("m", JoinFor(server)).session_id();
  EXPECT_EQ(server.rounds()->round(), 2);
  const v1::SyncReply sync = server.Sync("m", SyncFor(again, -1));
  EXPECT_EQ(sync.action(), v1::SyncReply::TRAIN);
  EXPECT_EQ(sync.round(), 2);
}

TEST(HostileInputTest, ARestartedHospitalAloneInAClosingRoundTrainsItAgain) {
  SplitServerOptions options = SplitFed(1);
  options.rounds.round_samples = 4;
  SplitServer server(options);
  const std::string m = server.Join("m", JoinFor(server)).session_id();
  server.Sync("m", SyncFor(m, -1));
  EXPECT_TRUE(server.Train("m", Honest(m)).round_closing());
  const std::string again = server.Join("m", JoinFor(server)).session_id();
  const v1::SyncReply sync = server.Sync("m", SyncFor(again, -1));
  EXPECT_EQ(sync.action(), v1::SyncReply::TRAIN);  // not WAIT forever
  EXPECT_EQ(sync.round(), 1);
}

// Records what the server reports, as the metrics exporter would see it.
struct RecordingObserver final : ServerObserver {
  void OnStep(int64_t, double) override {}
  void OnBytes(int64_t, int64_t) override {}
  void OnSessions(int64_t, int64_t) override {}
  void OnUpdate(int64_t) override {}
  void OnRefused(const std::string& what, const std::string& reason) override {
    std::lock_guard<std::mutex> lock(mutex);
    refused.push_back(what + ":" + reason);
  }
  void OnSessionsExpired(int64_t count) override { expired += count; }
  void OnRound(const RoundSummary&) override {}
  std::mutex mutex;
  std::vector<std::string> refused;
  std::atomic<int64_t> expired{0};
};

TEST(HostileInputTest, EveryRefusalReachesTheMetricsWithItsReason) {
  SplitServerOptions options = SplitFed(2);
  options.max_activation_abs = 100;
  Round round(options);
  SplitServer& server = round.server;
  RecordingObserver observer;
  server.SetObserver(&observer);
  const int64_t parameters = server.rounds()->num_parameters();
  server.Sync("a", SyncFor(round.a, -1));
  EXPECT_THROW(server.Train("m", Honest(round.m)), Refusal);  // never synced
  EXPECT_THROW(server.Train("a", Batch(round.a, at::full({4, kWidth}, 1e6))), OutOfBounds);
  server.Sync("a", SyncFor(round.a, -1));  // excluded by the refusal above: take part again
  server.Train("a", Honest(round.a));
  EXPECT_THROW(server.SubmitUpdate("a", UpdateFor(round.a, 0, 1, 4, at::full({parameters}, NAN))),
               NotFinite);
  server.Join("ghost", JoinFor(server));
  server.ExpireIdleSessions(std::chrono::steady_clock::now() + std::chrono::hours(1));
  server.SetObserver(nullptr);
  EXPECT_EQ(observer.refused, (std::vector<std::string>{"step:not_participant",
                                                        "step:out_of_bounds", "update:nonfinite"}));
  EXPECT_EQ(observer.expired.load(), 3);
}

TEST(HostileInputTest, PeerTextReachesTheLogEscapedAndCapped) {
  std::ostringstream captured;
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(captured));
  const auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  SplitServer server(MlpOptions());
  v1::JoinRequest request = JoinFor(server);
  request.set_model_fingerprint("forged\nfingerprint");
  request.set_model_description("x\n[info] client 'st-mary' left\x1b[31m" +
                                std::string(8 << 20, 'A'));
  std::string status;
  try {
    server.Join("mallory\nroot", request);
  } catch (const Refusal& error) {
    status = error.what();
  }
  logger->flush();
  spdlog::set_default_logger(previous);
  const std::string log = captured.str();
  EXPECT_EQ(log.find("\n[info] client 'st-mary' left"), std::string::npos) << log;
  EXPECT_EQ(log.find('\x1b'), std::string::npos);
  EXPECT_EQ(log.find("mallory\nroot"), std::string::npos);
  EXPECT_NE(log.find("mallory\\x0aroot"), std::string::npos) << log;
  EXPECT_LT(log.size(), 4096u);
  EXPECT_FALSE(status.empty());
  EXPECT_LT(status.size(), 1024u);
  EXPECT_EQ(status.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace cleave::server
