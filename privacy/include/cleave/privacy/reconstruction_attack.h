// Model-inversion attack on cut-layer activations: an attacker who holds auxiliary (input,
// activation) pairs trains a decoder from activations back to inputs, then reconstructs inputs
// from activations it observes. Measures how much an activation reveals (with and without NoPeek).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace cleave::privacy {

enum class DecoderKind {
  kAuto,                  // kConvolutional when it can map the shapes, else kMultiLayerPerceptron
  kConvolutional,         // conv + transposed-conv upsampling: activations [C, h, w] -> inputs
                          // [c, s h, s w] for one integer s >= 1
  kMultiLayerPerceptron,  // any shapes, flattened; two hidden layers of `width` units
};

struct ReconstructionAttackOptions {
  int epochs = 10;
  int64_t batch_size = 64;
  double learning_rate = 1e-3;
  uint64_t seed = 0;  // decoder initialisation and batch order
  DecoderKind decoder = DecoderKind::kAuto;
  int64_t width = 64;  // channels (conv) or hidden units (MLP) of the decoder
  // Inputs lie in [0, 1] (images): the decoder ends with a sigmoid. Off for standardised tabular
  // features, where the decoder output is unbounded.
  bool inputs_in_unit_interval = true;
  double data_range = 1.0;  // for PSNR and SSIM
};

struct ReconstructionQuality {
  double mse = 0;   // per image (mean over its elements), averaged over the batch
  double psnr = 0;  // per image, averaged (see Psnr)
  double ssim = 0;  // per image, averaged (see Ssim); NaN when inputs are not images >= 11x11
  at::Tensor reconstructions;  // [N, input_shape...], detached, on the CPU
};

class ReconstructionAttack {
 public:
  // Shapes are of one sample, without the batch dimension: e.g. activations {32, 14, 14} and
  // inputs {1, 28, 28} for the CNN cut after block 1. Throws UserError for shapes the chosen
  // decoder cannot map (a convolutional decoder needs H = s h and W = s w for one integer s).
  ReconstructionAttack(std::vector<int64_t> activation_shape, std::vector<int64_t> input_shape,
                       ReconstructionAttackOptions options = {});
  ~ReconstructionAttack();
  ReconstructionAttack(ReconstructionAttack&&) noexcept;
  ReconstructionAttack& operator=(ReconstructionAttack&&) noexcept;

  // Trains the decoder on auxiliary pairs (MSE, Adam). Activations are detached: the attacker
  // sees values, not the client's graph. Returns the mean training loss of each epoch.
  std::vector<double> Train(const at::Tensor& activations, const at::Tensor& inputs);

  // Decoder output for `activations` [N, activation_shape...]: [N, input_shape...].
  at::Tensor Reconstruct(const at::Tensor& activations);

  // Reconstructs held-out activations and scores them against the true inputs.
  ReconstructionQuality Evaluate(const at::Tensor& activations, const at::Tensor& inputs);

  DecoderKind decoder() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cleave::privacy
