// Label leakage on real runs (SplitServer + InProcessLink + SplitTrainer): the gradients the
// U-shaped server and a vertical passive party receive while a small model learns give the
// labels away; strong noise on them leaves the attacks near chance; the wire recorder refuses
// what it cannot read.
#include "cleave/leakage/recorded_label_leakage.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "cleave/core/error.h"
#include "cleave/leakage/wire_recorder.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/test_support/tiny_data.h"
#include "small_label_options.h"

namespace cleave::leakage {
namespace {

using test::SmallOptions;

TEST(RecordedLabelLeakageTest, RealRunsGiveTheLabelsAwayAndStrongNoiseHidesThem) {
  const Dataset train = test_support::FirstFeatureData(800, 1);
  const Dataset test = test_support::FirstFeatureData(400, 2);
  LabelLeakageOptions options = SmallOptions();
  options.defence = {privacy::GradientDefenceKind::kNoise, 1000.0};
  const std::vector<LabelLeakageRow> rows = MeasureRecordedLabelLeakage(train, test, options);
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0].configuration, "vanilla");
  EXPECT_TRUE(rows[0].holds_labels);
  EXPECT_EQ(rows[0].observer, "server (labels in 60 of 60 Train requests)");  // 3 epochs of 20
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT(rows[i].test_accuracy, 0.8) << rows[i].configuration;  // the task is learnt
  }
  const LabelLeakageRow& u_shaped = rows[1];
  const LabelLeakageRow& passive = rows[2];
  EXPECT_EQ(u_shaped.configuration, "u-shaped");
  EXPECT_EQ(u_shaped.observed_batches, 60);
  EXPECT_EQ(passive.observed_batches, 60);
  std::printf("[ labels ] u-shaped norm %.3f cosine %.3f, passive norm %.3f cosine %.3f; "
              "noise 1000: %.3f %.3f, %.3f %.3f\n",
              u_shaped.norm_auc, u_shaped.cosine_auc, passive.norm_auc, passive.cosine_auc,
              rows[3].norm_auc, rows[3].cosine_auc, rows[4].norm_auc, rows[4].cosine_auc);
  // A one-layer tail: dL/da2 = W^T (p - onehot(y)) points one of two ways, by label.
  EXPECT_GT(u_shaped.cosine_auc, 0.95);
  EXPECT_GT(passive.cosine_auc, 0.8);
  for (size_t i = 3; i < 5; ++i) {
    EXPECT_EQ(rows[i].defence, "noise 1000");
    EXPECT_LT(std::abs(rows[i].cosine_auc - 0.5), 0.1) << rows[i].configuration;
    EXPECT_LT(rows[i].norm_auc, 0.62) << rows[i].configuration;  // oriented: >= 0.5
  }
}

TEST(RecordedLabelLeakageTest, DenseMessagesOnly) {
  v1::Tensor dense;
  protocol::EncodeDense(at::arange(6, at::kFloat).reshape({2, 3}), &dense);
  EXPECT_TRUE(at::equal(DecodeDenseMessage(dense), at::arange(6, at::kFloat).reshape({2, 3})));
  v1::Tensor sparse;
  protocol::EncodeSparse(at::ones({2, 3}), {0, 4}, ValuePrecision::kFp32, &sparse);
  EXPECT_THROW(DecodeDenseMessage(sparse), Error);
  EXPECT_THROW(DecodeDenseMessage(v1::Tensor()), Error);
}

}  // namespace
}  // namespace cleave::leakage
