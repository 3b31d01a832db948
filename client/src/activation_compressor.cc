#include "cleave/client/activation_compressor.h"

#include <ATen/ATen.h>

#include "cleave/compress/compressor.h"
#include "cleave/compress/sparse_codec.h"
#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::client {

at::Tensor SelectedActivations::Apply(const at::Tensor& activations) const {
  return all ? activations : activations * mask;
}

ActivationCompressor::ActivationCompressor(const v1::CompressionSettings& settings, uint64_t seed)
    : settings_(settings),
      compressor_(MakeCompressor({settings.method(), settings.density(), seed})) {}

ActivationCompressor::~ActivationCompressor() = default;

SelectedActivations ActivationCompressor::Select(const at::Tensor& activations) {
  SelectedActivations selected;
  if (settings_.method() == "none") return selected;
  Selection selection = compressor_->Compress(activations);
  selected.all = false;
  selected.indices = std::move(selection.indices);
  at::Tensor mask = at::zeros({activations.numel()}, activations.options().requires_grad(false));
  float* data = mask.data_ptr<float>();
  for (uint32_t index : selected.indices) data[index] = 1.0f;
  selected.mask = mask.view(activations.sizes());
  return selected;
}

void ActivationCompressor::Encode(const at::Tensor& activations,
                                  const SelectedActivations& selected, v1::Tensor* message) const {
  if (selected.all) {
    protocol::EncodeDense(activations, message);
  } else {
    protocol::EncodeSparse(activations, selected.indices,
                           ParseValuePrecision(settings_.value_precision()), message);
  }
}

at::Tensor ActivationCompressor::DecodeGradient(
    const v1::Tensor& message, const at::Tensor& activations, const SelectedActivations& selected,
    const v1::CompressionSettings& gradient_settings) const {
  const std::vector<int64_t> shape(activations.sizes().begin(), activations.sizes().end());
  if (selected.all && message.payload_case() == v1::Tensor::kSparse) {
    return protocol::DecodeSparseAt(message, shape, {});
  }
  if (selected.all) {
    protocol::TensorSpec spec;
    spec.sample_shape.assign(shape.begin() + 1, shape.end());
    spec.max_batch = shape[0];
    const at::Tensor gradient = protocol::DecodeTensor(message, spec).dense;
    CLEAVE_CHECK_INPUT(gradient.size(0) == shape[0], "gradient batch ", gradient.size(0),
                       ", expected ", shape[0]);
    return gradient;
  }
  if (message.payload_case() == v1::Tensor::kSparse) {
    // Sparsified again by the server, with indices relative to the positions we sent.
    return protocol::DecodeSparseAt(message, shape, selected.indices);
  }
  return protocol::DecodeValuesAt(message, shape, selected.indices,
                                  ParseValuePrecision(gradient_settings.value_precision()));
}

}  // namespace cleave::client
