// The label defence as the binaries apply it (--label-defence): in U-shaped the hospital defends
// d loss / d a2 before sending it, so the middle gradient the server receives is clipped or
// noisier, and unchanged without the flag; in vertical the server defends the gradient slice of
// every party but the label holder, whose own slice is untouched. Both sides still train. The
// defended tensors are compared with privacy::ApplyGradientDefence on the undefended run's
// first step (same seeds, same weights), so the product applies exactly the measured defence.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <mutex>
#include <numeric>

#include "cleave/client/split_trainer.h"
#include "cleave/client/vertical_features.h"
#include "cleave/core/error.h"
#include "cleave/privacy/gradient_defence.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using client::SplitTrainer;
using client::TrainerOptions;
using privacy::GradientDefence;
using privacy::GradientDefenceKind;
using test_support::LinkKind;
using test_support::TestServer;

constexpr int64_t kFeatures = 12;

double Mean(const std::vector<double>& values, size_t from, size_t count) {
  return std::accumulate(values.begin() + from, values.begin() + from + count, 0.0) / count;
}

at::Tensor RowNorms(const at::Tensor& gradient) {
  return gradient.reshape({gradient.size(0), -1}).norm(2, {1});
}

// ---- U-shaped: the hospital defends what it sends ----

ModelSpec UShapedMlp() {
  ModelSpec spec = test_support::MlpSpec(kFeatures, {16, 16}, 3);
  spec.tail_layers = 1;  // bottom: first hidden; middle: second hidden; tail: the output layer
  return spec;
}

struct UShapedRun {
  std::vector<at::Tensor> received;  // dL/da2 as the server validated it, per step
  std::vector<double> losses;
};

UShapedRun RunUShaped(const GradientDefence& defence, int64_t steps) {
  server::SplitServerOptions server_options;
  server_options.model = UShapedMlp();
  server_options.config = SplitConfig::kUShaped;
  server_options.max_batch = 64;
  TestServer server(server_options, LinkKind::kInProcess);
  UShapedRun run;
  std::mutex mutex;
  server.split_server().u_shaped()->SetGradientObserver(
      [&](const std::string&, int64_t, const at::Tensor& gradient) {
        std::lock_guard<std::mutex> lock(mutex);
        run.received.push_back(gradient.detach().to(at::kCPU).clone());
      });
  TrainerOptions options;
  options.model = UShapedMlp();
  options.config = SplitConfig::kUShaped;
  options.batch_size = 32;
  options.max_steps_per_epoch = steps;
  options.label_defence = defence;
  auto link = server.Link("st-mary");
  SplitTrainer trainer(options, *link);
  trainer.Join(4800);
  trainer.TrainEpoch(test_support::LinearRuleData(4800, 1, kFeatures), 0, 1, nullptr);
  run.losses = trainer.step_losses();
  trainer.Leave();
  return run;
}

TEST(LabelDefenceUShapedTest, TheServerReceivesTheClippedMiddleGradientAndTrainingGoesOn) {
  const UShapedRun plain = RunUShaped({}, 150);
  const UShapedRun clipped = RunUShaped({GradientDefenceKind::kClip, 0.5}, 150);
  ASSERT_EQ(plain.received.size(), 150u);
  ASSERT_EQ(clipped.received.size(), 150u);
  // Step 0 from the same weights: the server got exactly the clipped gradient...
  const at::Tensor expected =
      privacy::ApplyGradientDefence(plain.received[0], {GradientDefenceKind::kClip, 0.5}, 0);
  EXPECT_TRUE(at::allclose(clipped.received[0], expected, 1e-5, 1e-7));
  EXPECT_FALSE(at::allclose(clipped.received[0], plain.received[0], 1e-5, 1e-7));
  // ...and at every step no sample's norm exceeds the batch's bound (half the median norm, which
  // at least half the samples then sit at); without the flag the norms spread out as it trains.
  for (size_t step = 0; step < clipped.received.size(); ++step) {
    const at::Tensor norms = RowNorms(clipped.received[step]);
    EXPECT_LE(norms.max().item<double>(), norms.median().item<double>() * (1 + 1e-4))
        << "step " << step;
  }
  double widest = 0;  // without the flag: the largest max / median norm over the steps
  for (const at::Tensor& gradient : plain.received) {
    const at::Tensor norms = RowNorms(gradient);
    widest = std::max(widest, norms.max().item<double>() / norms.median().item<double>());
  }
  EXPECT_GT(widest, 1.1);
  const double first = Mean(clipped.losses, 0, 25), last = Mean(clipped.losses, 125, 25);
  std::printf("[ label defence ] u-shaped clip 0.5: loss %.3f -> %.3f\n", first, last);
  EXPECT_LT(last, 0.8 * first);
}

TEST(LabelDefenceUShapedTest, NoiseIsAddedToWhatTheServerReceivesAtTheStatedScale) {
  const UShapedRun plain = RunUShaped({}, 2);
  const UShapedRun noisy = RunUShaped({GradientDefenceKind::kNoise, 1.0}, 2);
  const UShapedRun again = RunUShaped({GradientDefenceKind::kNoise, 1.0}, 2);
  ASSERT_EQ(noisy.received.size(), 2u);
  const at::Tensor noise = noisy.received[0] - plain.received[0];
  const double median = RowNorms(plain.received[0]).median().item<double>();
  const double noise_norm = RowNorms(noise).mean().item<double>();
  EXPECT_GT(noise_norm, 0.6 * median);  // about strength x median per sample
  EXPECT_LT(noise_norm, 1.4 * median);
  EXPECT_TRUE(at::equal(noisy.received[0], again.received[0]));  // seeded: reproducible
}

TEST(LabelDefenceUShapedTest, AClientOutsideUShapedRefusesTheDefence) {
  TrainerOptions options;
  options.model = test_support::MlpSpec(kFeatures, {16}, 3);
  options.label_defence = {GradientDefenceKind::kClip, 1.0};
  server::SplitServerOptions server_options;
  server_options.model = options.model;
  TestServer server(server_options, LinkKind::kInProcess);
  auto link = server.Link("st-mary");
  EXPECT_THROW(SplitTrainer(options, *link), UserError);
}

// ---- Vertical: the server defends the passive parties' slices ----

// A link that keeps the gradient of each Train reply (dense: the test server's default link).
class GradientKeepingLink final : public protocol::SplitLink {
 public:
  explicit GradientKeepingLink(std::unique_ptr<protocol::SplitLink> inner)
      : inner_(std::move(inner)) {}
  v1::JoinReply Join(const v1::JoinRequest& request) override { return inner_->Join(request); }
  void OpenTrainStream() override { inner_->OpenTrainStream(); }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    v1::TrainReply reply = inner_->TrainStep(request);
    if (reply.has_gradients()) {
      protocol::TensorSpec spec;
      spec.sample_shape.assign(reply.gradients().shape().begin() + 1,
                               reply.gradients().shape().end());
      spec.max_batch = reply.gradients().shape(0);
      received.push_back(protocol::DecodeTensor(reply.gradients(), spec).dense.clone());
    }
    return reply;
  }
  void CloseTrainStream() override { inner_->CloseTrainStream(); }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override {
    return inner_->Evaluate(request);
  }
  void Leave(const v1::LeaveRequest& request) override { inner_->Leave(request); }
  v1::SyncReply Sync(const v1::SyncRequest& request) override { return inner_->Sync(request); }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override {
    return inner_->SubmitUpdate(request);
  }

  std::vector<at::Tensor> received;

 private:
  std::unique_ptr<protocol::SplitLink> inner_;
};

struct VerticalRun {
  std::vector<at::Tensor> passive, holder;  // what party 0 and party 1 (labels) received
  std::vector<double> holder_losses;
};

// Two parties (columns 0:6 and 6:12, concat), party 1 holds the labels. The trainers are built
// one after the other here (each seeds LibTorch's generator), then train on their own threads.
VerticalRun RunVertical(const GradientDefence& defence, int64_t steps) {
  server::SplitServerOptions server_options;
  server_options.model = test_support::MlpSpec(kFeatures, {16, 16}, 3);
  server_options.max_batch = 64;
  server_options.config = SplitConfig::kVertical;
  server_options.vertical.label_holder = 1;
  server_options.vertical.label_defence = defence;
  TestServer server(server_options, LinkKind::kInProcess);
  const Dataset train = test_support::LinearRuleData(4800, 1, kFeatures);
  const std::vector<std::string> columns = {"0:6", "6:12"};
  std::vector<std::unique_ptr<GradientKeepingLink>> links;
  std::vector<std::unique_ptr<SplitTrainer>> trainers;
  for (int p = 0; p < 2; ++p) {
    TrainerOptions options;
    options.model = test_support::MlpSpec(6, {8, 16}, 3);
    options.seed = 100 + p;
    options.batch_size = 32;
    options.max_steps_per_epoch = steps;
    options.config = SplitConfig::kVertical;
    options.party = p;
    links.push_back(
        std::make_unique<GradientKeepingLink>(server.Link("party-" + std::to_string(p))));
    trainers.push_back(std::make_unique<SplitTrainer>(options, *links.back()));
  }
  std::vector<std::future<void>> done;
  for (int p = 0; p < 2; ++p) {
    done.push_back(std::async(std::launch::async, [&, p] {
      client::FeaturePartFlags part;
      part.columns = columns[p];
      const Dataset mine = client::ApplyFeaturePart(train, part, /*align=*/false);
      trainers[p]->Join(mine.size());
      trainers[p]->TrainEpoch(mine, 0, 1, nullptr);
      trainers[p]->Leave();
    }));
  }
  for (auto& one : done) one.get();
  return {links[0]->received, links[1]->received, trainers[1]->step_losses()};
}

TEST(LabelDefenceVerticalTest, OnlyThePassivePartysGradientIsDefendedAndTrainingGoesOn) {
  const VerticalRun plain = RunVertical({}, 150);
  const VerticalRun clipped = RunVertical({GradientDefenceKind::kClip, 0.5}, 150);
  ASSERT_EQ(clipped.passive.size(), 150u);
  ASSERT_EQ(clipped.holder.size(), 150u);
  const at::Tensor expected =
      privacy::ApplyGradientDefence(plain.passive[0], {GradientDefenceKind::kClip, 0.5}, 0);
  EXPECT_TRUE(at::allclose(clipped.passive[0], expected, 1e-5, 1e-7));
  EXPECT_FALSE(at::allclose(clipped.passive[0], plain.passive[0], 1e-5, 1e-7));
  EXPECT_TRUE(at::equal(clipped.holder[0], plain.holder[0]));  // the label holder's: untouched
  for (size_t step = 0; step < clipped.passive.size(); ++step) {
    const at::Tensor norms = RowNorms(clipped.passive[step]);
    EXPECT_LE(norms.max().item<double>(), norms.median().item<double>() * (1 + 1e-4))
        << "step " << step;
  }
  const at::Tensor holder_norms = RowNorms(clipped.holder[0]);
  EXPECT_GT(holder_norms.max().item<double>(), 1.1 * holder_norms.median().item<double>());
  const double first = Mean(clipped.holder_losses, 0, 25);
  const double last = Mean(clipped.holder_losses, 125, 25);
  std::printf("[ label defence ] vertical clip 0.5 on party 0: loss %.3f -> %.3f\n", first, last);
  EXPECT_LT(last, 0.8 * first);
}

TEST(LabelDefenceVerticalTest, NoiseReachesThePassivePartyOnly) {
  const VerticalRun plain = RunVertical({}, 2);
  const VerticalRun noisy = RunVertical({GradientDefenceKind::kNoise, 1.0}, 2);
  ASSERT_EQ(noisy.passive.size(), 2u);
  const double median = RowNorms(plain.passive[0]).median().item<double>();
  const double noise_norm = RowNorms(noisy.passive[0] - plain.passive[0]).mean().item<double>();
  EXPECT_GT(noise_norm, 0.6 * median);
  EXPECT_LT(noise_norm, 1.4 * median);
  EXPECT_TRUE(at::equal(noisy.holder[0], plain.holder[0]));
}

}  // namespace
}  // namespace cleave
