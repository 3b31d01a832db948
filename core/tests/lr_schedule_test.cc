#include "cleave/core/lr_schedule.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cmath>

#include "cleave/core/error.h"
#include "cleave/core/optimizer_factory.h"

namespace cleave {
namespace {

TEST(LearningRateScheduleTest, ConstantKeepsTheBaseRate) {
  LearningRateSchedule schedule;
  EXPECT_DOUBLE_EQ(schedule.At(0.1, 0), 0.1);
  EXPECT_DOUBLE_EQ(schedule.At(0.1, 1000000), 0.1);
}

TEST(LearningRateScheduleTest, WarmUpRampsLinearlyToTheBase) {
  LearningRateSchedule schedule;
  schedule.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(schedule.At(1.0, 0), 0.25);
  EXPECT_DOUBLE_EQ(schedule.At(1.0, 1), 0.5);
  EXPECT_DOUBLE_EQ(schedule.At(1.0, 3), 1.0);
  EXPECT_DOUBLE_EQ(schedule.At(1.0, 4), 1.0);
}

TEST(LearningRateScheduleTest, CosineFallsFromBaseToFinalAndStays) {
  LearningRateSchedule schedule;
  schedule.kind = "cosine";
  schedule.total_steps = 100;
  schedule.final_fraction = 0.1;
  EXPECT_DOUBLE_EQ(schedule.At(2.0, 0), 2.0);
  // Half-way the cosine term is 1/2: half-way between base and final.
  EXPECT_NEAR(schedule.At(2.0, 50), 2.0 * (0.1 + 0.9 * 0.5), 1e-12);
  EXPECT_NEAR(schedule.At(2.0, 25), 2.0 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4))), 1e-12);
  EXPECT_NEAR(schedule.At(2.0, 100), 0.2, 1e-12);
  EXPECT_NEAR(schedule.At(2.0, 5000), 0.2, 1e-12);
  for (int64_t step = 1; step <= 100; ++step) {
    EXPECT_LT(schedule.At(2.0, step), schedule.At(2.0, step - 1)) << step;
  }
}

TEST(LearningRateScheduleTest, CosineStartsAfterTheWarmUp) {
  LearningRateSchedule schedule;
  schedule.kind = "cosine";
  schedule.total_steps = 10;
  schedule.warmup_steps = 5;
  EXPECT_DOUBLE_EQ(schedule.At(1.0, 4), 1.0);
  EXPECT_DOUBLE_EQ(schedule.At(1.0, 5), 1.0);
  EXPECT_NEAR(schedule.At(1.0, 10), 0.5, 1e-12);
  EXPECT_NEAR(schedule.At(1.0, 15), 0.0, 1e-12);
}

TEST(LearningRateScheduleTest, ValidateRefusesWhatCannotRun) {
  LearningRateSchedule schedule;
  schedule.kind = "linear";
  EXPECT_THROW(schedule.Validate(), UserError);
  schedule.kind = "cosine";
  EXPECT_THROW(schedule.Validate(), UserError);  // no total steps
  schedule.total_steps = 10;
  EXPECT_NO_THROW(schedule.Validate());
  schedule.final_fraction = 1.5;
  EXPECT_THROW(schedule.Validate(), UserError);
}

TEST(LearningRateScheduleTest, SetLearningRateReachesEveryGroupOfTheOptimizer) {
  torch::nn::Linear layer(3, 2);
  for (const std::string name : {"adam", "adamw", "sgd"}) {
    auto optimizer = MakeOptimizer(name, layer->parameters(), 0.1);
    SetLearningRate(*optimizer, 0.025);
    for (auto& group : optimizer->param_groups()) EXPECT_DOUBLE_EQ(group.options().get_lr(), 0.025);
  }
}

TEST(OptimizerFactoryTest, WeightDecayShrinksWeightsWithoutGradient) {
  // A zero gradient isolates the decay: AdamW decays w by lr * wd; SGD's L2 term moves it too.
  torch::nn::Linear layer(4, 4);
  for (const std::string name : {"adamw", "sgd"}) {
    auto optimizer = MakeOptimizer(name, layer->parameters(), 0.1, 0.5);
    const at::Tensor before = layer->weight.detach().clone();
    for (auto& parameter : layer->parameters()) parameter.mutable_grad() = at::zeros_like(parameter);
    optimizer->step();
    EXPECT_LT(layer->weight.abs().sum().item<double>(), before.abs().sum().item<double>()) << name;
  }
  auto plain = MakeOptimizer("adamw", layer->parameters(), 0.1, 0.0);
  const at::Tensor before = layer->weight.detach().clone();
  for (auto& parameter : layer->parameters()) parameter.mutable_grad() = at::zeros_like(parameter);
  plain->step();
  EXPECT_TRUE(layer->weight.equal(before));
  EXPECT_THROW(MakeOptimizer("adamw", layer->parameters(), 0.1, -1.0), UserError);
  EXPECT_THROW(MakeOptimizer("lion", layer->parameters(), 0.1), UserError);
}

}  // namespace
}  // namespace cleave
