// Applies the activation compression the server asked for at Join: chooses which cut-layer
// elements are sent (the mask is part of the forward pass), encodes them, and turns the server's
// reply (gradient values at exactly those positions) back into a dense gradient.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cleave/protocol/cleave.pb.h"

namespace cleave {
class Compressor;
}

namespace cleave::client {

struct SelectedActivations {
  bool all = true;                // nothing dropped (method "none")
  std::vector<uint32_t> indices;  // flat positions sent, ascending (when !all)
  at::Tensor mask;                // 0/1 of the activation's shape (when !all)

  int64_t count(int64_t numel) const { return all ? numel : static_cast<int64_t>(indices.size()); }
  // The activations as the server sees them (differentiable).
  at::Tensor Apply(const at::Tensor& activations) const;
};

class ActivationCompressor {
 public:
  ActivationCompressor(const v1::CompressionSettings& settings, uint64_t seed);
  ~ActivationCompressor();
  // The elements to send: chosen over the whole batch tensor, or, with settings.per_sample(),
  // round(density * row size) in each batch row (dimension 0), so that every sample gets its
  // share of the budget. Either way one ascending list of flat indices.
  SelectedActivations Select(const at::Tensor& activations);
  void Encode(const at::Tensor& activations, const SelectedActivations& selected,
              v1::Tensor* message) const;
  at::Tensor DecodeGradient(const v1::Tensor& message, const at::Tensor& activations,
                            const SelectedActivations& selected,
                            const v1::CompressionSettings& gradient_settings) const;

 private:
  std::vector<uint32_t> SelectPerSample(const at::Tensor& activations);

  v1::CompressionSettings settings_;
  std::unique_ptr<Compressor> compressor_;
};

}  // namespace cleave::client
