#include "cleave/protocol/client_model_codec.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::protocol {

namespace {

constexpr const char* kFeedbackKey = "client_model";

// A flat tensor of exactly `count` elements.
TensorSpec FlatSpec(int64_t count) {
  TensorSpec spec;
  spec.max_batch = std::max<int64_t>(count, 1);
  return spec;
}

}  // namespace

UpdateEncoder::UpdateEncoder(const DirectionSpec& spec, uint64_t seed) : spec_(spec) {
  if (spec_.compressed()) {
    feedback_ =
        std::make_unique<ErrorFeedback>(CompressorConfig{spec_.method, spec_.density, seed});
  }
}

void UpdateEncoder::Encode(const at::Tensor& delta, v1::Tensor* message) {
  if (!feedback_) {
    EncodeDense(delta, message);
    return;
  }
  const Selection selection = feedback_->Compress(kFeedbackKey, delta);
  EncodeGatheredSparse(selection.shape, static_cast<uint64_t>(selection.numel), selection.indices,
                       selection.values, spec_.precision, message);
}

void UpdateEncoder::Reset() {
  if (feedback_) feedback_->Reset();
}

UpdateDecoder::UpdateDecoder(const DirectionSpec& spec, int64_t num_parameters, double max_abs)
    : spec_(spec), num_parameters_(num_parameters), max_abs_(max_abs) {}

at::Tensor UpdateDecoder::Decode(const v1::Tensor& message) const {
  TensorSpec spec = FlatSpec(num_parameters_);
  spec.allow_sparse = spec_.compressed();
  spec.max_abs = max_abs_;
  const at::Tensor delta = DecodeTensor(message, spec).dense;
  CLEAVE_CHECK_INPUT(delta.size(0) == num_parameters_, "update has ", delta.size(0),
                     " values, the client-side model has ", num_parameters_);
  return delta;
}

void EncodeWeights(const at::Tensor& weights, v1::Tensor* message) {
  EncodeDense(weights, message);
}

at::Tensor DecodeWeights(const v1::Tensor& message, int64_t num_parameters) {
  const at::Tensor weights = DecodeTensor(message, FlatSpec(num_parameters)).dense;
  CLEAVE_CHECK_INPUT(weights.size(0) == num_parameters, "server sent ", weights.size(0),
                     " client-side weights, the model has ", num_parameters);
  return weights;
}

}  // namespace cleave::protocol
