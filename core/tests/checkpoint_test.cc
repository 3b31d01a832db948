#include "cleave/core/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>
#include <unistd.h>

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

// A few Adam steps on the top of an mlp; `optimized` picks which top parameters Adam gets (all
// when empty).
Trained TrainFewSteps(uint64_t seed, std::vector<int> optimized = {}) {
  Trained t{BuildSplitModel(Mlp(), seed), nullptr};
  std::vector<at::Tensor> params = t.model.top->parameters();
  if (!optimized.empty()) {
    std::vector<at::Tensor> chosen;
    for (int i : optimized) chosen.push_back(params[i]);
    params = chosen;
  }
  t.optimizer = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(0.01));
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
  const CheckpointMeta read =
      LoadCheckpoint(path, *loaded.model.top, loaded.optimizer.get(), "fp1");
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

// Adam's first-moment estimate for every parameter it optimises, copied.
std::vector<at::Tensor> FirstMoments(const torch::optim::Adam& optimizer) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& param : optimizer.param_groups()[0].params()) {
    const auto& state = optimizer.state().at(c10::guts::to_string(param.unsafeGetTensorImpl()));
    out.push_back(static_cast<const torch::optim::AdamParamState&>(*state).exp_avg().clone());
  }
  return out;
}

bool AllEqual(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].equal(b[i])) return false;
  }
  return true;
}

// Copies of the module's parameters, to check it was left alone.
std::vector<at::Tensor> Snapshot(const torch::nn::Module& module) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& param : module.parameters()) out.push_back(param.clone());
  return out;
}

// Loading must fail with a UserError naming `path` and leave module and optimizer as they were.
void ExpectRefusedUntouched(const std::string& path, Trained& target,
                            const std::string& expected_text = "") {
  const std::vector<at::Tensor> params = Snapshot(*target.model.top);
  const std::vector<at::Tensor> moments = FirstMoments(*target.optimizer);
  try {
    LoadCheckpoint(path, *target.model.top, target.optimizer.get());
    ADD_FAILURE() << "checkpoint accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("'" + path + "'"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find(expected_text), std::string::npos) << error.what();
  }
  EXPECT_TRUE(AllEqual(Snapshot(*target.model.top), params));
  EXPECT_TRUE(AllEqual(FirstMoments(*target.optimizer), moments));
}

class CorruptCheckpointTest : public ::testing::TestWithParam<int> {};

TEST_P(CorruptCheckpointTest, IsRefusedAndTheModuleIsUntouched) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained saved = TrainFewSteps(1);
  SaveCheckpoint(path, *saved.model.top, saved.optimizer.get(), {"fp1", {{"step", 3}}});
  std::string bytes = ReadFile(path, "checkpoint");
  switch (GetParam()) {
    case 0:
      bytes[bytes.size() - 100] ^= 0x01;
      break;  // payload bit flip: CRC
    case 1:
      bytes.resize(bytes.size() / 2);
      break;  // truncated
    case 2:
      bytes[0] = 'X';
      break;  // not a checkpoint
    case 3:
      bytes = "";
      break;  // empty
  }
  WriteFileAtomic(path, bytes);
  Trained other = TrainFewSteps(2);
  ExpectRefusedUntouched(path, other, GetParam() == 0 ? "CRC mismatch" : "is corrupt");
}

INSTANTIATE_TEST_SUITE_P(Damage, CorruptCheckpointTest, ::testing::Values(0, 1, 2, 3));

TEST(CheckpointTest, ModelWithOtherShapesIsRefusedAndNothingChanges) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  ModelSpec narrow = Mlp();
  narrow.hidden = {128, 32};  // the top's first Linear is 128 -> 32 instead of 128 -> 64
  const SplitModel other_model = BuildSplitModel(narrow, 1);
  SaveCheckpoint(path, *other_model.top, nullptr, {"", {}});
  Trained target = TrainFewSteps(2);
  ExpectRefusedUntouched(path, target, "'0.weight'");
}

TEST(CheckpointTest, OptimizerThatDoesNotFitIsRefusedAndNothingChanges) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  // Saved: Adam over all four top tensors. Loaded: Adam over two of them.
  Trained saved = TrainFewSteps(1);
  SaveCheckpoint(path, *saved.model.top, saved.optimizer.get(), {"", {}});
  Trained fewer = TrainFewSteps(2, {0, 1});
  ExpectRefusedUntouched(path, fewer);
  // Saved: Adam over {weight, bias}; loaded: Adam over {bias, weight}. Counts match, but each
  // saved moment estimate has the other parameter's shape.
  Trained ordered = TrainFewSteps(1, {0, 1});
  SaveCheckpoint(path, *ordered.model.top, ordered.optimizer.get(), {"", {}});
  Trained swapped = TrainFewSteps(2, {1, 0});
  ExpectRefusedUntouched(path, swapped, "optimizer state");
}

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
  ExpectRefusedUntouched("/nonexistent/x.ckpt", t, "No such file");
}

TEST(CheckpointTest, IsPrivateToItsOwner) {
  testing::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained t = TrainFewSteps(1);
  SaveCheckpoint(path, *t.model.top, t.optimizer.get(), {"fp", {}});
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
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
  // A save into the same, now read-only, directory fails the same way (root ignores modes).
  if (::geteuid() != 0) {
    ::chmod(dir.path().c_str(), 0500);
    EXPECT_THROW(SaveCheckpoint(path, *t.model.top, nullptr, {"fp", {{"step", 2}}}), UserError);
    ::chmod(dir.path().c_str(), 0700);
  }
  EXPECT_EQ(LoadCheckpoint(path, *t.model.top, nullptr).counters.at("step"), 1);
}

}  // namespace
}  // namespace cleave
