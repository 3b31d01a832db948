// Applies the activation compression the server asked for at Join: chooses which cut-layer
// elements are sent (protocol::ActivationEncoder) and makes the choice part of the forward pass
// (a 0/1 mask on the activations' device), so that only what is sent carries gradient back.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"

namespace cleave::client {

struct SelectedActivations : protocol::ActivationSelection {
  at::Tensor mask;  // 0/1 of the activations' shape, on their device (when !all)

  // The activations as the server sees them (differentiable).
  at::Tensor Apply(const at::Tensor& activations) const;
};

class ActivationCompressor {
 public:
  ActivationCompressor(const protocol::DirectionSpec& spec, uint64_t seed);
  // See protocol::ActivationEncoder::Select; adds the mask.
  SelectedActivations Select(const at::Tensor& activations);
  void Encode(const at::Tensor& activations, const SelectedActivations& selected,
              v1::Tensor* message) const;
  const protocol::DirectionSpec& spec() const { return encoder_.spec(); }

 private:
  protocol::ActivationEncoder encoder_;
};

}  // namespace cleave::client
