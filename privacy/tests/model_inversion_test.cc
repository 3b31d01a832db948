#include "cleave/privacy/model_inversion.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>

#include "cleave/core/error.h"
#include "cleave/privacy/image_quality.h"

namespace cleave::privacy {
namespace {

// Dark 16x16 images, each with one bright rectangle at a random place: structure SSIM sees.
at::Tensor Rectangles(int64_t n, uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  at::Tensor images = at::zeros({n, 1, 16, 16});
  const at::Tensor corners = at::randint(0, 9, {n, 2}, generator);
  const at::Tensor sizes = at::randint(4, 8, {n, 2}, generator);
  for (int64_t i = 0; i < n; ++i) {
    images[i][0]
        .narrow(0, corners[i][0].item<int64_t>(), sizes[i][0].item<int64_t>())
        .narrow(1, corners[i][1].item<int64_t>(), sizes[i][1].item<int64_t>())
        .fill_(0.9);
  }
  return images + 0.05;
}

// The attacker knows the layer (a 1x1 convolution), not its weight or bias.
torch::nn::Sequential PointwiseConv(uint64_t seed) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 1, 1)));
}

TEST(ModelInversionTest, RecoversInputsFromIdentityActivations) {
  const at::Tensor x = Rectangles(16, 1);
  const at::Tensor reconstructed = InvertWithoutAuxiliaryData(PointwiseConv, x, {1, 16, 16});
  ASSERT_EQ(reconstructed.sizes(), x.sizes());
  // Measured: 0.94 (up to polarity: the surrogate's weight may come out negative); a flat image
  // scores ~0.
  EXPECT_GT(SsimUpToPolarity(x, reconstructed), 0.6);
  EXPECT_LT(Ssim(x, at::full_like(x, x.mean().item<double>())), 0.1);
}

TEST(ModelInversionTest, LearnsNothingFromActivationsUnrelatedToTheInputs) {
  const at::Tensor x = Rectangles(16, 1);
  at::Generator generator = at::detail::createCPUGenerator(5);
  const at::Tensor noise = at::rand(x.sizes(), generator);
  const at::Tensor reconstructed = InvertWithoutAuxiliaryData(PointwiseConv, noise, {1, 16, 16});
  EXPECT_LT(SsimUpToPolarity(x, reconstructed), 0.2);  // measured 0.04
}

TEST(ModelInversionTest, ThroughAConvolutionAndReluTheShapeStillShows) {
  // A 3x3 convolution with 4 channels and a ReLU, weights unknown to the attacker.
  const auto bottom = [](uint64_t seed) {
    torch::manual_seed(seed);
    return torch::nn::Sequential(
        torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)), torch::nn::ReLU());
  };
  const at::Tensor x = Rectangles(16, 2);
  at::Tensor activations;
  {
    at::NoGradGuard no_grad;
    activations = bottom(123)->forward(x);
  }
  const at::Tensor reconstructed = InvertWithoutAuxiliaryData(bottom, activations, {1, 16, 16});
  const at::Tensor unrelated = InvertWithoutAuxiliaryData(
      bottom, at::rand(activations.sizes(), at::detail::createCPUGenerator(9)), {1, 16, 16});
  // Measured: 0.19 against 0.02 for activations unrelated to the inputs (0.21 after 100 rounds):
  // through unknown weights much less comes back than from identity activations, but not nothing.
  EXPECT_GT(SsimUpToPolarity(x, reconstructed), SsimUpToPolarity(x, unrelated) + 0.1);
}

TEST(ModelInversionTest, RefusesASurrogateOfTheWrongShapeAndBadOptions) {
  const at::Tensor x = Rectangles(4, 1);
  EXPECT_THROW(InvertWithoutAuxiliaryData(PointwiseConv, x, {1, 8, 8}), UserError);
  InversionOptions options;
  options.rounds = 0;
  EXPECT_THROW(InvertWithoutAuxiliaryData(PointwiseConv, x, {1, 16, 16}, options), UserError);
}

}  // namespace
}  // namespace cleave::privacy
