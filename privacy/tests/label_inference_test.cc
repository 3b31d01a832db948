#include "cleave/privacy/label_inference.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "cleave/core/error.h"
#include "cleave/privacy/gradient_defence.h"
#include "cleave/privacy/roc_auc.h"

namespace cleave::privacy {
namespace {

// The definition: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 on a
// tie.
double PairwiseAuc(const at::Tensor& scores, const at::Tensor& positives) {
  double wins = 0, pairs = 0;
  for (int64_t i = 0; i < scores.size(0); ++i) {
    if (!positives[i].item<bool>()) continue;
    for (int64_t j = 0; j < scores.size(0); ++j) {
      if (positives[j].item<bool>()) continue;
      const double a = scores[i].item<double>(), b = scores[j].item<double>();
      wins += a > b ? 1.0 : (a == b ? 0.5 : 0.0);
      pairs += 1;
    }
  }
  return wins / pairs;
}

TEST(RocAuc, PerfectReversedAndTied) {
  const at::Tensor positives = at::tensor({0, 0, 1, 1}).to(at::kBool);
  EXPECT_DOUBLE_EQ(RocAuc(at::tensor({0.1, 0.2, 0.3, 0.4}), positives), 1.0);
  EXPECT_DOUBLE_EQ(RocAuc(at::tensor({0.4, 0.3, 0.2, 0.1}), positives), 0.0);
  EXPECT_DOUBLE_EQ(RocAuc(at::tensor({1.0, 1.0, 1.0, 1.0}), positives), 0.5);
  // Positives ranked 2.5 (tied with a negative) and 4: (0.5 + 1 + 1 + 1) / 4.
  EXPECT_DOUBLE_EQ(RocAuc(at::tensor({1.0, 2.0, 2.0, 3.0}), at::tensor({0, 1, 0, 1})), 0.875);
}

TEST(RocAuc, MatchesThePairwiseDefinitionWithManyTies) {
  at::manual_seed(3);
  for (int trial = 0; trial < 5; ++trial) {
    const at::Tensor scores = at::randint(0, 6, {80}, at::kDouble);  // many ties
    at::Tensor positives = at::rand({80}) < 0.3;
    positives[0] = true;
    positives[1] = false;
    EXPECT_NEAR(RocAuc(scores, positives), PairwiseAuc(scores, positives), 1e-12);
  }
}

TEST(RocAuc, RefusesBadInput) {
  EXPECT_THROW(RocAuc(at::ones({3}), at::ones({3}).to(at::kBool)), InvalidInput);
  EXPECT_THROW(RocAuc(at::ones({3}), at::zeros({2}).to(at::kBool)), InvalidInput);
  EXPECT_THROW(RocAuc(at::tensor({1.0, NAN}), at::tensor({0, 1})), InvalidInput);
}

TEST(GradientScores, NormAndCosine) {
  const at::Tensor g = at::tensor({3.0, 4.0, 0.0, 0.0, -1.0, 0.0}).reshape({3, 2});
  EXPECT_TRUE(at::allclose(GradientNormScores(g), at::tensor({5.0, 0.0, 1.0}, at::kDouble)));
  const at::Tensor cos = GradientCosineScores(g, at::tensor({1.0, 0.0}));
  EXPECT_TRUE(at::allclose(cos, at::tensor({0.6, 0.0, -1.0}, at::kDouble)));
  EXPECT_THROW(GradientCosineScores(g, at::ones({3})), InvalidInput);
}

// Cut-layer gradients of a linear top under cross-entropy: W^T (softmax(logits) - onehot(y)),
// with logits that know the label a little and lean towards class 0, the majority (a model
// part-way through training on a skewed task). The gradient's direction gives the class away, and
// so does its size: the minority's samples are fitted worse.
at::Tensor LeakingGradients(const at::Tensor& labels, int64_t classes, const at::Tensor& w) {
  const at::Tensor onehot = at::one_hot(labels, classes).to(at::kFloat);
  const at::Tensor majority = at::one_hot(at::zeros_like(labels), classes).to(at::kFloat);
  const at::Tensor logits =
      1.0 * onehot + 2.0 * majority + 0.5 * at::randn({labels.size(0), classes});
  return (at::softmax(logits, 1) - onehot).matmul(w);
}

LabelInferenceReport Attack(int64_t classes, double positive_share, bool shuffle) {
  at::manual_seed(11);
  const at::Tensor w = at::randn({classes, 32});
  LabelInference inference(classes);
  for (int batch = 0; batch < 40; ++batch) {
    const at::Tensor labels =
        classes == 2 ? (at::rand({64}) < positive_share).to(at::kLong)
                     : at::randint(0, classes, {64}, at::kLong);
    const at::Tensor g = LeakingGradients(labels, classes, w);
    inference.Observe(g, shuffle ? labels.index({at::randperm(64)}) : labels);
  }
  return inference.Report();
}

TEST(LabelInference, ObviouslyLeakingGradientsScoreNearOne) {
  const LabelInferenceReport binary = Attack(2, 0.1, false);
  EXPECT_GT(binary.norm_auc, 0.9);
  EXPECT_GT(binary.cosine_auc, 0.95);
  EXPECT_EQ(binary.batches, 40);
  EXPECT_EQ(binary.samples, 40 * 64);
  EXPECT_GT(Attack(10, 0, false).cosine_auc, 0.9);
}

TEST(LabelInference, ShuffledLabelsScoreNearHalf) {
  const LabelInferenceReport binary = Attack(2, 0.1, true);
  EXPECT_NEAR(binary.norm_auc, 0.5, 0.05);
  EXPECT_NEAR(binary.cosine_auc, 0.5, 0.05);
  const LabelInferenceReport multi = Attack(10, 0, true);
  EXPECT_NEAR(multi.norm_auc, 0.5, 0.05);
  EXPECT_NEAR(multi.cosine_auc, 0.5, 0.05);
}

TEST(LabelInference, NothingScorableIsHalfAndBadInputThrows) {
  LabelInference inference(2);
  inference.Observe(at::randn({4, 3}), at::zeros({4}, at::kLong));  // one class only
  EXPECT_DOUBLE_EQ(inference.Report().norm_auc, 0.5);
  EXPECT_DOUBLE_EQ(inference.Report().cosine_auc, 0.5);
  EXPECT_THROW(inference.Observe(at::randn({4, 3}), at::full({4}, 2, at::kLong)), InvalidInput);
  EXPECT_THROW(inference.Observe(at::randn({4, 3}), at::zeros({3}, at::kLong)), InvalidInput);
  EXPECT_THROW(inference.Observe(at::full({2, 2}, NAN), at::zeros({2}, at::kLong)), InvalidInput);
  EXPECT_THROW(LabelInference(1), InvalidInput);
}

TEST(GradientDefence, ClipEqualisesNormsAndDefeatsTheNormAttack) {
  at::manual_seed(5);
  const at::Tensor labels = (at::rand({64}) < 0.2).to(at::kLong);
  labels[0] = 1;
  const at::Tensor g = LeakingGradients(labels, 2, at::randn({2, 16}));
  // A bound below the smallest norm clips every sample to the same norm.
  const at::Tensor before = GradientNormScores(g);
  const double strength = 0.5 * (before.min() / before.median()).item<double>();
  const at::Tensor clipped = ApplyGradientDefence(g, {GradientDefenceKind::kClip, strength}, 1);
  const at::Tensor norms = GradientNormScores(clipped);
  EXPECT_LT((norms.max() - norms.min()).item<double>(), 1e-6 * norms.max().item<double>());
  // Equal up to rounding: at 5 significant digits they tie, and ties tell the attacker nothing.
  const at::Tensor rounded = (norms / norms.max() * 1e5).round();
  EXPECT_DOUBLE_EQ(RocAuc(rounded, labels), 0.5);
  EXPECT_GT(RocAuc(before, labels), 0.8);  // before clipping, the norm leaks
  // Directions are kept: clipping only scales rows.
  EXPECT_TRUE(at::allclose(GradientCosineScores(clipped, g[0]), GradientCosineScores(g, g[0]),
                           1e-4, 1e-5));
  EXPECT_TRUE(at::equal(ApplyGradientDefence(g, {}, 1), g));
}

TEST(GradientDefence, NoiseIsSeededAndSizedToTheMedianNorm) {
  at::manual_seed(6);
  const at::Tensor g = at::randn({256, 400});
  const GradientDefence noise{GradientDefenceKind::kNoise, 2.0};
  const at::Tensor a = ApplyGradientDefence(g, noise, 7), b = ApplyGradientDefence(g, noise, 7);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, ApplyGradientDefence(g, noise, 8)));
  const double noise_norm = GradientNormScores(a - g).mean().item<double>();
  const double median = GradientNormScores(g).median().item<double>();
  EXPECT_NEAR(noise_norm / median, 2.0, 0.1);
  EXPECT_THROW(ApplyGradientDefence(g, {GradientDefenceKind::kNoise, 0.0}, 1), InvalidInput);
  EXPECT_THROW(ParseGradientDefenceKind("dp"), UserError);
  EXPECT_EQ(ParseGradientDefenceKind("clip"), GradientDefenceKind::kClip);
}

}  // namespace
}  // namespace cleave::privacy
