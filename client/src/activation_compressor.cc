#include "cleave/client/activation_compressor.h"

#include <ATen/ATen.h>

#include <vector>

namespace cleave::client {

at::Tensor SelectedActivations::Apply(const at::Tensor& activations) const {
  return all ? activations : activations * mask;
}

ActivationCompressor::ActivationCompressor(const protocol::DirectionSpec& spec, uint64_t seed)
    : encoder_(spec, seed) {}

SelectedActivations ActivationCompressor::Select(const at::Tensor& activations) {
  SelectedActivations selected;
  static_cast<protocol::ActivationSelection&>(selected) = encoder_.Select(activations);
  if (selected.all) return selected;
  // Filled on the activations' device (a host pointer into a CUDA tensor would not do).
  const std::vector<int64_t> positions(selected.indices.begin(), selected.indices.end());
  const at::Tensor index = at::tensor(positions, at::kLong).to(activations.device());
  at::Tensor mask = at::zeros({activations.numel()}, activations.options().requires_grad(false));
  mask.index_fill_(0, index, 1.0);
  selected.mask = mask.view(activations.sizes());
  return selected;
}

void ActivationCompressor::Encode(const at::Tensor& activations,
                                  const SelectedActivations& selected, v1::Tensor* message) const {
  encoder_.Encode(activations, selected, message);
}

}  // namespace cleave::client
