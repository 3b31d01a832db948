#include "cleave/protocol/gradient_codec.h"

#include <ATen/ATen.h>

#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::protocol {

namespace {

std::vector<int64_t> SizesOf(const at::Tensor& tensor) {
  return std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end());
}

// The sparse payload's values scattered into a dense tensor of `shape`: at the payload's flat
// indices, or (positions given) at positions[index].
at::Tensor DecodeSparseGradient(const v1::Tensor& message, const std::vector<int64_t>& shape,
                                const std::vector<uint32_t>* positions) {
  CLEAVE_CHECK_INPUT(message.payload_case() == v1::Tensor::kSparse,
                     "expected a sparse gradient payload");
  CLEAVE_CHECK_INPUT(message.dtype() == v1::Tensor::FLOAT32, "gradient payload is not float32");
  const std::vector<int64_t> got(message.shape().begin(), message.shape().end());
  CLEAVE_CHECK_INPUT(got == shape, "gradient has shape ", ShapeToString(got), ", expected ",
                     ShapeToString(shape));
  at::Tensor dense = at::zeros(shape, at::TensorOptions().dtype(at::kFloat));
  const auto numel = static_cast<uint64_t>(dense.numel());
  DecodeLimits limits;
  limits.expected_dense_numel = positions ? positions->size() : numel;
  limits.max_dense_numel = limits.expected_dense_numel;
  limits.max_count = limits.expected_dense_numel;
  const DecodedSparse sparse = DecodeSparse(message.sparse(), limits);
  float* data = dense.data_ptr<float>();
  for (size_t i = 0; i < sparse.indices.size(); ++i) {
    const uint32_t position = positions ? (*positions)[sparse.indices[i]] : sparse.indices[i];
    CLEAVE_ENFORCE(position < numel, "position out of range");
    data[position] = sparse.values[i];
  }
  return dense;
}

}  // namespace

GradientEncoder::GradientEncoder(const DirectionSpec& spec, uint64_t seed) : spec_(spec) {
  if (spec_.compressed()) compressor_ = MakeCompressor(spec_, seed);
}

void GradientEncoder::Encode(const at::Tensor& gradient, const SentPositions& sent,
                             v1::Tensor* message) {
  if (compressor_) {
    // Sparsified again: over the values at the positions the client sent (indices relative to
    // that set), or over the whole tensor when the activations came dense. The compressor
    // gathers the values it keeps; they are encoded as they are.
    at::Tensor values = gradient.reshape({-1});
    if (!sent.all) {
      const std::vector<int64_t> positions(sent.indices.begin(), sent.indices.end());
      values = values.index_select(0, at::tensor(positions, at::kLong));
    }
    const Selection selection = compressor_->Compress(values);
    // The message's shape is the full gradient's; the payload's own size says how many values.
    EncodeGatheredSparse(SizesOf(gradient), static_cast<uint64_t>(selection.numel),
                         selection.indices, selection.values, spec_.precision, message);
  } else if (!sent.all) {
    EncodeValuesAt(gradient, sent.indices, spec_.precision, message);
  } else {
    EncodeDense(gradient, message);
  }
}

GradientDecoder::GradientDecoder(const DirectionSpec& spec) : spec_(spec) {}

at::Tensor GradientDecoder::Decode(const v1::Tensor& message, const std::vector<int64_t>& shape,
                                   const SentPositions& sent) const {
  CLEAVE_ENFORCE(!shape.empty(), "a gradient has a batch dimension");
  if (spec_.compressed()) {
    return DecodeSparseGradient(message, shape, sent.all ? nullptr : &sent.indices);
  }
  if (!sent.all) return DecodeValuesAt(message, shape, sent.indices, spec_.precision);
  TensorSpec dense;
  dense.sample_shape.assign(shape.begin() + 1, shape.end());
  dense.max_batch = shape[0];
  const at::Tensor gradient = DecodeTensor(message, dense).dense;
  CLEAVE_CHECK_INPUT(gradient.size(0) == shape[0], "gradient batch ", gradient.size(0),
                     ", expected ", shape[0]);
  return gradient;
}

}  // namespace cleave::protocol
