#include "cleave/privacy/reconstruction_attack.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/utils.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "cleave/core/dataset.h"
#include "cleave/core/error.h"
#include "cleave/privacy/image_quality.h"

namespace cleave::privacy {

namespace {

namespace nn = torch::nn;

constexpr int64_t kSsimMinimumSide = 11;

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t product = 1;
  for (int64_t d : shape) product *= d;
  return product;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? "x" : "") + std::to_string(shape[i]);
  return text;
}

// s when inputs [c, H, W] are activations [C, h, w] upscaled by one integer s >= 1, else 0.
int64_t IntegerUpscale(const std::vector<int64_t>& activation, const std::vector<int64_t>& input) {
  if (activation.size() != 3 || input.size() != 3) return 0;
  const int64_t scale = input[1] / activation[1];
  return scale >= 1 && input[1] == scale * activation[1] && input[2] == scale * activation[2]
             ? scale
             : 0;
}

// [C, h, w] -> [c, s h, s w]: a 3x3 conv, a transposed conv with kernel = stride = s (which can
// represent any per-position inverse of an s x s space-to-depth), then two 3x3 convs.
nn::Sequential ConvolutionalDecoder(const std::vector<int64_t>& activation,
                                    const std::vector<int64_t>& input, int64_t width) {
  const int64_t scale = IntegerUpscale(activation, input);
  CLEAVE_CHECK_USER(scale > 0,
                    "a convolutional decoder needs [C, h, w] activations and [c, s h, s w] "
                    "inputs for one integer s, got ",
                    ShapeText(activation), " -> ", ShapeText(input), " (use the MLP decoder)");
  const int64_t half = std::max<int64_t>(width / 2, 1);
  nn::Sequential decoder;
  decoder->push_back(nn::Conv2d(nn::Conv2dOptions(activation[0], width, 3).padding(1)));
  decoder->push_back(nn::ReLU());
  if (scale > 1) {
    decoder->push_back(
        nn::ConvTranspose2d(nn::ConvTranspose2dOptions(width, width, scale).stride(scale)));
    decoder->push_back(nn::ReLU());
  }
  decoder->push_back(nn::Conv2d(nn::Conv2dOptions(width, half, 3).padding(1)));
  decoder->push_back(nn::ReLU());
  decoder->push_back(nn::Conv2d(nn::Conv2dOptions(half, input[0], 3).padding(1)));
  return decoder;
}

nn::Sequential MultiLayerPerceptronDecoder(const std::vector<int64_t>& activation,
                                           const std::vector<int64_t>& input, int64_t width) {
  nn::Sequential decoder;
  decoder->push_back(nn::Flatten());
  decoder->push_back(nn::Linear(Product(activation), width));
  decoder->push_back(nn::ReLU());
  decoder->push_back(nn::Linear(width, width));
  decoder->push_back(nn::ReLU());
  decoder->push_back(nn::Linear(width, Product(input)));
  decoder->push_back(nn::Unflatten(nn::UnflattenOptions(1, input)));
  return decoder;
}

void CheckBatch(const at::Tensor& batch, const std::vector<int64_t>& shape, const char* what) {
  CLEAVE_CHECK_USER(batch.defined() && batch.dim() == static_cast<int64_t>(shape.size()) + 1 &&
                        batch.size(0) > 0 &&
                        std::equal(shape.begin(), shape.end(), batch.sizes().begin() + 1),
                    "reconstruction attack expects ", what, " [N, ", ShapeText(shape), "], got ",
                    batch.defined() ? batch.sizes() : at::IntArrayRef{});
}

}  // namespace

struct ReconstructionAttack::State {
  std::vector<int64_t> activation_shape;
  std::vector<int64_t> input_shape;
  ReconstructionAttackOptions options;
  DecoderKind kind = DecoderKind::kAuto;
  nn::Sequential decoder{nullptr};
};

ReconstructionAttack::ReconstructionAttack(std::vector<int64_t> activation_shape,
                                           std::vector<int64_t> input_shape,
                                           ReconstructionAttackOptions options)
    : state_(std::make_unique<State>()) {
  auto positive = [](const std::vector<int64_t>& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](int64_t d) { return d > 0; });
  };
  CLEAVE_CHECK_USER(positive(activation_shape) && positive(input_shape),
                    "reconstruction attack needs non-empty positive shapes, got activations ",
                    ShapeText(activation_shape), " and inputs ", ShapeText(input_shape));
  CLEAVE_CHECK_USER(options.epochs >= 0 && options.batch_size > 0 && options.learning_rate > 0 &&
                        options.width > 0 && options.data_range > 0,
                    "reconstruction attack options: epochs >= 0, batch size, learning rate, "
                    "width and data range > 0");
  DecoderKind kind = options.decoder;
  if (kind == DecoderKind::kAuto) {
    kind = IntegerUpscale(activation_shape, input_shape) > 0 ? DecoderKind::kConvolutional
                                                             : DecoderKind::kMultiLayerPerceptron;
  }
  torch::manual_seed(options.seed);
  nn::Sequential decoder =
      kind == DecoderKind::kConvolutional
          ? ConvolutionalDecoder(activation_shape, input_shape, options.width)
          : MultiLayerPerceptronDecoder(activation_shape, input_shape, options.width);
  if (options.inputs_in_unit_interval) decoder->push_back(nn::Sigmoid());
  state_->activation_shape = std::move(activation_shape);
  state_->input_shape = std::move(input_shape);
  state_->options = options;
  state_->kind = kind;
  state_->decoder = decoder;
}

ReconstructionAttack::~ReconstructionAttack() = default;
ReconstructionAttack::ReconstructionAttack(ReconstructionAttack&&) noexcept = default;
ReconstructionAttack& ReconstructionAttack::operator=(ReconstructionAttack&&) noexcept = default;

DecoderKind ReconstructionAttack::decoder() const { return state_->kind; }

std::vector<double> ReconstructionAttack::Train(const at::Tensor& activations,
                                                const at::Tensor& inputs) {
  CheckBatch(activations, state_->activation_shape, "activations");
  CheckBatch(inputs, state_->input_shape, "inputs");
  CLEAVE_CHECK_USER(activations.size(0) == inputs.size(0),
                    "reconstruction attack needs as many inputs as activations, got ",
                    inputs.size(0), " and ", activations.size(0));
  const at::Device device = activations.device();
  state_->decoder->to(device);
  const at::Tensor features = activations.detach().to(at::kFloat);
  const at::Tensor targets = inputs.detach().to(device, at::kFloat);
  const ReconstructionAttackOptions& options = state_->options;
  torch::optim::Adam optimizer(state_->decoder->parameters(),
                               torch::optim::AdamOptions(options.learning_rate));
  const int64_t n = features.size(0);
  std::vector<double> epoch_losses;
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    const std::vector<int64_t> order = SeededPermutation(n, options.seed + 1 + epoch);
    const at::Tensor shuffled = at::tensor(order, at::kLong).to(device);
    double loss_sum = 0;
    for (int64_t start = 0; start < n; start += options.batch_size) {
      const int64_t count = std::min(options.batch_size, n - start);
      const at::Tensor index = shuffled.narrow(0, start, count);
      optimizer.zero_grad();
      const at::Tensor loss =
          at::mse_loss(state_->decoder->forward(features.index_select(0, index)),
                       targets.index_select(0, index));
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>() * static_cast<double>(count);
    }
    epoch_losses.push_back(loss_sum / static_cast<double>(n));
  }
  return epoch_losses;
}

at::Tensor ReconstructionAttack::Reconstruct(const at::Tensor& activations) {
  CheckBatch(activations, state_->activation_shape, "activations");
  at::NoGradGuard no_grad;
  state_->decoder->to(activations.device());
  return state_->decoder->forward(activations.detach().to(at::kFloat));
}

ReconstructionQuality ReconstructionAttack::Evaluate(const at::Tensor& activations,
                                                     const at::Tensor& inputs) {
  CheckBatch(inputs, state_->input_shape, "inputs");
  CLEAVE_CHECK_USER(
      activations.defined() && activations.dim() > 0 && activations.size(0) == inputs.size(0),
      "reconstruction attack needs as many inputs as activations");
  ReconstructionQuality quality;
  quality.reconstructions = Reconstruct(activations).to(at::kCPU);
  const at::Tensor truth = inputs.detach().to(at::kCPU, at::kFloat);
  const int64_t n = truth.size(0);
  quality.mse = (quality.reconstructions.to(at::kDouble) - truth.to(at::kDouble))
                    .pow(2)
                    .reshape({n, -1})
                    .mean(1)
                    .mean()
                    .item<double>();
  const double range = state_->options.data_range;
  quality.psnr = Psnr(truth, quality.reconstructions, range);
  const std::vector<int64_t>& shape = state_->input_shape;
  quality.ssim = shape.size() == 3 && shape[1] >= kSsimMinimumSide && shape[2] >= kSsimMinimumSide
                     ? Ssim(truth, quality.reconstructions, range)
                     : std::numeric_limits<double>::quiet_NaN();
  return quality;
}

}  // namespace cleave::privacy
