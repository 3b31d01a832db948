#include "cleave/privacy/activation_noise.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "cleave/core/error.h"
#include "cleave/privacy/reconstruction_attack.h"

namespace cleave::privacy {
namespace {

TEST(ActivationNoiseTest, AddsNoiseOfTheRequestedStandardDeviation) {
  ActivationNoise noise(0.5, 7);
  const at::Tensor activations = at::full({200, 500}, 3.0);
  const at::Tensor noisy = noise.Apply(activations);
  ASSERT_EQ(noisy.sizes(), activations.sizes());
  const at::Tensor added = noisy - activations;
  // 100,000 draws: the sample std is within ~0.2% of sigma, the mean within ~0.005.
  EXPECT_NEAR(added.std().item<double>(), 0.5, 0.005);
  EXPECT_NEAR(added.mean().item<double>(), 0.0, 0.01);
  EXPECT_TRUE(activations.eq(3.0).all().item<bool>());  // the input is left alone
}

TEST(ActivationNoiseTest, SameSeedSameNoiseAndEachCallDrawsAnew) {
  const at::Tensor activations = at::zeros({4, 8, 3, 3});
  ActivationNoise first(1.0, 3), second(1.0, 3), other(1.0, 4);
  const at::Tensor a = first.Apply(activations);
  EXPECT_TRUE(a.equal(second.Apply(activations)));
  EXPECT_FALSE(a.equal(other.Apply(activations)));
  EXPECT_FALSE(a.equal(first.Apply(activations)));  // the next batch gets fresh noise
  // The global generator does not move it: seeded on its own.
  at::manual_seed(99);
  ActivationNoise third(1.0, 3);
  at::randn({10});
  EXPECT_TRUE(a.equal(third.Apply(activations)));
}

TEST(ActivationNoiseTest, ZeroSigmaIsTheIdentity) {
  ActivationNoise noise(0.0, 1);
  EXPECT_FALSE(noise.enabled());
  const at::Tensor activations = at::randn({5, 6});
  const at::Tensor same = noise.Apply(activations);
  EXPECT_TRUE(same.is_same(activations));
}

TEST(ActivationNoiseTest, PassesTheGradientThroughUnchanged) {
  ActivationNoise noise(2.0, 5);
  const at::Tensor weights = at::randn({3, 4}).set_requires_grad(true);
  const at::Tensor upstream = at::randn({3, 4});
  noise.Apply(weights * 2).backward(upstream);
  EXPECT_TRUE(weights.grad().allclose(upstream * 2));
}

TEST(ActivationNoiseTest, RejectsNegativeAndNonFiniteSigma) {
  EXPECT_THROW(ActivationNoise(-0.1, 1), UserError);
  EXPECT_THROW(ActivationNoise(std::numeric_limits<double>::quiet_NaN(), 1), UserError);
  EXPECT_THROW(ActivationNoise(std::numeric_limits<double>::infinity(), 1), UserError);
}

// Smooth images in [0, 1]: random 4x4 patterns upsampled bilinearly.
at::Tensor SmoothImages(int64_t n, int64_t side) {
  const at::Tensor coarse = at::rand({n, 1, 4, 4});
  return at::upsample_bilinear2d(coarse, {side, side}, /*align_corners=*/false);
}

// SSIM of a decoder trained on noisy (input, activation) pairs and scored on noisy activations.
double DecoderSsimUnderNoise(double sigma) {
  at::manual_seed(21);
  const at::Tensor mix = at::randn({8, 4, 1, 1});  // invertible cut: space-to-depth + 1x1 mix
  auto cut = [&](const at::Tensor& x) { return at::conv2d(at::pixel_unshuffle(x, 2), mix); };
  const at::Tensor train_inputs = SmoothImages(512, 12), test_inputs = SmoothImages(128, 12);
  ActivationNoise noise(sigma, 8);
  ReconstructionAttackOptions options;
  options.epochs = 12;
  options.batch_size = 32;
  options.learning_rate = 3e-3;
  options.width = 32;
  options.seed = 3;
  ReconstructionAttack attack({8, 6, 6}, {1, 12, 12}, options);
  attack.Train(noise.Apply(cut(train_inputs)), train_inputs);
  return attack.Evaluate(noise.Apply(cut(test_inputs)), test_inputs).ssim;
}

TEST(ActivationNoiseTest, LargeNoiseDefeatsTheDecoder) {
  // The cut's values have std ~1; sigma 10 buries them. Measured: SSIM 0.97 clean, 0.05 noisy.
  const double clean = DecoderSsimUnderNoise(0.0), noisy = DecoderSsimUnderNoise(10.0);
  EXPECT_GT(clean, 0.8);
  EXPECT_LT(noisy, 0.5 * clean) << "clean " << clean;
}

}  // namespace
}  // namespace cleave::privacy
