// Model inversion without auxiliary data (UnSplit, Erdoğan et al. 2021): an attacker who knows
// only the bottom's architecture, not its weights, nor any of the hospital's inputs, looks for
// an input and a surrogate bottom that together reproduce the activations it received. It
// alternates Adam steps on the inputs (kept in [0, 1] through a sigmoid, with a total-variation
// prior for images) and on the surrogate's weights, minimising the squared distance between the
// surrogate's output and the received activations.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace cleave::privacy {

struct InversionOptions {
  int rounds = 30;          // alternations of input steps and surrogate steps
  int input_steps = 20;     // Adam steps on the inputs per round
  int model_steps = 20;     // Adam steps on the surrogate per round
  double input_learning_rate = 0.05;
  double model_learning_rate = 1e-3;
  double total_variation = 0.05;  // weight of the TV prior (images [C, H, W] only; 0: off)
  uint64_t seed = 0;              // the surrogate's initialisation and the inputs' start
};

// A fresh surrogate of the bottom's architecture, initialised from `seed` (the attacker's guess
// at the weights is random: it knows the layers, not their values).
using SurrogateFactory = std::function<torch::nn::Sequential(uint64_t seed)>;

// Reconstructions [N, input_shape...] (CPU, detached) of the inputs behind `activations`
// [N, ...]. Throws UserError when the surrogate does not map input_shape to the activations'
// shape, or an option is out of range.
at::Tensor InvertWithoutAuxiliaryData(const SurrogateFactory& make_surrogate,
                                      const at::Tensor& activations,
                                      const std::vector<int64_t>& input_shape,
                                      const InversionOptions& options = {});

// SSIM of a reconstruction against the true images [N, C, H, W] in [0, 1], up to polarity: the
// larger of SSIM(x, r) and SSIM(x, 1 - r). Inversion without auxiliary data cannot tell a
// weight's sign (an inverted image reveals as much as the image), so both count.
double SsimUpToPolarity(const at::Tensor& original, const at::Tensor& reconstruction);

}  // namespace cleave::privacy
