// Conversion between tensors and the wire `Tensor` message. Decoding never trusts the peer: dtype,
// shape, element counts, byte lengths, index bounds and NaN/Inf are checked before anything is
// used.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cleave/compress/sparse_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/version.h"

namespace cleave::protocol {

// What a received tensor must look like.
struct TensorSpec {
  v1::Tensor::DType dtype = v1::Tensor::FLOAT32;
  std::vector<int64_t> sample_shape;  // shape of one sample (the batch dimension comes first)
  int64_t max_batch = 4096;           // batch dimension must be in 1..max_batch
  bool allow_sparse = false;          // accept the `sparse` payload (float32 only)
  bool allow_nonfinite = false;
  // Float tensors: every element's magnitude must be at most max_abs when max_abs > 0 (a value
  // can be finite and still overflow the receiver's arithmetic).
  double max_abs = 0;
  // Integer tensors: every element must lie in [0, int_upper_bound) when int_upper_bound > 0.
  int64_t int_upper_bound = 0;
};

// A decoded tensor. For a sparse payload `dense` holds the scattered values (zeros elsewhere) and
// `sent_indices` the flat positions that were sent, ascending.
struct DecodedTensor {
  at::Tensor dense;
  bool was_sparse = false;
  std::vector<uint32_t> sent_indices;
};

// Encodes a contiguous CPU float32 or int64 tensor densely.
void EncodeDense(const at::Tensor& tensor, v1::Tensor* message);

// Encodes the entries of a float32 tensor at flat positions `indices` (ascending) with the codec.
void EncodeSparse(const at::Tensor& tensor, const std::vector<uint32_t>& indices,
                  ValuePrecision precision, v1::Tensor* message);

// Encodes only the values at known positions (no indices): the server's reply to a sparse upload.
void EncodeValuesAt(const at::Tensor& tensor, const std::vector<uint32_t>& indices,
                    ValuePrecision precision, v1::Tensor* message);

// The same two payloads from values already gathered (a compressor's selection), so that they are
// not read from the tensor again. The message is a float32 tensor of `shape`; a sparse payload
// addresses `dense_numel` positions (the product of `shape`, or fewer when the indices are
// relative to a known subset of the positions).
void EncodeGatheredSparse(const std::vector<int64_t>& shape, uint64_t dense_numel,
                          const std::vector<uint32_t>& indices, const std::vector<float>& values,
                          ValuePrecision precision, v1::Tensor* message);
void EncodeGatheredValues(const std::vector<int64_t>& shape, const std::vector<float>& values,
                          ValuePrecision precision, v1::Tensor* message);

// Decodes and validates; throws cleave::InvalidInput with a precise message on any violation.
DecodedTensor DecodeTensor(const v1::Tensor& message, const TensorSpec& spec);

// Decodes a `values` payload into a dense tensor of `shape`, the values landing on `indices`.
at::Tensor DecodeValuesAt(const v1::Tensor& message, const std::vector<int64_t>& shape,
                          const std::vector<uint32_t>& indices, ValuePrecision precision);

// "2x32x14x14"
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace cleave::protocol
