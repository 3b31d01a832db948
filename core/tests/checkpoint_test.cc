#include "cleave/core/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/serialize/output-archive.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <tuple>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/split_model.h"
#include "cleave/test_support/temp_dir.h"
#include "resource_limit.h"

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
  test_support::TempDir dir;
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
  test_support::TempDir dir;
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
  const std::string why = GetParam() == 0 ? "CRC mismatch" : "is corrupt";
  ExpectRefusedUntouched(path, other, why);
  // Reading only the meta refuses it the same way.
  try {
    ReadCheckpointMeta(path);
    ADD_FAILURE() << "meta read from a damaged checkpoint";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("'" + path + "' is corrupt"), std::string::npos)
        << error.what();
    EXPECT_NE(std::string(error.what()).find(why), std::string::npos) << error.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Damage, CorruptCheckpointTest, ::testing::Values(0, 1, 2, 3));

TEST(CheckpointTest, ModelWithOtherShapesIsRefusedAndNothingChanges) {
  test_support::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  ModelSpec narrow = Mlp();
  narrow.hidden = {128, 32};  // the top's first Linear is 128 -> 32 instead of 128 -> 64
  const SplitModel other_model = BuildSplitModel(narrow, 1);
  SaveCheckpoint(path, *other_model.top, nullptr, {"", {}});
  Trained target = TrainFewSteps(2);
  ExpectRefusedUntouched(path, target, "'0.weight'");
}

TEST(CheckpointTest, OptimizerThatDoesNotFitIsRefusedAndNothingChanges) {
  test_support::TempDir dir;
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
  test_support::TempDir dir;
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

TEST(CheckpointTest, MetaIsReadWithoutAModule) {
  test_support::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained saved = TrainFewSteps(1);
  const CheckpointMeta meta{"fp1", {{"step", 1200}, {"epoch", 3}, {"round.weights", -7}}};
  SaveCheckpoint(path, *saved.model.top, saved.optimizer.get(), meta);
  for (const std::string expected : {"", "fp1"}) {
    const CheckpointMeta read = ReadCheckpointMeta(path, expected);
    EXPECT_EQ(read.fingerprint, "fp1");
    EXPECT_EQ(read.counters, meta.counters);
  }
  SaveCheckpoint(path, *saved.model.top, nullptr, {"", {}});
  EXPECT_EQ(ReadCheckpointMeta(path).fingerprint, "");
  EXPECT_TRUE(ReadCheckpointMeta(path).counters.empty());
}

TEST(CheckpointTest, MetaOfAnotherModelOrAMissingFileIsRefused) {
  test_support::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained saved = TrainFewSteps(1);
  SaveCheckpoint(path, *saved.model.top, nullptr, {"aaaa", {{"step", 1}}});
  try {
    ReadCheckpointMeta(path, "bbbb");
    FAIL();
  } catch (const UserError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("'" + path + "'"), std::string::npos) << message;
    EXPECT_NE(message.find("aaaa"), std::string::npos) << message;
    EXPECT_NE(message.find("bbbb"), std::string::npos) << message;
  }
  EXPECT_THROW(ReadCheckpointMeta(dir.File("missing.ckpt")), UserError);
}

TEST(CheckpointTest, MissingCheckpointNamesTheFile) {
  Trained t = TrainFewSteps(1);
  ExpectRefusedUntouched("/nonexistent/x.ckpt", t, "No such file");
}

TEST(CheckpointTest, IsPrivateToItsOwner) {
  test_support::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained t = TrainFewSteps(1);
  SaveCheckpoint(path, *t.model.top, t.optimizer.get(), {"fp", {}});
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(CheckpointTest, PreviousCheckpointSurvivesAFailedSave) {
  test_support::TempDir dir;
  const std::string path = dir.File("top.ckpt");
  Trained t = TrainFewSteps(1);
  SaveCheckpoint(path, *t.model.top, nullptr, {"fp", {{"step", 1}}});
  // A save into a path whose directory vanished fails without touching the good file.
  EXPECT_THROW(SaveCheckpoint(dir.File("gone/top.ckpt"), *t.model.top, nullptr, {"fp", {}}),
               UserError);
  EXPECT_EQ(LoadCheckpoint(path, *t.model.top, nullptr).counters.at("step"), 1);
  // A save that fails halfway (the disk fills up: injected with a file size limit, which binds
  // root too) fails the same way.
  {
    testing::ScopedResourceLimit small_files(RLIMIT_FSIZE, 64);
    ASSERT_TRUE(small_files.ok());
    EXPECT_THROW(SaveCheckpoint(path, *t.model.top, nullptr, {"fp", {{"step", 2}}}), UserError);
  }
  EXPECT_EQ(LoadCheckpoint(path, *t.model.top, nullptr).counters.at("step"), 1);
}

// A Linear and a BatchNorm1d (parameters and floating-point buffers) after two Adam steps.
struct Net {
  torch::nn::Sequential net;
  std::unique_ptr<torch::optim::Adam> optimizer;
};

Net TrainedNet(uint64_t seed) {
  at::manual_seed(seed);
  Net n{torch::nn::Sequential(torch::nn::Linear(4, 3), torch::nn::BatchNorm1d(3)), nullptr};
  n.optimizer =
      std::make_unique<torch::optim::Adam>(n.net->parameters(), torch::optim::AdamOptions(0.01));
  for (int i = 0; i < 2; ++i) {
    n.optimizer->zero_grad();
    n.net->forward(at::randn({8, 4})).pow(2).mean().backward();
    n.optimizer->step();
  }
  return n;
}

// Every parameter, buffer and Adam moment, copied: to check nothing was modified.
std::vector<at::Tensor> Everything(const Net& n) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : n.net->parameters()) out.push_back(t.clone());
  for (const at::Tensor& t : n.net->buffers()) out.push_back(t.clone());
  for (const at::Tensor& param : n.net->parameters()) {
    const auto& state = static_cast<const torch::optim::AdamParamState&>(
        *n.optimizer->state().at(c10::guts::to_string(param.unsafeGetTensorImpl())));
    out.push_back(state.exp_avg().clone());
    out.push_back(state.exp_avg_sq().clone());
  }
  return out;
}

enum class Where { kParameter, kBuffer, kOptimizerState };

// Puts `value` into one element of a parameter, a buffer or Adam's state; returns how the error
// names that tensor.
std::string Poison(Net& n, Where where, float value) {
  at::NoGradGuard no_grad;
  switch (where) {
    case Where::kParameter:
      n.net->named_parameters()["0.bias"][1] = value;
      return "parameter '0.bias'";
    case Where::kBuffer:
      n.net->named_buffers()["1.running_var"][2] = value;
      return "buffer '1.running_var'";
    case Where::kOptimizerState: {
      const at::Tensor param = n.net->named_parameters()["0.weight"];
      auto& state = static_cast<torch::optim::AdamParamState&>(
          *n.optimizer->state().at(c10::guts::to_string(param.unsafeGetTensorImpl())));
      state.exp_avg_sq()[0][3] = value;
      return "optimizer state 'exp_avg_sq' of parameter '0.weight'";
    }
  }
  return "";
}

// Writes a checkpoint in SaveCheckpoint's file format (checkpoint.cc: magic, payload length, CRC32,
// fingerprint, then a LibTorch archive holding "model", "optimizer" and the counter names) but
// without its finiteness guard, so that the loader's own check can be tested. The
// WrittenUnguarded control test loads a finite one, so this stays true to the format.
void WriteUnguardedCheckpoint(const std::string& path, const Net& n) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  n.net->save(model_archive);
  archive.write("model", model_archive);
  n.optimizer->save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("cleave_counter_names", at::empty({0}, at::kChar));
  std::string payload;
  archive.save_to([&payload](const void* data, size_t size) {
    payload.append(static_cast<const char*>(data), size);
    return size;
  });
  const uint64_t size = payload.size();
  const uint32_t crc = static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0),
                                                   reinterpret_cast<const Bytef*>(payload.data()),
                                                   static_cast<uInt>(payload.size())));
  const uint32_t fingerprint_size = 0;
  std::string file = "CLVCKPT1";
  file.append(reinterpret_cast<const char*>(&size), sizeof(size));
  file.append(reinterpret_cast<const char*>(&crc), sizeof(crc));
  file.append(reinterpret_cast<const char*>(&fingerprint_size), sizeof(fingerprint_size));
  WriteFileAtomic(path, file + payload);
}

TEST(NonFiniteCheckpointTest, WrittenUnguardedFiniteLoads) {
  test_support::TempDir dir;
  const std::string path = dir.File("net.ckpt");
  const Net saved = TrainedNet(1);
  WriteUnguardedCheckpoint(path, saved);
  Net loaded = TrainedNet(2);
  ASSERT_FALSE(AllEqual(Everything(loaded), Everything(saved)));
  LoadCheckpoint(path, *loaded.net, loaded.optimizer.get());
  EXPECT_TRUE(AllEqual(Everything(loaded), Everything(saved)));
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

class NonFiniteCheckpointTest : public ::testing::TestWithParam<std::tuple<Where, float>> {};

TEST_P(NonFiniteCheckpointTest, IsNotWrittenAndThePreviousFileStays) {
  test_support::TempDir dir;
  const std::string path = dir.File("net.ckpt");
  Net n = TrainedNet(1);
  SaveCheckpoint(path, *n.net, n.optimizer.get(), {"fp", {{"step", 2}}});
  const std::string good = ReadFile(path, "checkpoint");
  const std::string name = Poison(n, std::get<0>(GetParam()), std::get<1>(GetParam()));
  try {
    SaveCheckpoint(path, *n.net, n.optimizer.get(), {"fp", {{"step", 3}}});
    ADD_FAILURE() << "non-finite checkpoint written";
  } catch (const UserError& error) {
    EXPECT_EQ(std::string(error.what()),
              "refusing to write checkpoint '" + path + "': " + name + " is not finite");
  }
  EXPECT_EQ(ReadFile(path, "checkpoint"), good);
  // No temporary file left behind either.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);
}

TEST_P(NonFiniteCheckpointTest, IsRefusedOnLoadAndNothingChanges) {
  test_support::TempDir dir;
  const std::string path = dir.File("net.ckpt");
  Net poisoned = TrainedNet(1);
  const std::string name = Poison(poisoned, std::get<0>(GetParam()), std::get<1>(GetParam()));
  WriteUnguardedCheckpoint(path, poisoned);
  Net target = TrainedNet(2);
  const std::vector<at::Tensor> before = Everything(target);
  try {
    LoadCheckpoint(path, *target.net, target.optimizer.get());
    ADD_FAILURE() << "non-finite checkpoint loaded";
  } catch (const UserError& error) {
    EXPECT_EQ(std::string(error.what()),
              "checkpoint '" + path + "' is corrupt: " + name + " is not finite");
  }
  EXPECT_TRUE(AllEqual(Everything(target), before));
}

std::string NonFiniteCaseName(const ::testing::TestParamInfo<std::tuple<Where, float>>& info) {
  const char* where[] = {"parameter", "buffer", "optimizer_state"};
  const float value = std::get<1>(info.param);
  return std::string(where[static_cast<int>(std::get<0>(info.param))]) + (std::isnan(value) ? "_nan"
                                                                          : value > 0
                                                                              ? "_inf"
                                                                              : "_minus_inf");
}

INSTANTIATE_TEST_SUITE_P(NaNAndInf, NonFiniteCheckpointTest,
                         ::testing::Combine(::testing::Values(Where::kParameter, Where::kBuffer,
                                                              Where::kOptimizerState),
                                            ::testing::Values(kNaN, kInf, -kInf)),
                         NonFiniteCaseName);

}  // namespace
}  // namespace cleave
