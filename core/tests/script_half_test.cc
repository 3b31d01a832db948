// TorchScript halves built here with torch::jit::Module::define (the same IR torch.jit.script
// writes; tools/export/export_test.sh covers modules exported from Python).
#include "cleave/core/script_half.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/adam.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/utils.h>

#include <string>

#include "cleave/core/checkpoint.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/split_model.h"
#include "cleave/test_support/script_halves.h"
#include "cleave/test_support/temp_dir.h"

namespace cleave {
namespace {

// A bottom 3 -> 4: linear, ReLU, dropout following `training` (as scripted), or with the mode
// fixed as a constant (as torch.jit.trace records it).
torch::jit::Module Bottom(bool traced_dropout = false, int64_t width = 4) {
  torch::jit::Module module("__torch__.TestBottom");
  module.register_attribute("training", c10::BoolType::get(), true);
  module.register_parameter("weight", at::randn({width, 3}).requires_grad_(), false);
  module.register_parameter("bias", at::zeros({width}).requires_grad_(), false);
  module.define(std::string("def forward(self, x):\n") +
                "    y = torch.relu(torch.linear(x, self.weight, self.bias))\n" +
                "    return torch.dropout(y, 0.5, " + (traced_dropout ? "False" : "self.training") +
                ")\n");
  return module;
}

torch::jit::Module Top(bool with_parameters = true) {
  torch::jit::Module module("__torch__.TestTop");
  module.register_attribute("training", c10::BoolType::get(), true);
  if (with_parameters) {
    module.register_parameter("weight", at::randn({2, 4}).requires_grad_(), false);
    module.define("def forward(self, x):\n    return torch.linear(x, self.weight)\n");
  } else {
    module.define("def forward(self, x):\n    return x[:, 0:2]\n");
  }
  return module;
}

ScriptMeta Meta(const std::string& half, const std::string& split_id = "split-a") {
  return {half, {3}, {4}, 2, split_id};
}

std::string Save(const test_support::TempDir& dir, const std::string& name,
                 const torch::jit::Module& module, const ScriptMeta& meta) {
  const std::string path = dir.File(name);
  module.save(path, {{kScriptMetaFile, ScriptMetaToJson(meta)}});
  return path;
}

std::string RefusalOf(const std::string& path, const std::string& half) {
  try {
    LoadScriptHalf(path, half);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(ScriptHalfTest, MetadataMakesTheSpecAndFingerprint) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  const std::string bottom = Save(dir, "bottom.pt", Bottom(), Meta("bottom"));
  const std::string top = Save(dir, "top.pt", Top(), Meta("top"));
  const ScriptMeta meta = ReadScriptMeta(bottom);
  EXPECT_EQ(meta.half, "bottom");
  EXPECT_EQ(meta.input_shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(meta.cut_shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(meta.num_classes, 2);
  EXPECT_EQ(meta.split_id, "split-a");

  const ModelSpec client = TorchScriptSpec(bottom, "");
  const ModelSpec server = TorchScriptSpec("", top);
  EXPECT_EQ(client.input_shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(client.num_classes, 2);
  EXPECT_EQ(ModelFingerprint(client), ModelFingerprint(server));
  EXPECT_EQ(ModelFingerprint(TorchScriptSpec(bottom, top)), ModelFingerprint(server));
  EXPECT_NE(ModelFingerprint(client), ModelFingerprint(ModelSpec{}));

  // Halves of another export: another fingerprint (refused at Join), and refused together.
  const std::string other = Save(dir, "other.pt", Top(), Meta("top", "split-b"));
  EXPECT_NE(ModelFingerprint(client), ModelFingerprint(TorchScriptSpec("", other)));
  EXPECT_THROW(TorchScriptSpec(bottom, other), UserError);
  EXPECT_THROW(TorchScriptSpec(top, ""), UserError);  // a top given as the bottom
}

// A U-shaped export: three parts whose metadata name the middle shape; the spec, the parts
// loaded where they belong, one fingerprint on both ends, and the mix-ups refused.
TEST(ScriptHalfTest, UShapedExportHasThreeParts) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  const test_support::ScriptHalfPaths parts =
      test_support::WriteUShapedScriptParts(dir.path(), "u", "split-u", 8, 3);
  const ScriptMeta meta = ReadScriptMeta(parts.tail);
  EXPECT_EQ(meta.half, "tail");
  EXPECT_EQ(meta.middle_shape, (std::vector<int64_t>{8}));
  EXPECT_EQ(meta.tail_layers, 1);
  const ModelSpec client = TorchScriptSpec(parts.bottom, "", parts.tail);
  const ModelSpec server = TorchScriptSpec("", parts.top);
  EXPECT_EQ(client.tail_layers, 1);
  EXPECT_EQ(server.middle_shape, (std::vector<int64_t>{8}));
  EXPECT_EQ(ModelFingerprint(client), ModelFingerprint(server));
  EXPECT_NE(DescribeSpec(server).find("u-shaped tail=1 middle_shape=8"), std::string::npos)
      << DescribeSpec(server);

  SplitModel model = BuildSplitModel(TorchScriptSpec(parts.bottom, parts.top, parts.tail), 1);
  ASSERT_TRUE(model.tail);
  EXPECT_EQ(model.middle_shape, (std::vector<int64_t>{8}));
  model.bottom->eval();
  const at::Tensor logits =
      model.tail->forward(model.top->forward(model.bottom->forward(at::randn({5, 8}))));
  EXPECT_EQ(logits.sizes().vec(), (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(FlattenClientParameters(model).numel(), (8 * 4 + 4) + (8 * 3 + 3));

  // A vanilla export's top is not a middle; a tail of another export; a tail as the bottom.
  const auto vanilla = test_support::WriteScriptHalves(dir.path(), "v", "split-u", 8, 3);
  EXPECT_THROW(TorchScriptSpec(parts.bottom, vanilla.top, parts.tail), UserError);
  const auto other = test_support::WriteUShapedScriptParts(dir.path(), "o", "split-o", 8, 3);
  EXPECT_THROW(TorchScriptSpec(parts.bottom, "", other.tail), UserError);
  EXPECT_THROW(TorchScriptSpec(parts.tail, "", ""), UserError);
  // A tail whose metadata lacks the middle shape.
  torch::jit::Module tail = torch::jit::load(parts.tail);
  tail.save(dir.File("bare_tail.pt"),
            {{kScriptMetaFile, ScriptMetaToJson({"tail", {8}, {4}, 3, "split-u"})}});
  EXPECT_NE(RefusalOf(dir.File("bare_tail.pt"), "tail").find("'middle_shape'"), std::string::npos)
      << RefusalOf(dir.File("bare_tail.pt"), "tail");
}

TEST(ScriptHalfTest, BadFilesAreRefusedWithOneLine) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  EXPECT_NE(RefusalOf(dir.File("missing.pt"), "bottom").find("does not exist"), std::string::npos);
  WriteFileAtomic(dir.File("junk.pt"), "not a zip archive");
  EXPECT_NE(RefusalOf(dir.File("junk.pt"), "bottom").find("not a TorchScript file"),
            std::string::npos);
  const std::string bare = dir.File("bare.pt");
  Bottom().save(bare);
  EXPECT_NE(RefusalOf(bare, "bottom").find("no cleave metadata"), std::string::npos);
  const std::string bad = dir.File("bad.pt");
  Bottom().save(bad, {{kScriptMetaFile, R"({"half":"bottom","input_shape":[3,0]})"}});
  EXPECT_NE(RefusalOf(bad, "bottom").find("input_shape"), std::string::npos)
      << RefusalOf(bad, "bottom");
  const std::string bottom = Save(dir, "bottom.pt", Bottom(), Meta("bottom"));
  EXPECT_NE(RefusalOf(bottom, "top").find("is the bottom half"), std::string::npos);
  for (const std::string& line : {RefusalOf(bare, "bottom"), RefusalOf(bottom, "top")}) {
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  }
}

TEST(ScriptHalfTest, TracedDropoutFrozenAndShapeMismatchAreRefused) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  EXPECT_NE(RefusalOf(Save(dir, "traced.pt", Bottom(true), Meta("bottom")), "bottom")
                .find("traced (torch.jit.trace)"),
            std::string::npos);
  EXPECT_NE(RefusalOf(Save(dir, "frozen.pt", Top(false), Meta("top")), "top").find("no parameters"),
            std::string::npos);
  // The module gives 5 values at the cut; its metadata says 4.
  const std::string wide = Save(dir, "wide.pt", Bottom(false, 5), Meta("bottom"));
  EXPECT_NE(RefusalOf(wide, "bottom").find("maps 1x3 to 1x5, but its metadata says 1x4"),
            std::string::npos)
      << RefusalOf(wide, "bottom");
  // The top does not take the metadata's cut shape.
  ScriptMeta top_meta = Meta("top");
  top_meta.cut_shape = {7};
  const std::string top = Save(dir, "top.pt", Top(), top_meta);
  EXPECT_NE(RefusalOf(top, "top").find("fails on an input of shape 1x7"), std::string::npos)
      << RefusalOf(top, "top");
  EXPECT_EQ(RefusalOf(top, "top").find('\n'), std::string::npos);
}

TEST(ScriptHalfTest, TrainsSharesWeightsAndFollowsTrainEval) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  torch::manual_seed(5);
  const std::string path = Save(dir, "bottom.pt", Bottom(), Meta("bottom"));
  SplitModel model = BuildSplitModel(TorchScriptSpec(path, ""), 1);
  ASSERT_TRUE(model.bottom);
  EXPECT_FALSE(model.top);
  EXPECT_EQ(model.cut_shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(model.bottom->parameters().size(), 2u);
  EXPECT_TRUE(model.bottom->is_training());

  const at::Tensor x = at::randn({64, 3});
  model.bottom->eval();
  EXPECT_TRUE(model.bottom->forward(x).equal(model.bottom->forward(x)));  // no dropout
  model.bottom->train();
  const at::Tensor dropped = model.bottom->forward(x);
  EXPECT_FALSE(dropped.equal(model.bottom->forward(x)));  // dropout draws new masks

  // Parameters into the optimizer: loss falls, and the script module's weights are the ones
  // that changed (it is what SaveScriptHalf writes).
  model.bottom->eval();
  const at::Tensor target = at::ones({64, 4});
  torch::optim::Adam adam(model.bottom->parameters(), torch::optim::AdamOptions(0.05));
  auto loss = [&] { return (model.bottom->forward(x) - target).pow(2).mean(); };
  const double first = loss().item<double>();
  for (int step = 0; step < 100; ++step) {
    adam.zero_grad();
    loss().backward();
    adam.step();
  }
  EXPECT_LT(loss().item<double>(), 0.5 * first);

  const std::string saved = dir.File("trained.pt");
  const ScriptHalfImpl* half = model.bottom[0]->as<ScriptHalfImpl>();
  ASSERT_NE(half, nullptr);
  SaveScriptHalf(*half, saved);
  EXPECT_EQ(ReadScriptMeta(saved).split_id, "split-a");
  ScriptHalf reloaded = LoadScriptHalf(saved, "bottom");
  reloaded->eval();
  EXPECT_TRUE(reloaded->forward(x).equal(model.bottom->forward(x)));
}

TEST(ScriptHalfTest, CheckpointsHoldWeightsAndOptimizerState) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  const std::string path = Save(dir, "top.pt", Top(), Meta("top"));
  const ModelSpec spec = TorchScriptSpec("", path);
  SplitModel trained = BuildSplitModel(spec, 1);
  torch::optim::Adam adam(trained.top->parameters(), torch::optim::AdamOptions(0.1));
  const at::Tensor x = at::randn({16, 4});
  const at::Tensor y = at::randint(0, 2, {16}, at::kLong);
  adam.zero_grad();
  torch::nn::functional::cross_entropy(trained.top->forward(x), y).backward();
  adam.step();
  SaveCheckpoint(dir.File("top.ckpt"), *trained.top, &adam, {ModelFingerprint(spec), {}});

  SplitModel loaded = BuildSplitModel(spec, 1);  // the exported (untrained) weights
  EXPECT_FALSE(loaded.top->forward(x).equal(trained.top->forward(x)));
  torch::optim::Adam loaded_adam(loaded.top->parameters(), torch::optim::AdamOptions(0.1));
  LoadCheckpoint(dir.File("top.ckpt"), *loaded.top, &loaded_adam, ModelFingerprint(spec));
  EXPECT_TRUE(loaded.top->forward(x).equal(trained.top->forward(x)));
  // The script module itself holds the restored weights.
  torch::jit::Module script = loaded.top[0]->as<ScriptHalfImpl>()->script();  // a handle
  const at::Tensor scripted = script.forward({x}).toTensor();
  EXPECT_TRUE(scripted.equal(trained.top->forward(x)));
}

TEST(ScriptHalfTest, NonFiniteWeightsAreNotWritten) {
  if (!ScriptHalvesAvailable()) GTEST_SKIP() << "built without nlohmann-json";
  test_support::TempDir dir;
  ScriptHalf half = LoadScriptHalf(Save(dir, "top.pt", Top(), Meta("top")), "top");
  {
    at::NoGradGuard no_grad;
    half->parameters()[0].fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_THROW(SaveScriptHalf(*half, dir.File("nan.pt")), UserError);
  EXPECT_FALSE(FileExists(dir.File("nan.pt")));
}

}  // namespace
}  // namespace cleave
