#include "cleave/client/activation_compressor.h"

#include <ATen/ATen.h>

#include "cleave/compress/sparse_codec.h"
#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::client {

at::Tensor SelectedActivations::Apply(const at::Tensor& activations) const {
  return all ? activations : activations * mask;
}

ActivationCompressor::ActivationCompressor(const v1::CompressionSettings& settings,
                                           uint64_t /*seed*/)
    : settings_(settings) {
  CLEAVE_CHECK_USER(settings_.method() == "none" || settings_.method() == "topk",
                    "activation compression '", settings_.method(),
                    "' is not available in this build");
}

ActivationCompressor::~ActivationCompressor() = default;

SelectedActivations ActivationCompressor::Select(const at::Tensor& activations) {
  SelectedActivations selected;
  if (settings_.method() == "none") return selected;
  const at::Tensor flat = activations.detach().reshape({-1});
  const int64_t k = std::max<int64_t>(
      1, static_cast<int64_t>(settings_.density() * static_cast<double>(flat.numel())));
  const at::Tensor positions = std::get<1>(flat.abs().topk(std::min(k, flat.numel())));
  const at::Tensor sorted = std::get<0>(positions.sort());
  selected.all = false;
  selected.indices.resize(static_cast<size_t>(sorted.numel()));
  const int64_t* data = sorted.data_ptr<int64_t>();
  for (size_t i = 0; i < selected.indices.size(); ++i) {
    selected.indices[i] = static_cast<uint32_t>(data[i]);
  }
  selected.mask = at::zeros_like(flat).index_fill_(0, sorted, 1.0).view(activations.sizes());
  return selected;
}

void ActivationCompressor::Encode(const at::Tensor& activations,
                                  const SelectedActivations& selected,
                                  v1::Tensor* message) const {
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
  if (selected.all) {
    protocol::TensorSpec spec;
    spec.sample_shape.assign(shape.begin() + 1, shape.end());
    spec.max_batch = shape[0];
    const at::Tensor gradient = protocol::DecodeTensor(message, spec).dense;
    CLEAVE_CHECK_INPUT(gradient.size(0) == shape[0], "gradient batch ", gradient.size(0),
                       ", expected ", shape[0]);
    return gradient;
  }
  return protocol::DecodeValuesAt(message, shape, selected.indices,
                                  ParseValuePrecision(gradient_settings.value_precision()));
}

}  // namespace cleave::client
