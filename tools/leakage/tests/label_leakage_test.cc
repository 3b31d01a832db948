// cleave_leakage's label leakage: the configurations' gradients leak labels on a small task, the
// defence costs the attacker, and bad options are refused before training.
#include "cleave/leakage/label_leakage.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cleave/core/error.h"
#include "cleave/test_support/tiny_data.h"
#include "small_label_options.h"

namespace cleave::leakage {
namespace {

using test::SmallOptions;

TEST(LabelLeakageTest, UndefendedGradientsGiveTheLabelsAway) {
  const Dataset train = test_support::FirstFeatureData(800, 1);
  const Dataset test = test_support::FirstFeatureData(400, 2);
  const std::vector<LabelLeakageRow> rows = MeasureLabelLeakage(train, test, SmallOptions());
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_TRUE(rows[0].holds_labels);
  EXPECT_EQ(rows[0].configuration, "vanilla");
  for (const LabelLeakageRow& row : rows) {
    EXPECT_EQ(row.defence, "none");
    EXPECT_GT(row.test_accuracy, 0.8) << row.configuration;  // the task is learnt
  }
  EXPECT_FALSE(rows[1].holds_labels);
  EXPECT_EQ(rows[1].observed_batches, 60);
  EXPECT_GT(rows[1].cosine_auc, 0.9);  // the passive party's cut gradient
  // A one-layer tail: dL/da2 = W^T (p - onehot(y)) points one of two ways, by label.
  EXPECT_EQ(rows[2].configuration, "u-shaped");
  EXPECT_GT(rows[2].cosine_auc, 0.99);
  const std::string table = LabelLeakageMarkdown(rows);
  EXPECT_NE(table.find("| u-shaped |"), std::string::npos);
  EXPECT_NE(table.find("1 (has the labels)"), std::string::npos);
}

TEST(LabelLeakageTest, NoiseDefenceLowersTheAttackAndRowsNameIt) {
  const Dataset train = test_support::FirstFeatureData(800, 1);
  const Dataset test = test_support::FirstFeatureData(400, 2);
  LabelLeakageOptions options = SmallOptions();
  options.defence = {privacy::GradientDefenceKind::kNoise, 20.0};
  const std::vector<LabelLeakageRow> rows = MeasureLabelLeakage(train, test, options);
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_EQ(rows[4].defence, "noise 20");
  EXPECT_LT(rows[4].cosine_auc, rows[1].cosine_auc - 0.2);
  EXPECT_LT(rows[5].cosine_auc, rows[2].cosine_auc - 0.2);
}

TEST(LabelLeakageTest, OneVsRestAndBadOptions) {
  Dataset data;
  data.inputs = at::zeros({4, 2});
  data.labels = at::tensor({0, 3, 3, 1}, at::kLong);
  data.num_classes = 4;
  const Dataset binary = OneVsRest(data, 3);
  EXPECT_EQ(binary.num_classes, 2);
  EXPECT_TRUE(at::equal(binary.labels, at::tensor({0, 1, 1, 0}, at::kLong)));
  EXPECT_THROW(OneVsRest(data, 4), UserError);
  LabelLeakageOptions options = SmallOptions();
  options.tail_cut = 1;  // not above the cut
  EXPECT_THROW(CheckLabelLeakageOptions(options), UserError);
  options = SmallOptions();
  options.steps = 0;
  EXPECT_THROW(CheckLabelLeakageOptions(options), UserError);
  options = SmallOptions();
  options.defence = {privacy::GradientDefenceKind::kClip, -1};
  EXPECT_THROW(CheckLabelLeakageOptions(options), UserError);
}

}  // namespace
}  // namespace cleave::leakage
