#include "cleave/protocol/activation_codec.h"

#include <ATen/ATen.h>

#include "cleave/core/error.h"

namespace cleave::protocol {

ActivationEncoder::ActivationEncoder(const DirectionSpec& spec, uint64_t seed) : spec_(spec) {
  if (spec_.compressed()) compressor_ = MakeCompressor(spec_, seed);
}

std::vector<uint32_t> ActivationEncoder::SelectPerSample(const at::Tensor& activations,
                                                         std::vector<float>* values) {
  CLEAVE_ENFORCE(activations.dim() >= 1, "per-sample selection needs a batch dimension");
  const int64_t rows = activations.size(0);
  const int64_t row_numel = rows == 0 ? 0 : activations.numel() / rows;
  std::vector<uint32_t> indices;
  const auto expected = static_cast<size_t>(rows * compressor_->TargetCount(row_numel));
  indices.reserve(expected);
  values->reserve(expected);
  for (int64_t row = 0; row < rows; ++row) {
    // Each row's indices are ascending and lie in [row * row_numel, (row + 1) * row_numel), so
    // the concatenation is ascending too.
    const Selection selection = compressor_->Compress(activations[row]);
    const auto offset = static_cast<uint32_t>(row * row_numel);
    for (uint32_t index : selection.indices) indices.push_back(offset + index);
    values->insert(values->end(), selection.values.begin(), selection.values.end());
  }
  return indices;
}

ActivationSelection ActivationEncoder::Select(const at::Tensor& activations) {
  ActivationSelection selection;
  if (!compressor_) return selection;
  selection.all = false;
  if (spec_.per_sample) {
    selection.indices = SelectPerSample(activations, &selection.values);
  } else {
    Selection chosen = compressor_->Compress(activations);
    selection.indices = std::move(chosen.indices);
    selection.values = std::move(chosen.values);
  }
  return selection;
}

void ActivationEncoder::Encode(const at::Tensor& activations, const ActivationSelection& selection,
                               v1::Tensor* message) const {
  if (selection.all) {
    EncodeDense(activations, message);
    return;
  }
  EncodeGatheredSparse(std::vector<int64_t>(activations.sizes().begin(), activations.sizes().end()),
                       static_cast<uint64_t>(activations.numel()), selection.indices,
                       selection.values, spec_.precision, message);
}

ActivationDecoder::ActivationDecoder(const DirectionSpec& spec, TensorSpec tensor)
    : spec_(spec), tensor_(std::move(tensor)) {
  tensor_.allow_sparse = spec_.compressed();
}

ReceivedActivations ActivationDecoder::Decode(const v1::Tensor& message) const {
  DecodedTensor decoded = DecodeTensor(message, tensor_);
  ReceivedActivations received;
  received.dense = std::move(decoded.dense);
  received.sent.all = !decoded.was_sparse;
  received.sent.indices = std::move(decoded.sent_indices);
  return received;
}

}  // namespace cleave::protocol
