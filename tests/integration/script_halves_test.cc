// TorchScript halves (cleave-client --bottom, cleave-server --top) trained by the real client and
// server over each link: the loss falls and accuracy rises well above chance, and the bottom
// written back as TorchScript, loaded by a new client, evaluates exactly as the trained one did.
#include "cleave/test_support/script_halves.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/core/script_half.h"
#include "cleave/core/split_config.h"
#include "cleave/core/split_model.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using test_support::LinkKind;

class ScriptHalvesTest : public ::testing::TestWithParam<LinkKind> {};

client::TrainerOptions ClientOptions(const std::string& bottom) {
  client::TrainerOptions options;
  options.model = TorchScriptSpec(bottom, "");
  options.batch_size = 32;
  options.learning_rate = 1e-2;
  return options;
}

TEST_P(ScriptHalvesTest, TrainWriteBackAndReload) {
  test_support::TempDir dir;
  const auto halves = test_support::WriteScriptHalves(dir.path(), "a", "split-a", 8, 3);
  server::SplitServerOptions server_options;
  server_options.model = TorchScriptSpec("", halves.top);
  server_options.learning_rate = 1e-2;
  const test_support::TestServer server(server_options, GetParam());
  const std::unique_ptr<protocol::SplitLink> link = server.Link("st-mary");
  const Dataset train = test_support::LinearRuleData(3000, 1, 8, 3),
                test = test_support::LinearRuleData(600, 2, 8, 3);

  client::SplitTrainer trainer(ClientOptions(halves.bottom), *link);
  trainer.Join(train.size());
  const client::EvalStats before = trainer.Evaluate(test);
  for (int epoch = 0; epoch < 4; ++epoch) trainer.TrainEpoch(train, epoch, 4, nullptr);
  const client::EvalStats after = trainer.Evaluate(test);
  RecordProperty("accuracy_before", std::to_string(before.accuracy));
  RecordProperty("accuracy_after", std::to_string(after.accuracy));
  RecordProperty("loss_before_after",
                 std::to_string(before.loss) + " " + std::to_string(after.loss));
  // Measured (both links, seed-fixed data and weights): accuracy 24.2% -> 96.3%, loss 1.44 -> 0.12.
  EXPECT_LT(after.loss, 0.3 * before.loss);
  EXPECT_GT(after.accuracy, 0.9) << "before training: " << before.accuracy;
  const std::string saved = dir.File("trained_bottom.pt");
  SaveScriptHalf(*FindScriptHalf(*trainer.model().bottom), saved);
  trainer.Leave();

  client::SplitTrainer reloaded(ClientOptions(saved), *link);
  EXPECT_EQ(reloaded.fingerprint(), trainer.fingerprint());
  reloaded.Join(train.size());
  const client::EvalStats again = reloaded.Evaluate(test);
  EXPECT_EQ(again.loss, after.loss);
  EXPECT_EQ(again.accuracy, after.accuracy);
  reloaded.Leave();
}

// U-shaped with a TorchScript export of three parts: the hospital runs bottom.pt and tail.pt
// (and keeps its labels), the server runs the middle from top.pt; the loss falls, and the tail
// written back as TorchScript holds the trained weights.
TEST_P(ScriptHalvesTest, UShapedThreePartsTrain) {
  test_support::TempDir dir;
  const auto parts = test_support::WriteUShapedScriptParts(dir.path(), "u", "split-u", 8, 3);
  server::SplitServerOptions server_options;
  server_options.model = TorchScriptSpec("", parts.top);
  server_options.config = SplitConfig::kUShaped;
  server_options.learning_rate = 1e-2;
  const test_support::TestServer server(server_options, GetParam());
  const std::unique_ptr<protocol::SplitLink> link = server.Link("st-mary");
  const Dataset train = test_support::LinearRuleData(3000, 1, 8, 3),
                test = test_support::LinearRuleData(600, 2, 8, 3);

  client::TrainerOptions options;
  options.model = TorchScriptSpec(parts.bottom, "", parts.tail);
  options.config = SplitConfig::kUShaped;
  options.batch_size = 32;
  options.learning_rate = 1e-2;
  client::SplitTrainer trainer(options, *link);
  trainer.Join(train.size());
  const client::EvalStats before = trainer.Evaluate(test);
  for (int epoch = 0; epoch < 4; ++epoch) trainer.TrainEpoch(train, epoch, 4, nullptr);
  const client::EvalStats after = trainer.Evaluate(test);
  RecordProperty("loss_before_after",
                 std::to_string(before.loss) + " " + std::to_string(after.loss));
  RecordProperty("accuracy_after", std::to_string(after.accuracy));
  // Measured (both links, seed-fixed data and weights): loss 0.995 -> 0.083, accuracy 96.5%.
  EXPECT_LT(after.loss, 0.5 * before.loss);
  EXPECT_GT(after.accuracy, 0.85) << "before training: " << before.accuracy;
  EXPECT_GT(trainer.counters().u_shaped.middle_gradient_up.messages, 0);
  const std::string saved = dir.File("trained_tail.pt");
  SaveScriptHalf(*FindScriptHalf(*trainer.model().tail), saved);
  EXPECT_EQ(ReadScriptMeta(saved).middle_shape, (std::vector<int64_t>{8}));
  EXPECT_TRUE(at::equal(LoadScriptHalf(saved, "tail")->parameters()[0],
                        trainer.model().tail->parameters()[0]));
  trainer.Leave();
}

INSTANTIATE_TEST_SUITE_P(Links, ScriptHalvesTest,
                         ::testing::Values(LinkKind::kGrpc, LinkKind::kInProcess),
                         [](const auto& info) { return test_support::LinkName(info.param); });

}  // namespace
}  // namespace cleave
