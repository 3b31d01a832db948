#include "cleave/protocol/tensor_message.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "cleave/core/error.h"

namespace cleave::protocol {

namespace {

size_t ElementSize(v1::Tensor::DType dtype) {
  switch (dtype) {
    case v1::Tensor::FLOAT32:
      return sizeof(float);
    case v1::Tensor::INT64:
      return sizeof(int64_t);
    default:
      return 0;
  }
}

const char* DTypeName(int dtype) {
  switch (dtype) {
    case v1::Tensor::FLOAT32:
      return "float32";
    case v1::Tensor::INT64:
      return "int64";
    default:
      return "unspecified";
  }
}

at::ScalarType ToScalarType(v1::Tensor::DType dtype) {
  return dtype == v1::Tensor::INT64 ? at::kLong : at::kFloat;
}

v1::Tensor::DType FromScalarType(at::ScalarType type) {
  if (type == at::kFloat) return v1::Tensor::FLOAT32;
  if (type == at::kLong) return v1::Tensor::INT64;
  throw Error(detail::Concat("cannot encode tensors of type ", at::toString(type)));
}

// Checks the shape against the spec and returns the element count.
int64_t CheckShape(const v1::Tensor& message, const TensorSpec& spec) {
  const auto& shape = message.shape();
  const size_t expected_rank = spec.sample_shape.size() + 1;
  std::vector<int64_t> got(shape.begin(), shape.end());
  std::vector<int64_t> want = {-1};
  want.insert(want.end(), spec.sample_shape.begin(), spec.sample_shape.end());
  CLEAVE_CHECK_INPUT(static_cast<size_t>(shape.size()) == expected_rank, "tensor has shape ",
                     ShapeToString(got), ", expected Bx", ShapeToString(spec.sample_shape));
  CLEAVE_CHECK_INPUT(shape[0] >= 1 && shape[0] <= spec.max_batch, "batch size ", shape[0],
                     " is outside 1..", spec.max_batch);
  int64_t numel = shape[0];
  for (size_t d = 0; d < spec.sample_shape.size(); ++d) {
    CLEAVE_CHECK_INPUT(shape[d + 1] == spec.sample_shape[d], "tensor has shape ",
                       ShapeToString(got), ", expected Bx", ShapeToString(spec.sample_shape));
    numel *= shape[d + 1];  // bounded: sample shape is ours, batch <= max_batch
  }
  return numel;
}

void CheckFinite(const float* data, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(data[i])) {
      throw NotFinite(detail::Concat("tensor element ", i, " is not finite (", data[i], ")"));
    }
  }
}

void CheckMagnitude(const float* data, int64_t count, double max_abs) {
  if (max_abs <= 0) return;
  for (int64_t i = 0; i < count; ++i) {
    if (!(std::fabs(static_cast<double>(data[i])) <= max_abs)) {
      throw OutOfBounds(detail::Concat("tensor element ", i, " is ", data[i],
                                       ", beyond the bound of ", max_abs, " in magnitude"));
    }
  }
}

}  // namespace

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += "x";
    out += std::to_string(shape[i]);
  }
  return out.empty() ? "scalar" : out;
}

void EncodeDense(const at::Tensor& tensor, v1::Tensor* message) {
  const at::Tensor contiguous = tensor.detach().to(at::kCPU).contiguous();
  message->Clear();
  message->set_dtype(FromScalarType(contiguous.scalar_type()));
  for (int64_t d : contiguous.sizes()) message->add_shape(d);
  message->set_dense(static_cast<const char*>(contiguous.data_ptr()),
                     contiguous.numel() * contiguous.element_size());
}

namespace {

// The float32 values of `tensor` at flat `indices`.
std::vector<float> Gather(const at::Tensor& tensor, const std::vector<uint32_t>& indices) {
  const at::Tensor flat = tensor.detach().to(at::kCPU).contiguous().view(-1);
  CLEAVE_ENFORCE(flat.scalar_type() == at::kFloat, "sparse and value payloads are float32 only");
  const float* data = flat.data_ptr<float>();
  std::vector<float> values(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    CLEAVE_ENFORCE(static_cast<int64_t>(indices[i]) < flat.numel(), "index out of range");
    values[i] = data[indices[i]];
  }
  return values;
}

// Starts `message` as a float32 tensor of `shape`.
void StartFloatMessage(const std::vector<int64_t>& shape, v1::Tensor* message) {
  message->Clear();
  message->set_dtype(v1::Tensor::FLOAT32);
  for (int64_t d : shape) message->add_shape(d);
}

std::vector<int64_t> SizesOf(const at::Tensor& tensor) {
  return std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end());
}

}  // namespace

void EncodeSparse(const at::Tensor& tensor, const std::vector<uint32_t>& indices,
                  ValuePrecision precision, v1::Tensor* message) {
  EncodeGatheredSparse(SizesOf(tensor), static_cast<uint64_t>(tensor.numel()), indices,
                       Gather(tensor, indices), precision, message);
}

void EncodeValuesAt(const at::Tensor& tensor, const std::vector<uint32_t>& indices,
                    ValuePrecision precision, v1::Tensor* message) {
  EncodeGatheredValues(SizesOf(tensor), Gather(tensor, indices), precision, message);
}

void EncodeGatheredSparse(const std::vector<int64_t>& shape, uint64_t dense_numel,
                          const std::vector<uint32_t>& indices, const std::vector<float>& values,
                          ValuePrecision precision, v1::Tensor* message) {
  CLEAVE_ENFORCE(indices.size() == values.size(), indices.size(), " indices, ", values.size(),
                 " values");
  StartFloatMessage(shape, message);
  message->set_sparse(
      ::cleave::EncodeSparse(dense_numel, indices.data(), values.data(), values.size(), precision));
}

void EncodeGatheredValues(const std::vector<int64_t>& shape, const std::vector<float>& values,
                          ValuePrecision precision, v1::Tensor* message) {
  StartFloatMessage(shape, message);
  message->set_values(::cleave::EncodeValues(values.data(), values.size(), precision));
}

DecodedTensor DecodeTensor(const v1::Tensor& message, const TensorSpec& spec) {
  CLEAVE_CHECK_INPUT(message.dtype() == spec.dtype, "tensor has dtype ", DTypeName(message.dtype()),
                     ", expected ", DTypeName(spec.dtype));
  const int64_t numel = CheckShape(message, spec);
  std::vector<int64_t> shape(message.shape().begin(), message.shape().end());
  DecodedTensor out;
  switch (message.payload_case()) {
    case v1::Tensor::kDense: {
      const size_t expected_bytes = static_cast<size_t>(numel) * ElementSize(spec.dtype);
      CLEAVE_CHECK_INPUT(message.dense().size() == expected_bytes, "dense payload has ",
                         message.dense().size(), " bytes, shape ", ShapeToString(shape), " needs ",
                         expected_bytes);
      out.dense = at::empty(shape, at::TensorOptions().dtype(ToScalarType(spec.dtype)));
      std::memcpy(out.dense.data_ptr(), message.dense().data(), expected_bytes);
      if (spec.dtype == v1::Tensor::FLOAT32 && !spec.allow_nonfinite) {
        CheckFinite(out.dense.data_ptr<float>(), numel);
      }
      if (spec.dtype == v1::Tensor::FLOAT32) {
        CheckMagnitude(out.dense.data_ptr<float>(), numel, spec.max_abs);
      }
      if (spec.dtype == v1::Tensor::INT64 && spec.int_upper_bound > 0) {
        const int64_t* data = out.dense.data_ptr<int64_t>();
        for (int64_t i = 0; i < numel; ++i) {
          CLEAVE_CHECK_INPUT(data[i] >= 0 && data[i] < spec.int_upper_bound, "element ", i, " is ",
                             data[i], ", outside 0..", spec.int_upper_bound - 1);
        }
      }
      return out;
    }
    case v1::Tensor::kSparse: {
      CLEAVE_CHECK_INPUT(spec.allow_sparse && spec.dtype == v1::Tensor::FLOAT32,
                         "a sparse payload is not accepted here");
      DecodeLimits limits;
      limits.max_dense_numel = static_cast<uint64_t>(numel);
      limits.expected_dense_numel = static_cast<uint64_t>(numel);
      limits.max_count = static_cast<uint64_t>(numel);
      limits.allow_nonfinite = spec.allow_nonfinite;
      DecodedSparse sparse = DecodeSparse(message.sparse(), limits);
      CheckMagnitude(sparse.values.data(), static_cast<int64_t>(sparse.values.size()),
                     spec.max_abs);
      out.dense = at::zeros(shape, at::TensorOptions().dtype(at::kFloat));
      float* data = out.dense.data_ptr<float>();
      for (size_t i = 0; i < sparse.indices.size(); ++i) data[sparse.indices[i]] = sparse.values[i];
      out.was_sparse = true;
      out.sent_indices = std::move(sparse.indices);
      return out;
    }
    case v1::Tensor::kValues:
      throw InvalidInput("a values-only payload is not accepted here");
    default:
      throw InvalidInput("tensor has no payload");
  }
}

at::Tensor DecodeValuesAt(const v1::Tensor& message, const std::vector<int64_t>& shape,
                          const std::vector<uint32_t>& indices, ValuePrecision precision) {
  CLEAVE_CHECK_INPUT(message.dtype() == v1::Tensor::FLOAT32, "values payload has dtype ",
                     DTypeName(message.dtype()), ", expected float32");
  std::vector<int64_t> got(message.shape().begin(), message.shape().end());
  CLEAVE_CHECK_INPUT(got == shape, "values payload has shape ", ShapeToString(got), ", expected ",
                     ShapeToString(shape));
  CLEAVE_CHECK_INPUT(message.payload_case() == v1::Tensor::kValues,
                     "expected a values-only payload");
  const std::vector<float> values = DecodeValues(message.values(), indices.size(), precision);
  at::Tensor dense = at::zeros(shape, at::TensorOptions().dtype(at::kFloat));
  float* data = dense.data_ptr<float>();
  const int64_t numel = dense.numel();
  for (size_t i = 0; i < indices.size(); ++i) {
    CLEAVE_ENFORCE(static_cast<int64_t>(indices[i]) < numel, "index out of range");
    data[indices[i]] = values[i];
  }
  return dense;
}

}  // namespace cleave::protocol
