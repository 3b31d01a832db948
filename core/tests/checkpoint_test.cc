#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>

#include "cleave/core/checkpoint.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/split_model.h"
#include "test_temp_dir.h"

namespace cleave {
namespace {

struct Trained {
  SplitModel model;
  std::unique_ptr<torch::optim::Adam> optimizer;
};

ModelSpec Mlp() {
  ModelSpec spec;
  spec.architecture = "mlp";
  spec.input_shape = {6};
  return spec;
}

Trained TrainFewSteps(uint64_t seed) {
  Trained t{BuildSplitModel(Mlp(), seed), nullptr};
  t.optimizer = std::make_unique<torch::optim::Adam>(t.model.top->parameters(),
                                                     torch::optim::AdamOptions(0.01));
  for (int i = 0; i < 3; ++i) {
    t.optimizer->zero_grad();
    const at::Tensor loss = torch::nn::functional::cross_entropy(
        t.model.top->forward(at::randn({8, 128})), at::randint(0, 10, {8}, at::kLong));
    loss.backward();
    t.optimizer->step();
  }
  return t;
}

TEST(CheckpointTest, RoundTripIncludingOptimizerState) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained saved = TrainFewSteps(1);
  CheckpointMeta meta{"fp1", {{"step", 3}, {"epoch", 1}}};
  SaveCheckpoint(path, *saved.model.top, saved.optimizer.get(), meta);

  Trained loaded = TrainFewSteps(2);
  const CheckpointMeta read = LoadCheckpoint(path, *loaded.model.top, loaded.optimizer.get(), "fp1");
  EXPECT_EQ(read.fingerprint, "fp1");
  EXPECT_EQ(read.counters, meta.counters);
  for (size_t i = 0; i < saved.model.top->parameters().size(); ++i) {
    EXPECT_TRUE(saved.model.top->parameters()[i].equal(loaded.model.top->parameters()[i]));
  }
  // Adam's moment estimates came back too: the next step is identical.
  const at::Tensor x = at::randn({4, 128});
  const at::Tensor y = at::randint(0, 10, {4}, at::kLong);
  for (Trained* t : {&saved, &loaded}) {
    t->optimizer->zero_grad();
    torch::nn::functional::cross_entropy(t->model.top->forward(x), y).backward();
    t->optimizer->step();
  }
  EXPECT_TRUE(saved.model.top->parameters()[0].equal(loaded.model.top->parameters()[0]));
}

class CorruptCheckpointTest : public ::testing::TestWithParam<int> {};

TEST_P(CorruptCheckpointTest, IsRefusedAndTheModuleIsUntouched) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained saved = TrainFewSteps(1);
  SaveCheckpoint(path, *saved.model.top, saved.optimizer.get(), {"fp1", {{"step", 3}}});
  std::string bytes = ReadFile(path, "checkpoint");
  switch (GetParam()) {
    case 0: bytes[bytes.size() - 100] ^= 0x01; break;  // payload bit flip: CRC
    case 1: bytes.resize(bytes.size() / 2); break;      // truncated
    case 2: bytes[0] = 'X'; break;                      // not a checkpoint
    case 3: bytes = ""; break;                          // empty
  }
  WriteFileAtomic(path, bytes);
  Trained other = TrainFewSteps(2);
  const at::Tensor before = other.model.top->parameters()[0].clone();
  try {
    LoadCheckpoint(path, *other.model.top, other.optimizer.get());
    FAIL() << "corrupt checkpoint accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find(path), std::string::npos) << error.what();
  }
  EXPECT_TRUE(other.model.top->parameters()[0].equal(before));
}

INSTANTIATE_TEST_SUITE_P(Damage, CorruptCheckpointTest, ::testing::Values(0, 1, 2, 3));

TEST(CheckpointTest, WrongFingerprintIsRefusedNamingBoth) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained saved = TrainFewSteps(1);
  SaveCheckpoint(path, *saved.model.top, nullptr, {"aaaa", {}});
  try {
    LoadCheckpoint(path, *saved.model.top, nullptr, "bbbb");
    FAIL();
  } catch (const UserError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("aaaa"), std::string::npos);
    EXPECT_NE(message.find("bbbb"), std::string::npos);
  }
}

TEST(CheckpointTest, MissingCheckpointNamesTheFile) {
  Trained t = TrainFewSteps(1);
  EXPECT_THROW(LoadCheckpoint("/nonexistent/x.ckpt", *t.model.top, nullptr), UserError);
}

TEST(CheckpointTest, PreviousCheckpointSurvivesAFailedSave) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained t = TrainFewSteps(1);
  SaveCheckpoint(path, *t.model.top, nullptr, {"fp", {{"step", 1}}});
  // A save into a path whose directory vanished fails without touching the good file.
  EXPECT_THROW(SaveCheckpoint(dir.File("gone/top.ckpt"), *t.model.top, nullptr, {"fp", {}}),
               UserError);
  EXPECT_EQ(LoadCheckpoint(path, *t.model.top, nullptr).counters.at("step"), 1);
}

}  // namespace
}  // namespace cleave
