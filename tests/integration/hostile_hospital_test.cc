// A hospital with a valid certificate and hostile numbers, next to an honest hospital training in
// splitfed rounds (SplitTrainer + RoundParticipant over each link: loopback gRPC with mutual TLS,
// and in process). Each attack is sent while the honest hospital trains; the test checks the
// attack's status, that the shared model stays finite, and that the honest hospital finishes with
// a held-out accuracy close to a run without the attacker. The last tests poison every round with
// scaled or sign-flipped deltas: the robust aggregators keep the accuracy within 2 points of a run
// without the attacker (in process only: they are about the aggregation rule, and take 80 rounds
// a run).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <tuple>

#include "cleave/client/round_participant.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"
#include "cleave/server/status_mapping.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using namespace std::chrono_literals;

constexpr int64_t kFeatures = 12;
constexpr int64_t kCutWidth = 16;

using test_support::LinkKind;
using test_support::TestServer;

ModelSpec MlpSpec() { return test_support::MlpSpec(kFeatures, {kCutWidth, 8}, 3); }

// Labels from a fixed linear rule on the features: learnable to well above 90%.
Dataset Synthetic(int64_t rows, uint64_t seed) {
  return test_support::LinearRuleData(rows, seed, kFeatures, 3);
}

const Dataset& TestSet() {
  static const Dataset test = Synthetic(3000, 99);
  return test;
}

server::SplitServerOptions RoundServer(int min_clients, int64_t rounds) {
  server::SplitServerOptions options;
  options.model = MlpSpec();
  options.max_batch = 64;
  options.rounds.schedule = server::Schedule::kSplitFed;
  options.rounds.rounds = rounds;
  options.rounds.round_samples = 256 * min_clients;
  options.rounds.min_clients = min_clients;
  options.compression.mutable_updates()->set_method("none");
  options.session_idle_timeout = 0ms;
  // A hospital that takes part and never sends its update holds a round up until the deadline.
  options.rounds.round_deadline = 2s;
  // With three hospitals a round waits for all three (the median needs them to out-vote one).
  options.rounds.quorum = min_clients;
  return options;
}

// Passes everything through, except that client-model deltas are multiplied by `factor`, and
// `on_sync` (if set) sees every Sync reply before the hospital does.
class HospitalLink final : public protocol::SplitLink {
 public:
  HospitalLink(const TestServer& server, const std::string& identity, double factor,
               std::function<void(const v1::SyncReply&)> on_sync)
      : link_(server.Link(identity)), factor_(factor), on_sync_(std::move(on_sync)) {}
  v1::JoinReply Join(const v1::JoinRequest& request) override { return link_->Join(request); }
  void OpenTrainStream() override { link_->OpenTrainStream(); }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    return link_->TrainStep(request);
  }
  void CloseTrainStream() override { link_->CloseTrainStream(); }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override {
    return link_->Evaluate(request);
  }
  void Leave(const v1::LeaveRequest& request) override { link_->Leave(request); }
  v1::SyncReply Sync(const v1::SyncRequest& request) override {
    v1::SyncReply reply = link_->Sync(request);
    if (on_sync_) on_sync_(reply);
    return reply;
  }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override {
    if (factor_ == 1.0) return link_->SubmitUpdate(request);
    protocol::TensorSpec spec;
    spec.max_batch = 1 << 20;
    const at::Tensor delta = protocol::DecodeTensor(request.delta(), spec).dense;
    v1::UpdateRequest poisoned = request;
    protocol::EncodeDense(delta * factor_, poisoned.mutable_delta());
    return link_->SubmitUpdate(poisoned);
  }

 private:
  std::unique_ptr<protocol::SplitLink> link_;
  double factor_;
  std::function<void(const v1::SyncReply&)> on_sync_;
};

struct Hospital {
  std::string name;
  double delta_factor = 1.0;  // 1: honest
  std::function<void(const v1::SyncReply&)> on_sync = {};
};

struct RunResult {
  double accuracy = 0;  // held-out, first hospital's final model through the server
  std::vector<client::ParticipationStats> stats;
  bool finite = true;  // server layers and client-side weights
};

// Trains the hospitals in splitfed rounds until DONE; `attack` runs on this thread meanwhile.
RunResult RunRounds(const TestServer& test_server, const std::vector<Hospital>& hospitals,
                    const std::function<void()>& attack = {}) {
  server::SplitServer& server = test_server.split_server();
  std::vector<std::unique_ptr<HospitalLink>> links;
  std::vector<std::unique_ptr<client::SplitTrainer>> trainers;
  std::vector<Dataset> shards;
  for (size_t i = 0; i < hospitals.size(); ++i) {
    links.push_back(std::make_unique<HospitalLink>(
        test_server, hospitals[i].name, hospitals[i].delta_factor, hospitals[i].on_sync));
    client::TrainerOptions options;
    options.model = MlpSpec();
    options.batch_size = 16;
    options.learning_rate = 1e-2;
    options.seed = i + 1;
    trainers.push_back(std::make_unique<client::SplitTrainer>(options, *links[i]));
    shards.push_back(Synthetic(1024, 10 + i));
  }
  RunResult result;
  result.stats.resize(hospitals.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < hospitals.size(); ++i) {
    threads.emplace_back([&, i] {
      client::RoundParticipantOptions options;
      options.sync_wait_ms = 200;
      options.initial_backoff = 10ms;
      client::RoundParticipant participant(*trainers[i], options);
      result.stats[i] = participant.Run(shards[i], shards[i].size(), nullptr);
    });
  }
  if (attack) attack();
  for (auto& thread : threads) thread.join();
  result.accuracy = trainers[0]->Evaluate(TestSet()).accuracy;
  for (const at::Tensor& p : server.top_parameters()) {
    result.finite = result.finite && p.isfinite().all().item<bool>();
  }
  for (const auto& trainer : trainers) {
    result.finite = result.finite && trainer->ClientWeights().isfinite().all().item<bool>();
  }
  return result;
}

constexpr int64_t kRounds = 8;

// One honest hospital alone: what the attacked runs are held against.
double BaselineAccuracy() {
  static const double accuracy = [] {
    const TestServer server(RoundServer(1, kRounds), LinkKind::kInProcess);
    const RunResult result = RunRounds(server, {{"st-mary"}});
    EXPECT_TRUE(result.finite);
    return result.accuracy;
  }();
  return accuracy;
}

// The attacker's own calls, straight to the server under its certificate's identity.
class Attacker {
 public:
  Attacker(server::SplitServer& server, std::string identity)
      : server_(server), identity_(std::move(identity)) {
    v1::JoinRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_model_fingerprint(server.fingerprint());
    session_ = server_.Join(identity_, request).session_id();
  }
  v1::SyncReply Sync() {
    v1::SyncRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session_);
    request.set_have_version(-1);
    request.set_wait_ms(5000);
    return server_.Sync(identity_, request);
  }
  grpc::StatusCode Train(const at::Tensor& activations, int64_t version) {
    v1::TrainRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session_);
    request.set_model_version(version);
    protocol::EncodeDense(activations, request.mutable_activations());
    protocol::EncodeDense(at::randint(0, 3, {activations.size(0)}, at::kLong),
                          request.mutable_labels());
    return CodeOf([&] { server_.Train(identity_, request); });
  }
  grpc::StatusCode Submit(int64_t version, int64_t round, int64_t samples,
                          const at::Tensor& delta) {
    v1::UpdateRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session_);
    request.set_base_version(version);
    request.set_round(round);
    request.set_samples(samples);
    protocol::EncodeDense(delta, request.mutable_delta());
    return CodeOf([&] { server_.SubmitUpdate(identity_, request); });
  }
  template <typename Fn>
  static grpc::StatusCode CodeOf(Fn&& fn) {
    try {
      fn();
    } catch (const std::exception& error) {
      return server::StatusFor(error).error_code();
    }
    return grpc::StatusCode::OK;
  }

 private:
  server::SplitServer& server_;
  std::string identity_;
  std::string session_;
};

struct AttackCase {
  const char* name;
  // Runs against `server` while the honest hospital trains; checks its own statuses. The honest
  // hospital does not start round 3 before the attack calls `release` (or returns).
  void (*attack)(server::SplitServer& server, const std::function<void()>& release);
};

class HostileHospitalTest : public ::testing::TestWithParam<std::tuple<AttackCase, LinkKind>> {};

TEST_P(HostileHospitalTest, IsRefusedAndTheHonestHospitalFinishesAsWell) {
  const double baseline = BaselineAccuracy();
  ASSERT_GT(baseline, 0.85) << "the task should be learnable";
  server::SplitServerOptions options = RoundServer(1, kRounds);
  options.session_idle_timeout = 1h;  // expiry is driven by the test's clock
  const TestServer test_server(options, std::get<LinkKind>(GetParam()));
  server::SplitServer& server = test_server.split_server();
  // The honest hospital trains while the attack runs, but waits before round 3 until the attack
  // releases it and before its last round until the attack is over: every attack meets a
  // hospital still training.
  std::promise<void> released, attack_over;
  std::shared_future<void> go = released.get_future().share();
  std::shared_future<void> over = attack_over.get_future().share();
  const Hospital honest{"st-mary", 1.0, [go, over](const v1::SyncReply& reply) {
                          if (reply.action() != v1::SyncReply::TRAIN) return;
                          if (reply.round() >= 3) go.wait();
                          if (reply.round() >= kRounds) over.wait();
                        }};
  std::once_flag once;
  const std::function<void()> release = [&] {
    std::call_once(once, [&] { released.set_value(); });
  };
  const RunResult result = RunRounds(test_server, {honest}, [&] {
    std::get<AttackCase>(GetParam()).attack(server, release);
    release();
    attack_over.set_value();
  });
  EXPECT_TRUE(result.finite);
  EXPECT_EQ(result.stats[0].final_round, kRounds) << "the honest hospital did not finish";
  EXPECT_GE(result.accuracy, baseline - 0.03) << "baseline " << baseline;
}

void WaitForRound(server::SplitServer& server, int64_t round) {
  ASSERT_TRUE(server.rounds()->WaitForRound(round - 1, 20s));
}

const AttackCase kAttacks[] = {
    {"HugeFiniteActivations",
     [](server::SplitServer& server, const std::function<void()>&) {
       WaitForRound(server, 2);
       Attacker mallory(server, "mallory");
       ASSERT_EQ(mallory.Sync().action(), v1::SyncReply::TRAIN);
       const int64_t version = server.rounds()->version();
       EXPECT_EQ(mallory.Train(at::full({8, kCutWidth}, 3e38), version),
                 grpc::StatusCode::INVALID_ARGUMENT);
       EXPECT_GE(server.counters().refused_steps, 1);
     }},
    {"HugeDeltas",
     [](server::SplitServer& server, const std::function<void()>&) {
       WaitForRound(server, 2);
       Attacker mallory(server, "mallory");
       const v1::SyncReply sync = mallory.Sync();
       ASSERT_EQ(sync.action(), v1::SyncReply::TRAIN);
       EXPECT_EQ(mallory.Train(at::randn({8, kCutWidth}), sync.model_version()),
                 grpc::StatusCode::OK);
       EXPECT_EQ(mallory.Submit(sync.model_version(), sync.round(), 1,
                                at::full({server.rounds()->num_parameters()}, 1e30)),
                 grpc::StatusCode::INVALID_ARGUMENT);
     }},
    {"InflatedSampleCountWithAnErasingDelta",
     [](server::SplitServer& server, const std::function<void()>&) {
       WaitForRound(server, 2);
       Attacker mallory(server, "mallory");
       const v1::SyncReply sync = mallory.Sync();
       ASSERT_EQ(sync.action(), v1::SyncReply::TRAIN);
       EXPECT_EQ(mallory.Train(at::randn({4, kCutWidth}), sync.model_version()),
                 grpc::StatusCode::OK);
       const at::Tensor weights = server.rounds()->Snapshot().weights;
       EXPECT_EQ(mallory.Submit(sync.model_version(), sync.round(), 1000000000000LL, -weights),
                 grpc::StatusCode::OK);  // accepted, weighted by the 4 samples counted
       EXPECT_EQ(server.rounds()->Snapshot().updates_capped, 1);
     }},
    {"StepsFromOutsideTheRound",
     [](server::SplitServer& server, const std::function<void()>&) {
       WaitForRound(server, 3);
       Attacker mallory(server, "mallory");  // joined, never synced
       const int64_t version = server.rounds()->version();
       EXPECT_EQ(mallory.Train(at::randn({8, kCutWidth}), version - 1), grpc::StatusCode::ABORTED);
       EXPECT_EQ(mallory.Train(at::randn({8, kCutWidth}), version), grpc::StatusCode::ABORTED);
       EXPECT_EQ(mallory.Submit(version - 1, 1, 64, at::zeros({server.rounds()->num_parameters()})),
                 grpc::StatusCode::ABORTED);
     }},
    {"SessionsLeftBehind",
     [](server::SplitServer& server, const std::function<void()>& release) {
       // 100 hospitals join twice and vanish: the second Join replaces the first session, and
       // the idle ones expire while the honest hospital trains on.
       WaitForRound(server, 2);
       for (int i = 0; i < 200; ++i) Attacker(server, "ghost-" + std::to_string(i % 100));
       const auto joined = std::chrono::steady_clock::now();
       EXPECT_EQ(server.counters().replaced_sessions, 100);
       EXPECT_EQ(server.active_sessions(), 101u);
       // Two rounds after its release the honest hospital has called since; the ghosts have not.
       release();
       WaitForRound(server, 5);
       EXPECT_EQ(server.ExpireIdleSessions(joined + 1h + 1ms), 100);
       EXPECT_EQ(server.active_sessions(), 1u);
       EXPECT_EQ(server.counters().active_clients, 1);
     }},
};

INSTANTIATE_TEST_SUITE_P(Attacks, HostileHospitalTest,
                         ::testing::Combine(::testing::ValuesIn(kAttacks),
                                            ::testing::Values(LinkKind::kGrpc,
                                                              LinkKind::kInProcess)),
                         [](const auto& info) {
                           return std::string(std::get<AttackCase>(info.param).name) + "Over" +
                                  test_support::LinkName(std::get<LinkKind>(info.param));
                         });

constexpr int64_t kPoisonRounds = 80;

// Held-out accuracy averaged over `runs` runs (thread interleavings differ from run to run) of
// two honest hospitals and a third that sends its delta times `factor` every round (1: honest).
double MeanAccuracy(server::Aggregation aggregation, double factor, int runs = 2) {
  double sum = 0;
  for (int run = 0; run < runs; ++run) {
    server::SplitServerOptions options = RoundServer(3, kPoisonRounds);
    options.rounds.aggregation.method = aggregation;
    const TestServer server(options, LinkKind::kInProcess);
    const RunResult result =
        RunRounds(server, {{"st-mary"}, {"riverside"}, {"general-east", factor}});
    EXPECT_TRUE(result.finite);
    sum += result.accuracy;
  }
  return sum / runs;
}

struct PoisonCase {
  server::Aggregation aggregation;
  double factor;
};

class PoisonedDeltasTest : public ::testing::TestWithParam<PoisonCase> {};

// Against the same rule with the third hospital honest: the cost of the attack, not of the rule.
TEST_P(PoisonedDeltasTest, TheRobustAggregatorKeepsTheAccuracyWithinTwoPoints) {
  const double clean = MeanAccuracy(GetParam().aggregation, 1.0);
  ASSERT_GT(clean, 0.9);
  const double poisoned = MeanAccuracy(GetParam().aggregation, GetParam().factor);
  std::printf("held-out accuracy (mean of 2 runs): without the attacker %.4f, with it %.4f\n",
              clean, poisoned);
  EXPECT_GE(poisoned, clean - 0.02) << "without the attacker " << clean;
}

INSTANTIATE_TEST_SUITE_P(Aggregators, PoisonedDeltasTest,
                         ::testing::Values(PoisonCase{server::Aggregation::kTrustMean, -4.0},
                                           PoisonCase{server::Aggregation::kTrustMean, 10.0},
                                           PoisonCase{server::Aggregation::kMedian, 10.0},
                                           PoisonCase{server::Aggregation::kTrimmedMean, 10.0}),
                         [](const auto& info) {
                           std::string name = server::AggregationName(info.param.aggregation);
                           name.erase(std::remove(name.begin(), name.end(), '-'), name.end());
                           return name + (info.param.factor < 0 ? "SignFlipped" : "Scaled");
                         });

// The attack the robust rules are for: with the plain mean it costs more than two points.
// The attack the robust rules are for: with the plain mean it costs far more than two points.
TEST(PoisonedDeltasMeanTest, ThePlainMeanIsHurtBySignFlippedDeltas) {
  const double clean = MeanAccuracy(server::Aggregation::kMean, 1.0, 1);
  const double poisoned = MeanAccuracy(server::Aggregation::kMean, -4.0, 1);
  std::printf("held-out accuracy, plain mean: without the attacker %.4f, with it %.4f\n", clean,
              poisoned);
  EXPECT_LT(poisoned, clean - 0.05) << "clean " << clean;
}

}  // namespace
}  // namespace cleave
