// --device: both halves on a GPU train like on the CPU (skipped without CUDA), and the training
// schedule flags reach the optimizers on either device. Run over both links: the wire is the
// same, only where the layers live differs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <string>

#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/core/device.h"
#include "cleave/core/error.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using test_support::LinkKind;

struct TrainedRun {
  double first_loss = 0, last_loss = 0, accuracy = 0, last_lr = 0;
};

// Three epochs of the first-feature task with Gaussian-k activations and NoPeek, both halves on
// `device`, the client on a cosine schedule over its 150 steps.
TrainedRun Train(const std::string& device, LinkKind kind) {
  server::SplitServerOptions server_options;
  server_options.model = test_support::MlpSpec(20, {32, 16}, 2);
  server_options.device = device;
  server_options.compression.mutable_activations()->set_method("gaussiank");
  server_options.compression.mutable_activations()->set_density(0.5);
  const test_support::TestServer server(server_options, kind);
  const std::unique_ptr<protocol::SplitLink> link = server.Link("local");
  client::TrainerOptions options;
  options.model = server_options.model;
  options.device = ResolveDevice(device);
  options.batch_size = 128;
  options.learning_rate = 1e-2;
  options.nopeek_alpha = 0.5;
  options.schedule.kind = "cosine";
  options.schedule.total_steps = 150;
  options.schedule.final_fraction = 0.1;
  client::SplitTrainer trainer(options, *link);
  const Dataset train = test_support::FirstFeatureData(6400, 1),
                test = test_support::FirstFeatureData(1024, 2);
  trainer.Join(train.size());
  for (int epoch = 0; epoch < 3; ++epoch) trainer.TrainEpoch(train, epoch, 3, nullptr);
  for (const at::Tensor& parameter : trainer.model().bottom->parameters()) {
    EXPECT_EQ(parameter.device(), options.device);
  }
  TrainedRun run;
  run.first_loss = trainer.step_losses().front();
  run.last_loss = trainer.step_losses().back();
  run.accuracy = trainer.Evaluate(test).accuracy;
  run.last_lr = trainer.optimizer().param_groups().front().options().get_lr();
  trainer.Leave();
  return run;
}

class DeviceTest : public testing::TestWithParam<LinkKind> {};

TEST_P(DeviceTest, CosineScheduleEndsAtItsFinalRateAndTrainingConverges) {
  const TrainedRun cpu = Train("cpu", GetParam());
  EXPECT_LT(cpu.last_loss, 0.5 * cpu.first_loss);
  EXPECT_GT(cpu.accuracy, 0.9);
  // 150 steps: the last step (index 149) ran at the schedule's rate there, near the final 10%.
  LearningRateSchedule schedule;
  schedule.kind = "cosine";
  schedule.total_steps = 150;
  schedule.final_fraction = 0.1;
  EXPECT_DOUBLE_EQ(cpu.last_lr, schedule.At(1e-2, 149));
}

TEST_P(DeviceTest, BothHalvesOnTheGpuTrainLikeOnTheCpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  const TrainedRun cpu = Train("cpu", GetParam());
  const TrainedRun gpu = Train("cuda", GetParam());
  EXPECT_LT(gpu.last_loss, 0.5 * gpu.first_loss);
  EXPECT_NEAR(gpu.accuracy, cpu.accuracy, 0.03);
}

TEST(DeviceServerTest, AServerAskedForAMissingGpuRefusesWithOneLine) {
  if (CudaAvailable()) GTEST_SKIP() << "a GPU is here";
  server::SplitServerOptions options;
  options.model = test_support::MlpSpec(20, {32, 16}, 2);
  options.device = "cuda";
  EXPECT_THROW(server::SplitServer server(options), UserError);
  options.device = "auto";
  EXPECT_NO_THROW(server::SplitServer server(options));
}

INSTANTIATE_TEST_SUITE_P(Links, DeviceTest,
                         testing::Values(LinkKind::kGrpc, LinkKind::kInProcess),
                         [](const auto& info) { return test_support::LinkName(info.param); });

}  // namespace
}  // namespace cleave
