#include "cleave/privacy/reconstruction_attack.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cleave/core/error.h"

namespace cleave::privacy {
namespace {

// Smooth images in [0, 1]: random 4x4 patterns upsampled bilinearly.
at::Tensor SmoothImages(int64_t n, int64_t side) {
  const at::Tensor coarse = at::rand({n, 1, 4, 4});
  return at::upsample_bilinear2d(coarse, {side, side}, /*align_corners=*/false);
}

// MSE of predicting every test input by the mean training input: what an attacker gets for free.
double MeanBaselineMse(const at::Tensor& train_inputs, const at::Tensor& test_inputs) {
  return (test_inputs - train_inputs.mean(0, true)).pow(2).mean().item<double>();
}

TEST(ReconstructionAttackTest, ConvolutionalDecoderInvertsAnInvertibleCut) {
  at::manual_seed(11);
  // An invertible "cut layer": 2x2 space-to-depth, then a fixed injective 1x1 channel mix 4 -> 8.
  const at::Tensor mix = at::randn({8, 4, 1, 1});
  auto cut = [&](const at::Tensor& x) { return at::conv2d(at::pixel_unshuffle(x, 2), mix); };
  const at::Tensor train_inputs = SmoothImages(512, 12), test_inputs = SmoothImages(128, 12);

  ReconstructionAttackOptions options;
  options.epochs = 30;
  options.batch_size = 32;
  options.learning_rate = 3e-3;
  options.width = 32;
  options.seed = 3;
  ReconstructionAttack attack({8, 6, 6}, {1, 12, 12}, options);
  EXPECT_EQ(attack.decoder(), DecoderKind::kConvolutional);
  const std::vector<double> losses = attack.Train(cut(train_inputs), train_inputs);
  ASSERT_EQ(losses.size(), 30u);
  EXPECT_LT(losses.back(), 0.5 * losses.front());

  const ReconstructionQuality quality = attack.Evaluate(cut(test_inputs), test_inputs);
  const double baseline = MeanBaselineMse(train_inputs, test_inputs);
  EXPECT_LT(quality.mse, 0.1 * baseline) << "baseline " << baseline;
  EXPECT_GT(quality.psnr, 10 * std::log10(1 / baseline) + 10);
  EXPECT_GT(quality.ssim, 0.8);
  EXPECT_EQ(quality.reconstructions.sizes(), test_inputs.sizes());
  EXPECT_GE(quality.reconstructions.min().item<float>(), 0.0f);  // sigmoid output
  EXPECT_LE(quality.reconstructions.max().item<float>(), 1.0f);
}

TEST(ReconstructionAttackTest, MultiLayerPerceptronDecoderInvertsALinearTabularCut) {
  at::manual_seed(12);
  const at::Tensor mix = at::randn({6, 10});  // injective 6 -> 10
  const at::Tensor train_inputs = at::randn({1024, 6}), test_inputs = at::randn({256, 6});
  ReconstructionAttackOptions options;
  options.epochs = 40;
  options.learning_rate = 3e-3;
  options.inputs_in_unit_interval = false;  // standardised features
  ReconstructionAttack attack({10}, {6}, options);
  EXPECT_EQ(attack.decoder(), DecoderKind::kMultiLayerPerceptron);
  attack.Train(train_inputs.matmul(mix), train_inputs);
  const ReconstructionQuality quality = attack.Evaluate(test_inputs.matmul(mix), test_inputs);
  const double baseline = MeanBaselineMse(train_inputs, test_inputs);
  EXPECT_LT(quality.mse, 0.1 * baseline) << "baseline " << baseline;
  EXPECT_TRUE(std::isnan(quality.ssim));  // not images
}

TEST(ReconstructionAttackTest, LearnsNothingFromActivationsIndependentOfTheInputs) {
  // Control: if activations carry no information the attack should not beat the mean baseline
  // by much (so the tests above measure leakage, not memorisation of the input distribution).
  at::manual_seed(13);
  const at::Tensor train_inputs = SmoothImages(512, 12), test_inputs = SmoothImages(128, 12);
  ReconstructionAttackOptions options;
  options.epochs = 10;
  options.width = 16;
  ReconstructionAttack attack({8, 6, 6}, {1, 12, 12}, options);
  attack.Train(at::randn({512, 8, 6, 6}), train_inputs);
  const ReconstructionQuality quality = attack.Evaluate(at::randn({128, 8, 6, 6}), test_inputs);
  EXPECT_GT(quality.mse, 0.8 * MeanBaselineMse(train_inputs, test_inputs));
}

TEST(ReconstructionAttackTest, MapsTheCnnCutShapes) {
  // CNN cut after block 1: [32, 14, 14] -> [1, 28, 28]; one cheap step checks the shapes.
  ReconstructionAttackOptions options;
  options.epochs = 1;
  options.width = 8;
  ReconstructionAttack conv({32, 14, 14}, {1, 28, 28}, options);
  EXPECT_EQ(conv.decoder(), DecoderKind::kConvolutional);
  const at::Tensor inputs = at::rand({4, 1, 28, 28});
  conv.Train(at::rand({4, 32, 14, 14}), inputs);
  const ReconstructionQuality quality = conv.Evaluate(at::rand({4, 32, 14, 14}), inputs);
  EXPECT_EQ(quality.reconstructions.sizes(), inputs.sizes());
  EXPECT_TRUE(std::isfinite(quality.ssim));
  EXPECT_TRUE(std::isfinite(quality.psnr));

  // Flat activations (or a non-integer scale) go to the MLP decoder.
  EXPECT_EQ(ReconstructionAttack({128}, {1, 28, 28}, options).decoder(),
            DecoderKind::kMultiLayerPerceptron);
  EXPECT_EQ(ReconstructionAttack({8, 5, 5}, {1, 28, 28}, options).decoder(),
            DecoderKind::kMultiLayerPerceptron);
  options.decoder = DecoderKind::kConvolutional;
  EXPECT_THROW(ReconstructionAttack({8, 5, 5}, {1, 28, 28}, options), UserError);
}

TEST(ReconstructionAttackTest, SameSeedSameDecoder) {
  at::manual_seed(14);
  const at::Tensor inputs = at::randn({64, 3}), activations = at::randn({64, 5});
  ReconstructionAttackOptions options;
  options.epochs = 3;
  options.batch_size = 16;
  options.inputs_in_unit_interval = false;
  ReconstructionAttack first({5}, {3}, options), second({5}, {3}, options);
  EXPECT_EQ(first.Train(activations, inputs), second.Train(activations, inputs));
  EXPECT_TRUE(first.Reconstruct(activations).equal(second.Reconstruct(activations)));
}

TEST(ReconstructionAttackTest, RejectsMismatchedBatches) {
  ReconstructionAttackOptions options;
  options.inputs_in_unit_interval = false;
  ReconstructionAttack attack({5}, {3}, options);
  EXPECT_THROW(attack.Train(at::randn({8, 4}), at::randn({8, 3})), UserError);
  EXPECT_THROW(attack.Train(at::randn({8, 5}), at::randn({7, 3})), UserError);
  EXPECT_THROW(attack.Evaluate(at::randn({8, 5}), at::randn({8, 2})), UserError);
  EXPECT_THROW(ReconstructionAttack({0}, {3}), UserError);
  options.batch_size = 0;
  EXPECT_THROW(ReconstructionAttack({5}, {3}, options), UserError);
}

}  // namespace
}  // namespace cleave::privacy
