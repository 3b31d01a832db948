// U-shaped split learning (config "u-shaped") end to end over each link (loopback gRPC with
// mutual TLS, and in process): the hospital runs bottom and tail and keeps its labels, the server
// runs the middle. Training works, no label reaches the server, all four directions are
// compressed and counted on both ends, a hospital that never returns the middle gradient does
// not wedge the server, and SplitFed rounds average bottom and tail.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <numeric>
#include <thread>

#include "cleave/client/round_participant.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/protocol/version.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/fashion_mnist.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using client::SplitTrainer;
using client::TrainerOptions;
using protocol::StatusError;
using test_support::LinkKind;
using test_support::TestServer;

ModelSpec UShapedSpec() {
  ModelSpec spec = test_support::CnnSpec(1);
  spec.tail_layers = 1;  // middle: conv 2 and the hidden linear; tail: the last linear
  return spec;
}

server::SplitServerOptions UShapedServer() {
  server::SplitServerOptions options;
  options.model = UShapedSpec();
  options.config = SplitConfig::kUShaped;
  options.max_batch = 64;
  options.max_message_bytes = 4 << 20;
  return options;
}

TrainerOptions UShapedTrainer(int64_t steps) {
  TrainerOptions options;
  options.model = UShapedSpec();
  options.config = SplitConfig::kUShaped;
  options.batch_size = 32;
  options.max_steps_per_epoch = steps;
  return options;
}

// A link that records whether any request it passes on carries labels, as parsed from the bytes
// that go on the wire: what the server's handlers get.
class LabelWatchingLink final : public protocol::SplitLink {
 public:
  explicit LabelWatchingLink(protocol::SplitLink& inner) : inner_(inner) {}
  v1::JoinReply Join(const v1::JoinRequest& request) override { return inner_.Join(request); }
  void OpenTrainStream() override { inner_.OpenTrainStream(); }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    const v1::TrainRequest sent = OnTheWire(request);
    ++train_requests;
    if (sent.has_labels()) ++with_labels;
    if (sent.has_middle_gradient()) ++middle_gradients;
    return inner_.TrainStep(request);
  }
  void CloseTrainStream() override { inner_.CloseTrainStream(); }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override {
    ++evaluate_requests;
    if (OnTheWire(request).has_labels()) ++with_labels;
    return inner_.Evaluate(request);
  }
  void Leave(const v1::LeaveRequest& request) override { inner_.Leave(request); }
  v1::SyncReply Sync(const v1::SyncRequest& request) override { return inner_.Sync(request); }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override {
    return inner_.SubmitUpdate(request);
  }

  int64_t train_requests = 0, evaluate_requests = 0, with_labels = 0, middle_gradients = 0;

 private:
  template <typename Message>
  static Message OnTheWire(const Message& message) {
    Message parsed;
    EXPECT_TRUE(parsed.ParseFromString(message.SerializeAsString()));
    return parsed;
  }
  protocol::SplitLink& inner_;
};

double MeanOf(const std::vector<double>& values, size_t from, size_t count) {
  return std::accumulate(values.begin() + from, values.begin() + from + count, 0.0) / count;
}

class UShapedTest : public ::testing::TestWithParam<LinkKind> {
 protected:
  void Start(const server::SplitServerOptions& options) {
    server_ = std::make_unique<TestServer>(options, GetParam());
    link_ = server_->Link("st-mary");
  }
  server::SplitServer& split_server() { return server_->split_server(); }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<protocol::SplitLink> link_;
};

TEST_P(UShapedTest, TrainsWithoutALabelReachingTheServer) {
  CLEAVE_REQUIRE_FASHION_MNIST();
  Start(UShapedServer());
  LabelWatchingLink watched(*link_);
  SplitTrainer trainer(UShapedTrainer(200), watched);
  const v1::JoinReply joined = trainer.Join(8000);
  EXPECT_EQ(joined.server().config(), "u-shaped");
  const at::Tensor middle_before = split_server().top_parameters()[0].clone();
  // What the server learns from the hospital in training: d loss / d a2 of each step.
  std::atomic<int64_t> gradients_seen{0};
  split_server().u_shaped()->SetGradientObserver(
      [&](const std::string&, int64_t, const at::Tensor& gradient) {
        if (gradient.sizes() == at::IntArrayRef({32, 128})) ++gradients_seen;
      });
  trainer.TrainEpoch(test_support::FashionMnist(FashionMnistSplit::kTrain, 8000), 0, 1, nullptr);
  const auto& losses = trainer.step_losses();
  ASSERT_EQ(losses.size(), 200u);
  const double first = MeanOf(losses, 0, 25), last = MeanOf(losses, losses.size() - 25, 25);
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  // Every step was two messages, the second carrying the middle gradient; the middle moved.
  EXPECT_EQ(watched.train_requests, 400);
  EXPECT_EQ(watched.middle_gradients, 200);
  EXPECT_EQ(split_server().step(), 200);
  EXPECT_FALSE(split_server().top_parameters()[0].equal(middle_before));
  const server::UShapedCounters counts = split_server().u_shaped()->counters();
  EXPECT_EQ(counts.steps_started, 200);
  EXPECT_EQ(counts.steps_finished, 200);
  EXPECT_EQ(counts.steps_abandoned, 0);
  EXPECT_EQ(gradients_seen.load(), 200);
  const client::EvalStats eval =
      trainer.Evaluate(test_support::FashionMnist(FashionMnistSplit::kTest, 2000), 500);
  std::printf("[ u-shaped ] held-out accuracy after 200 steps: %.3f\n", eval.accuracy);
  EXPECT_GT(eval.accuracy, 0.7);
  EXPECT_EQ(eval.samples, 2000);
  EXPECT_GT(watched.evaluate_requests, 0);
  EXPECT_EQ(watched.with_labels, 0);  // no request, train or evaluate, carried labels
  trainer.Leave();
}

TEST_P(UShapedTest, CompressesAndCountsAllFourDirections) {
  server::SplitServerOptions options = UShapedServer();
  auto* act = options.compression.mutable_activations();  // a1 up and a2 down
  act->set_method("gaussiank+");
  act->set_density(0.1);
  act->set_value_precision("fp16");
  auto* grad = options.compression.mutable_gradients();  // d/da2 up and d/da1 down
  grad->set_method("gaussiank");
  grad->set_density(0.5);
  grad->set_value_precision("bf16");
  Start(options);
  SplitTrainer trainer(UShapedTrainer(30), *link_);
  trainer.Join(600);
  trainer.TrainEpoch(test_support::SmoothImages(960, 5), 0, 1, nullptr);
  ASSERT_EQ(trainer.step_losses().size(), 30u);
  const client::UShapedBytes bytes = trainer.counters().u_shaped;
  const client::DirectionBytes* directions[] = {&bytes.activations_up, &bytes.middle_output_down,
                                                &bytes.middle_gradient_up, &bytes.gradient_down};
  for (const client::DirectionBytes* direction : directions) {
    EXPECT_GT(direction->messages, 0);
    EXPECT_GT(direction->dense_fp32, 0);
    // 10% (a1, a2) or 5% (gradients: half of the positions sent) of the values in 2 bytes, plus
    // indices: far below dense fp32.
    EXPECT_LT(direction->messages * 4, direction->dense_fp32)
        << direction->messages << " of " << direction->dense_fp32;
  }
  // The server counted the same protobuf bytes: a1 and d/da2 in, a2 and d/da1 out.
  EXPECT_EQ(split_server().bytes_received(),
            bytes.activations_up.messages + bytes.middle_gradient_up.messages);
  EXPECT_EQ(split_server().bytes_sent(),
            bytes.middle_output_down.messages + bytes.gradient_down.messages);
  trainer.Leave();
}

// Hand-made messages for one hospital's U-shaped step: a1 (cnn cut 1: 32x14x14), d/da2 (128).
v1::TrainRequest FirstMessage(const std::string& session, int64_t step, bool with_labels = false) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_step(step);
  protocol::EncodeDense(at::rand({4, 32, 14, 14}), request.mutable_activations());
  if (with_labels) protocol::EncodeDense(at::zeros({4}, at::kLong), request.mutable_labels());
  return request;
}

v1::TrainRequest SecondMessage(const std::string& session, int64_t step) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_step(step);
  protocol::EncodeDense(at::full({4, 128}, 0.01), request.mutable_middle_gradient());
  return request;
}

v1::JoinReply JoinAs(protocol::SplitLink& link) {
  v1::JoinRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_model_fingerprint(ModelFingerprint(UShapedSpec()));
  return link.Join(request);
}

TEST_P(UShapedTest, RefusesLabelsAndAVanillaClient) {
  Start(UShapedServer());
  const std::string session = JoinAs(*link_).session_id();
  link_->OpenTrainStream();
  try {
    link_->TrainStep(FirstMessage(session, 0, /*with_labels=*/true));
    ADD_FAILURE() << "a U-shaped step with labels was accepted";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(std::string(error.what()).find("no labels"), std::string::npos) << error.what();
  }
  link_->CloseTrainStream();
  EXPECT_EQ(split_server().counters().refused_steps, 1);
  EXPECT_EQ(split_server().u_shaped()->counters().steps_started, 0);

  // A vanilla client (no tail, labels to the server) is refused at Join.
  TrainerOptions vanilla = UShapedTrainer(1);
  vanilla.model.tail_layers = 0;
  vanilla.config = SplitConfig::kVanilla;
  auto other = server_->Link("riverside");
  SplitTrainer trainer(vanilla, *other);
  try {
    trainer.Join(10);
    ADD_FAILURE() << "a vanilla client joined a u-shaped server";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(std::string(error.what()).find("u-shaped"), std::string::npos) << error.what();
  }
}

TEST_P(UShapedTest, AHospitalThatNeverSendsTheMiddleGradientDoesNotWedgeTheServer) {
  server::SplitServerOptions options = UShapedServer();
  options.middle_gradient_timeout = std::chrono::milliseconds(300);
  Start(options);
  auto silent_link = server_->Link("silent");
  const std::string silent = JoinAs(*silent_link).session_id();
  const std::string session = JoinAs(*link_).session_id();
  silent_link->OpenTrainStream();
  const v1::TrainReply middle = silent_link->TrainStep(FirstMessage(silent, 0));
  EXPECT_TRUE(middle.has_middle_output());
  EXPECT_FALSE(middle.has_gradients());
  // The other hospital's step waits for the silent one's deadline at most, then goes ahead.
  link_->OpenTrainStream();
  const auto started = std::chrono::steady_clock::now();
  EXPECT_TRUE(link_->TrainStep(FirstMessage(session, 0)).has_middle_output());
  const v1::TrainReply done = link_->TrainStep(SecondMessage(session, 0));
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_TRUE(done.has_gradients());
  EXPECT_EQ(done.server_step(), 1);
  EXPECT_LT(waited, 10.0);
  link_->CloseTrainStream();
  // The silent hospital's gradient, too late, is refused; its session stays.
  try {
    silent_link->TrainStep(SecondMessage(silent, 0));
    ADD_FAILURE() << "a gradient after the deadline was accepted";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::ABORTED);
  }
  silent_link->CloseTrainStream();
  const server::UShapedCounters counts = split_server().u_shaped()->counters();
  EXPECT_EQ(counts.steps_started, 2);
  EXPECT_EQ(counts.steps_finished, 1);
  EXPECT_EQ(counts.steps_abandoned, 1);
  EXPECT_EQ(split_server().step(), 1);
}

TEST_P(UShapedTest, LeavingDropsAPendingStepAtOnce) {
  server::SplitServerOptions options = UShapedServer();
  options.middle_gradient_timeout = std::chrono::seconds(60);
  Start(options);
  auto leaving_link = server_->Link("leaving");
  const std::string leaving = JoinAs(*leaving_link).session_id();
  const std::string session = JoinAs(*link_).session_id();
  leaving_link->OpenTrainStream();
  leaving_link->TrainStep(FirstMessage(leaving, 0));
  leaving_link->CloseTrainStream();
  v1::LeaveRequest leave;
  leave.set_protocol_version(protocol::kProtocolVersion);
  leave.set_session_id(leaving);
  leaving_link->Leave(leave);
  EXPECT_EQ(split_server().u_shaped()->counters().steps_abandoned, 1);
  // Nothing holds the middle: the next step goes through without waiting for the 60 s deadline.
  link_->OpenTrainStream();
  const auto started = std::chrono::steady_clock::now();
  link_->TrainStep(FirstMessage(session, 0));
  EXPECT_TRUE(link_->TrainStep(SecondMessage(session, 0)).has_gradients());
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), 10);
  link_->CloseTrainStream();
}

// SplitFed rounds: the client-side model is bottom and tail, and both are averaged.
TEST_P(UShapedTest, SplitFedRoundsAverageBottomAndTail) {
  ModelSpec spec = test_support::MlpSpec(12, {16, 8}, 3);  // [12->16] | [16->8] | [8->3]
  spec.tail_layers = 1;
  server::SplitServerOptions options;
  options.model = spec;
  options.config = SplitConfig::kUShaped;
  options.max_batch = 64;
  options.rounds.schedule = server::Schedule::kSplitFed;
  options.rounds.rounds = 3;
  options.rounds.round_samples = 128;
  options.rounds.min_clients = 2;
  Start(options);
  const int64_t parameters = (12 * 16 + 16) + (8 * 3 + 3);  // bottom, then tail
  ASSERT_EQ(split_server().rounds()->num_parameters(), parameters);
  const at::Tensor initial = split_server().rounds()->Snapshot().weights.clone();
  const std::vector<Dataset> shards = {test_support::LinearRuleData(600, 11),
                                       test_support::LinearRuleData(600, 12)};
  std::vector<std::unique_ptr<protocol::SplitLink>> links;
  std::vector<std::unique_ptr<SplitTrainer>> trainers;
  for (const char* name : {"st-mary", "riverside"}) {
    links.push_back(server_->Link(name));
    TrainerOptions trainer_options;
    trainer_options.model = spec;
    trainer_options.config = SplitConfig::kUShaped;
    trainer_options.batch_size = 16;
    trainer_options.learning_rate = 1e-2;
    trainer_options.seed = trainers.size() + 1;
    trainers.push_back(std::make_unique<SplitTrainer>(trainer_options, *links.back()));
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < trainers.size(); ++i) {
    threads.emplace_back([&, i] {
      client::RoundParticipantOptions participant_options;
      participant_options.sync_wait_ms = 2000;
      client::RoundParticipant participant(*trainers[i], participant_options);
      participant.Run(shards[i], shards[i].size(), nullptr);
    });
  }
  for (std::thread& thread : threads) thread.join();
  const server::RoundState state = split_server().rounds()->Snapshot();
  EXPECT_TRUE(state.finished());
  EXPECT_EQ(state.version, 3);
  // Both hospitals end on the server's averaged weights, tail included, and the tail moved.
  for (const auto& trainer : trainers) {
    EXPECT_TRUE(at::allclose(trainer->ClientWeights(), state.weights));
  }
  const int64_t tail_from = 12 * 16 + 16;
  EXPECT_FALSE(at::allclose(state.weights.slice(0, tail_from), initial.slice(0, tail_from)));
  EXPECT_FALSE(at::allclose(state.weights.slice(0, 0, tail_from), initial.slice(0, 0, tail_from)));
}

// Without compression a U-shaped step computes what a vanilla step does, only split three ways:
// from the same seeds, the same losses, bottom, middle and tail as vanilla's bottom and top.
TEST(UShapedEquivalenceTest, TrainsExactlyLikeVanillaWithoutCompression) {
  const ModelSpec vanilla_spec = test_support::MlpSpec(12, {16, 8}, 3);
  ModelSpec u_spec = vanilla_spec;
  u_spec.tail_layers = 1;
  const Dataset data = test_support::LinearRuleData(320, 21);
  struct Run {
    std::vector<double> losses;
    at::Tensor bottom, server_side, tail;
  };
  const auto train = [&](const ModelSpec& spec, SplitConfig config) {
    server::SplitServerOptions options;
    options.model = spec;
    options.config = config;
    TestServer server(options, LinkKind::kInProcess);
    auto link = server.Link("st-mary");
    TrainerOptions trainer_options;
    trainer_options.model = spec;
    trainer_options.config = config;
    trainer_options.batch_size = 32;
    SplitTrainer trainer(trainer_options, *link);
    trainer.Join(data.size());
    trainer.TrainEpoch(data, 0, 1, nullptr);
    Run run;
    run.losses = trainer.step_losses();
    run.bottom = FlattenParameters(*trainer.model().bottom);
    std::vector<at::Tensor> flat;
    for (const at::Tensor& parameter : server.split_server().top_parameters()) {
      flat.push_back(parameter.reshape({-1}));
    }
    if (trainer.model().tail) flat.push_back(FlattenParameters(*trainer.model().tail));
    run.server_side = at::cat(flat);
    return run;
  };
  const Run vanilla = train(vanilla_spec, SplitConfig::kVanilla);
  const Run u_shaped = train(u_spec, SplitConfig::kUShaped);
  ASSERT_EQ(u_shaped.losses.size(), 10u);
  ASSERT_EQ(vanilla.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_NEAR(u_shaped.losses[i], vanilla.losses[i], 1e-6);
  EXPECT_TRUE(at::allclose(u_shaped.bottom, vanilla.bottom, 1e-5, 1e-6));
  // Vanilla's top is U-shaped's middle followed by its tail.
  EXPECT_TRUE(at::allclose(u_shaped.server_side, vanilla.server_side, 1e-5, 1e-6));
  EXPECT_GT(vanilla.losses.front() - vanilla.losses.back(), 0.0);
}

const auto kLinks = ::testing::Values(LinkKind::kGrpc, LinkKind::kInProcess);
INSTANTIATE_TEST_SUITE_P(Links, UShapedTest, kLinks,
                         [](const ::testing::TestParamInfo<LinkKind>& info) {
                           return test_support::LinkName(info.param);
                         });

}  // namespace
}  // namespace cleave
