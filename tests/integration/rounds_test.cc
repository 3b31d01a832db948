// Several hospitals on one server: splitfed and sequential rounds checked against a reference
// average computed here from the updates the hospitals actually sent (over each link: loopback
// gRPC with mutual TLS, and in process), and, over gRPC, a hospital killed mid-round (its stream
// cancelled) that rejoins at the current version and a server restarted on its port; updates are
// counted so that none is applied twice or lost.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>

#include "cleave/client/grpc_link.h"
#include "cleave/client/round_participant.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using namespace std::chrono_literals;

using test_support::LinkKind;
using test_support::TestServer;

ModelSpec MlpSpec() { return test_support::MlpSpec(12, {16, 8}, 3); }

// Labels from a fixed linear rule on the features, so the task is learnable.
Dataset Synthetic(int64_t rows, uint64_t seed) { return test_support::LinearRuleData(rows, seed); }

// What a hospital sent and heard, for the reference computation.
struct RecordedUpdate {
  std::string hospital;
  int64_t base_version = 0;
  int64_t samples = 0;
  at::Tensor delta;
  int64_t staleness = -1;
};

struct Recorder {
  std::mutex mutex;
  std::vector<RecordedUpdate> updates;
  std::map<std::string, std::vector<int64_t>> versions_received;  // per hospital, from Sync
};

// A SplitLink that forwards to the test's link and records updates and the versions Sync handed
// out.
class RecordingLink final : public protocol::SplitLink {
 public:
  RecordingLink(const TestServer& server, std::string name, Recorder& recorder, int64_t parameters)
      : owned_(server.Link(name)),
        link_(*owned_),
        name_(std::move(name)),
        recorder_(recorder),
        parameters_(parameters) {}
  v1::JoinReply Join(const v1::JoinRequest& request) override { return link_.Join(request); }
  void OpenTrainStream() override { link_.OpenTrainStream(); }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    return link_.TrainStep(request);
  }
  void CloseTrainStream() override { link_.CloseTrainStream(); }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override {
    return link_.Evaluate(request);
  }
  void Leave(const v1::LeaveRequest& request) override { link_.Leave(request); }
  v1::SyncReply Sync(const v1::SyncRequest& request) override {
    v1::SyncReply reply = link_.Sync(request);
    if (reply.weights().payload_case() != v1::Tensor::PAYLOAD_NOT_SET) {
      std::lock_guard<std::mutex> lock(recorder_.mutex);
      recorder_.versions_received[name_].push_back(reply.model_version());
    }
    return reply;
  }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override {
    v1::UpdateReply reply = link_.SubmitUpdate(request);
    protocol::TensorSpec spec;
    spec.max_batch = parameters_;
    spec.allow_sparse = true;
    RecordedUpdate update{name_, request.base_version(), request.samples(),
                          protocol::DecodeTensor(request.delta(), spec).dense, reply.staleness()};
    if (!reply.duplicate()) {
      std::lock_guard<std::mutex> lock(recorder_.mutex);
      recorder_.updates.push_back(std::move(update));
    }
    return reply;
  }
  client::GrpcLink& grpc() { return dynamic_cast<client::GrpcLink&>(link_); }

 private:
  std::unique_ptr<protocol::SplitLink> owned_;
  protocol::SplitLink& link_;
  std::string name_;
  Recorder& recorder_;
  int64_t parameters_;
};

class RoundsTest : public ::testing::Test {
 protected:
  // The link the hospitals use; over gRPC unless a parameterised test says otherwise.
  virtual LinkKind Link() const { return LinkKind::kGrpc; }

  void Start(server::SplitServerOptions options, int port = 0) {
    options.model = MlpSpec();
    options.max_batch = 64;
    server_ = std::make_unique<TestServer>(options, Link(), port);
    split_server_ = &server_->split_server();
  }

  static client::TrainerOptions Trainer(uint64_t seed) {
    client::TrainerOptions options;
    options.model = MlpSpec();
    options.batch_size = 16;
    options.learning_rate = 1e-2;
    options.seed = seed;
    return options;
  }

  int64_t Parameters() const { return split_server_->rounds()->num_parameters(); }

  // Runs one hospital per name in its own thread until the server says DONE.
  void RunHospitals(const std::vector<std::string>& names, const std::vector<Dataset>& shards) {
    std::vector<std::unique_ptr<RecordingLink>> links;
    std::vector<std::unique_ptr<client::SplitTrainer>> trainers;
    for (size_t i = 0; i < names.size(); ++i) {
      links.push_back(std::make_unique<RecordingLink>(*server_, names[i], recorder_, Parameters()));
      trainers.push_back(std::make_unique<client::SplitTrainer>(Trainer(i + 1), *links[i]));
    }
    std::vector<std::thread> threads;
    stats_.assign(names.size(), {});
    for (size_t i = 0; i < names.size(); ++i) {
      threads.emplace_back([&, i] {
        client::RoundParticipantOptions options;
        options.sync_wait_ms = 2000;
        client::RoundParticipant participant(*trainers[i], options);
        stats_[i] = participant.Run(shards[i], shards[i].size(), nullptr);
      });
    }
    for (auto& thread : threads) thread.join();
    for (auto& trainer : trainers) final_weights_.push_back(trainer->ClientWeights());
  }

  // W(v+1) = W(v) + sum over updates from v of samples * delta / sum of samples.
  at::Tensor ReferenceWeights(const at::Tensor& initial, int64_t final_version) const {
    at::Tensor weights = initial.clone();
    for (int64_t v = 0; v < final_version; ++v) {
      at::Tensor sum = at::zeros_like(weights);
      int64_t samples = 0;
      for (const RecordedUpdate& update : recorder_.updates) {
        if (update.base_version != v) continue;
        EXPECT_EQ(update.staleness, 0);
        sum += update.delta * static_cast<double>(update.samples);
        samples += update.samples;
      }
      EXPECT_GT(samples, 0) << "no update made version " << v + 1;
      weights += sum / static_cast<double>(samples);
    }
    return weights;
  }

  std::unique_ptr<TestServer> server_;
  server::SplitServer* split_server_ = nullptr;
  Recorder recorder_;
  std::vector<client::ParticipationStats> stats_;
  std::vector<at::Tensor> final_weights_;
};

server::SplitServerOptions RoundServer(server::Schedule schedule, int64_t rounds) {
  server::SplitServerOptions options;
  options.rounds.schedule = schedule;
  options.rounds.rounds = rounds;
  options.rounds.round_samples = 192;
  options.rounds.min_clients = 3;
  options.compression.mutable_updates()->set_method("gaussiank+");
  options.compression.mutable_updates()->set_density(0.3);
  return options;
}

// The rounds themselves, over each link.
class ScheduledRoundsTest : public RoundsTest, public ::testing::WithParamInterface<LinkKind> {
 protected:
  LinkKind Link() const override { return GetParam(); }
};

TEST_P(ScheduledRoundsTest, ThreeHospitalsSplitFedAverageMatchesTheReference) {
  Start(RoundServer(server::Schedule::kSplitFed, 4));
  const at::Tensor initial = split_server_->rounds()->Snapshot().weights;
  const std::vector<Dataset> shards = PartitionIid(Synthetic(1500, 7), 3, 1);
  RunHospitals({"st-mary", "riverside", "general-east"}, shards);

  const server::RoundState state = split_server_->rounds()->Snapshot();
  EXPECT_TRUE(state.finished());
  EXPECT_EQ(state.round, 5);
  EXPECT_EQ(state.version, 4);
  // Every accepted update was applied exactly once, and each one the hospitals sent was counted.
  EXPECT_EQ(state.updates_accepted, state.updates_applied);
  EXPECT_EQ(state.updates_accepted, static_cast<int64_t>(recorder_.updates.size()));
  int64_t sent = 0;
  for (const auto& stats : stats_) sent += stats.updates_sent;
  EXPECT_EQ(sent, state.updates_accepted);
  // Each hospital reports the round it ended on as the server numbers it (4 of 4, not 5).
  for (const auto& stats : stats_) EXPECT_EQ(stats.final_round, 4);
  const at::Tensor reference = ReferenceWeights(initial, state.version);
  EXPECT_TRUE(at::allclose(state.weights, reference, 1e-4, 1e-5));
  for (const at::Tensor& weights : final_weights_) {
    EXPECT_TRUE(at::allclose(weights, state.weights)) << "a hospital ended on other weights";
  }
  // The updates travelled sparse: gaussiank+ at density 0.3 sends k = round(0.3 P) values.
  const auto k = static_cast<int64_t>(std::llround(0.3 * static_cast<double>(Parameters())));
  for (const RecordedUpdate& update : recorder_.updates) {
    EXPECT_LE(update.delta.ne(0).sum().item<int64_t>(), k);
  }
}

TEST_P(ScheduledRoundsTest, ThreeHospitalsSequentialPassTheWeightsOn) {
  Start(RoundServer(server::Schedule::kSequential, 6));
  const at::Tensor initial = split_server_->rounds()->Snapshot().weights;
  const std::vector<Dataset> shards = PartitionIid(Synthetic(1500, 8), 3, 2);
  RunHospitals({"st-mary", "riverside", "general-east"}, shards);

  const server::RoundState state = split_server_->rounds()->Snapshot();
  EXPECT_TRUE(state.finished());
  EXPECT_EQ(state.version, 6);
  EXPECT_EQ(state.updates_accepted, 6);
  EXPECT_EQ(state.updates_applied, 6);
  for (const auto& stats : stats_) EXPECT_EQ(stats.rounds_trained, 2);  // each took two turns
  // Each version came from exactly one hospital's delta, applied whole.
  for (int64_t v = 0; v < 6; ++v) {
    int count = 0;
    for (const RecordedUpdate& update : recorder_.updates) count += update.base_version == v;
    EXPECT_EQ(count, 1) << "version " << v;
  }
  EXPECT_TRUE(at::allclose(state.weights, ReferenceWeights(initial, 6), 1e-4, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Links, ScheduledRoundsTest,
                         ::testing::Values(LinkKind::kGrpc, LinkKind::kInProcess),
                         [](const auto& info) { return test_support::LinkName(info.param); });

// Over gRPC: a killed hospital is a cancelled stream, a restarted server a closed port.
TEST_F(RoundsTest, AKilledHospitalDoesNotStallTheRoundAndRejoinsAtTheCurrentVersion) {
  server::SplitServerOptions options = RoundServer(server::Schedule::kSplitFed, 20);
  options.rounds.round_samples = 800;  // long enough rounds for the restarted hospital to join
  options.rounds.min_clients = 2;
  options.rounds.quorum = 1;
  options.rounds.round_deadline = 3000ms;
  Start(options);
  const std::vector<Dataset> shards = PartitionIid(Synthetic(1000, 9), 2, 3);

  std::thread survivor([&] {
    RecordingLink link(*server_, "st-mary", recorder_, Parameters());
    client::SplitTrainer trainer(Trainer(1), link);
    client::RoundParticipantOptions participant_options;
    participant_options.sync_wait_ms = 1000;
    client::RoundParticipant participant(trainer, participant_options);
    stats_.push_back(participant.Run(shards[0], shards[0].size(), nullptr));
  });
  // The doomed hospital joins (the first round needs two), takes part in round 1 and dies mid-round
  // (its connection drops).
  {
    RecordingLink link(*server_, "riverside", recorder_, Parameters());
    client::SplitTrainer trainer(Trainer(2), link);
    trainer.Join(shards[1].size());
    const v1::SyncReply sync = trainer.Sync(-1, 1000);
    EXPECT_EQ(sync.action(), v1::SyncReply::TRAIN);
    link.OpenTrainStream();
    link.grpc().AbortTrainStream();  // killed: the stream is cancelled, no Leave
  }
  // Restarted after the survivor has moved the model on.
  ASSERT_TRUE(split_server_->rounds()->WaitForRound(2, 30s));
  const int64_t version_at_restart = split_server_->rounds()->version();
  ASSERT_GE(version_at_restart, 2);
  RecordingLink link(*server_, "riverside", recorder_, Parameters());
  client::SplitTrainer trainer(Trainer(2), link);
  client::RoundParticipant participant(trainer, {});
  const client::ParticipationStats rejoined = participant.Run(shards[1], shards[1].size(), nullptr);
  survivor.join();

  const auto& versions = recorder_.versions_received["riverside"];
  ASSERT_GE(versions.size(), 2u);
  EXPECT_EQ(versions[0], 0);                   // before it died
  EXPECT_GE(versions[1], version_at_restart);  // after the restart: the current version
  EXPECT_TRUE(split_server_->rounds()->finished());
  EXPECT_GE(rejoined.rounds_trained, 1);
  const server::RoundState state = split_server_->rounds()->Snapshot();
  EXPECT_EQ(state.updates_accepted, state.updates_applied);
  EXPECT_TRUE(at::allclose(trainer.ClientWeights(), state.weights));
}

TEST_F(RoundsTest, HospitalsReconnectToARestartedServerThatResumesItsRound) {
  const test_support::TempDir dir;
  const std::string checkpoint = dir.File("server.ckpt");
  server::SplitServerOptions options = RoundServer(server::Schedule::kSplitFed, 12);
  options.rounds.min_clients = 2;
  options.rounds.round_samples = 800;
  options.checkpoint_path = checkpoint;
  Start(options);
  const int port = server_->port();
  const std::vector<Dataset> shards = PartitionIid(Synthetic(1000, 10), 2, 4);
  std::vector<std::unique_ptr<protocol::SplitLink>> links;
  std::vector<std::unique_ptr<client::SplitTrainer>> trainers;
  std::vector<std::thread> threads;
  stats_.assign(2, {});
  for (int i = 0; i < 2; ++i) {
    links.push_back(server_->Link("hospital-" + std::to_string(i)));
    trainers.push_back(std::make_unique<client::SplitTrainer>(Trainer(i + 1), *links[i]));
  }
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      client::RoundParticipantOptions participant_options;
      participant_options.sync_wait_ms = 500;
      participant_options.initial_backoff = 50ms;
      participant_options.max_backoff = 400ms;
      client::RoundParticipant participant(*trainers[i], participant_options);
      stats_[i] = participant.Run(shards[i], shards[i].size(), nullptr);
    });
  }
  ASSERT_TRUE(split_server_->rounds()->WaitForRound(3, 30s));
  // The server dies (no clean shutdown of its state: only what it checkpointed survives) ...
  server_.reset();
  // ... and comes back on the same port from its checkpoint.
  options.resume = true;
  try {
    Start(options, port);
  } catch (const std::exception& error) {
    ADD_FAILURE() << "the server did not resume: " << error.what();
    std::_Exit(1);  // the hospital threads cannot be stopped from here
  }
  const int64_t resumed_round = split_server_->rounds()->round();
  EXPECT_GE(resumed_round, 4);
  for (auto& thread : threads) thread.join();

  const server::RoundState state = split_server_->rounds()->Snapshot();
  EXPECT_TRUE(state.finished());
  EXPECT_EQ(state.round, 13);
  EXPECT_EQ(state.updates_accepted, state.updates_applied);
  EXPECT_GE(stats_[0].reconnects + stats_[1].reconnects, 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(at::allclose(trainers[i]->ClientWeights(), state.weights)) << i;
  }
}

}  // namespace
}  // namespace cleave
