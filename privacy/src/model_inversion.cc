#include "cleave/privacy/model_inversion.h"

#include <ATen/ATen.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <memory>

#include "cleave/core/error.h"
#include "cleave/privacy/image_quality.h"

namespace cleave::privacy {
namespace {

// Anisotropic total variation of images [N, C, H, W]: mean absolute difference of neighbours.
at::Tensor TotalVariation(const at::Tensor& images) {
  const int64_t h = images.size(2), w = images.size(3);
  const at::Tensor down = (images.narrow(2, 1, h - 1) - images.narrow(2, 0, h - 1)).abs().mean();
  const at::Tensor right = (images.narrow(3, 1, w - 1) - images.narrow(3, 0, w - 1)).abs().mean();
  return down + right;
}

void CheckOptions(const InversionOptions& options) {
  CLEAVE_CHECK_USER(options.rounds >= 1 && options.input_steps >= 1 && options.model_steps >= 0,
                    "inversion needs at least one round and one input step per round");
  CLEAVE_CHECK_USER(options.input_learning_rate > 0 && options.model_learning_rate > 0 &&
                        options.total_variation >= 0,
                    "inversion learning rates must be > 0 and the TV weight >= 0");
}

}  // namespace

at::Tensor InvertWithoutAuxiliaryData(const SurrogateFactory& make_surrogate,
                                      const at::Tensor& activations,
                                      const std::vector<int64_t>& input_shape,
                                      const InversionOptions& options) {
  CheckOptions(options);
  CLEAVE_CHECK_USER(activations.defined() && activations.dim() >= 2 && activations.size(0) > 0,
                    "inversion needs a batch of activations");
  const at::Tensor target = activations.detach().to(at::kFloat);
  torch::nn::Sequential surrogate = make_surrogate(options.seed);
  surrogate->to(target.device());
  surrogate->train();
  std::vector<int64_t> shape{target.size(0)};
  shape.insert(shape.end(), input_shape.begin(), input_shape.end());
  at::Generator generator = at::detail::createCPUGenerator(options.seed ^ 0x756e73706c6974ull);
  // Inputs as sigmoid(logits): in [0, 1] like the images; a small random start breaks symmetry.
  at::Tensor logits =
      (at::randn(shape, generator, at::TensorOptions(at::kFloat)) * 0.1).to(target.device());
  logits.requires_grad_(true);
  {
    at::NoGradGuard no_grad;
    const at::Tensor probe = surrogate->forward(at::sigmoid(logits));
    CLEAVE_CHECK_USER(probe.sizes() == target.sizes(), "the surrogate maps the inputs to ",
                      probe.sizes(), ", the activations are ", target.sizes());
  }
  const bool images = input_shape.size() == 3 && options.total_variation > 0;
  torch::optim::Adam input_optimizer({logits}, torch::optim::AdamOptions(options.input_learning_rate));
  // A surrogate without weights (the attacker knows the whole map) only needs input steps.
  const std::vector<at::Tensor> weights = surrogate->parameters();
  std::unique_ptr<torch::optim::Adam> model_optimizer;
  if (!weights.empty()) {
    model_optimizer = std::make_unique<torch::optim::Adam>(
        weights, torch::optim::AdamOptions(options.model_learning_rate));
  }
  const auto loss_of = [&](const at::Tensor& inputs) {
    at::Tensor loss = at::mse_loss(surrogate->forward(inputs), target);
    if (images) loss = loss + options.total_variation * TotalVariation(inputs);
    return loss;
  };
  for (int round = 0; round < options.rounds; ++round) {
    for (int step = 0; step < options.input_steps; ++step) {
      input_optimizer.zero_grad();
      loss_of(at::sigmoid(logits)).backward();
      input_optimizer.step();
    }
    const at::Tensor inputs = at::sigmoid(logits).detach();
    for (int step = 0; model_optimizer && step < options.model_steps; ++step) {
      model_optimizer->zero_grad();
      loss_of(inputs).backward();
      model_optimizer->step();
    }
  }
  return at::sigmoid(logits).detach().to(at::kCPU);
}

double SsimUpToPolarity(const at::Tensor& original, const at::Tensor& reconstruction) {
  return std::max(Ssim(original, reconstruction), Ssim(original, 1.0 - reconstruction));
}

}  // namespace cleave::privacy
