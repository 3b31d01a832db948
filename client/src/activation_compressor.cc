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

std::vector<uint32_t> ActivationCompressor::SelectPerSample(const at::Tensor& activations) {
  CLEAVE_ENFORCE(activations.dim() >= 1, "per-sample selection needs a batch dimension");
  const int64_t rows = activations.size(0);
  const int64_t row_numel = rows == 0 ? 0 : activations.numel() / rows;
  std::vector<uint32_t> indices;
  indices.reserve(static_cast<size_t>(rows * compressor_->TargetCount(row_numel)));
  for (int64_t row = 0; row < rows; ++row) {
    // Each row's indices are ascending and lie in [row * row_numel, (row + 1) * row_numel), so
    // the concatenation is ascending too.
    const Selection selection = compressor_->Compress(activations[row]);
    const auto offset = static_cast<uint32_t>(row * row_numel);
    for (uint32_t index : selection.indices) indices.push_back(offset + index);
  }
  return indices;
}

SelectedActivations ActivationCompressor::Select(const at::Tensor& activations) {
  SelectedActivations selected;
  if (settings_.method() == "none") return selected;
  selected.all = false;
  if (settings_.per_sample()) {
    selected.indices = SelectPerSample(activations);
  } else {
    selected.indices = compressor_->Compress(activations).indices;
  }
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
