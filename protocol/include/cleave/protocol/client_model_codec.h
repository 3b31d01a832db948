// The client-side model between rounds. Updates (new weights minus the round's base, flattened in
// module order) go up, dense or sparse with error feedback: what is not sent now is kept and
// added to the next update, and the selected values are encoded as the compressor gathered them.
// Weights come down dense.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>

#include "cleave/compress/compressor.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"

namespace cleave::protocol {

// Client side. Keeps the error-feedback residual across rounds (and Joins).
class UpdateEncoder {
 public:
  UpdateEncoder(const DirectionSpec& spec, uint64_t seed);
  // `delta` is float32 (any shape; the message keeps it).
  void Encode(const at::Tensor& delta, v1::Tensor* message);
  // Forgets the residual (the server refused an update; the client resynchronises).
  void Reset();
  const DirectionSpec& spec() const { return spec_; }

 private:
  DirectionSpec spec_;
  std::unique_ptr<ErrorFeedback> feedback_;  // null for Method::kNone
};

// Server side: a flat [num_parameters] delta whose values are at most max_abs in magnitude
// (0: unbounded). Throws InvalidInput (NotFinite, OutOfBounds) otherwise.
class UpdateDecoder {
 public:
  UpdateDecoder(const DirectionSpec& spec, int64_t num_parameters, double max_abs);
  at::Tensor Decode(const v1::Tensor& message) const;

 private:
  DirectionSpec spec_;
  int64_t num_parameters_;
  double max_abs_;
};

// Server side: the flat client-side weights, dense.
void EncodeWeights(const at::Tensor& weights, v1::Tensor* message);
// Client side: checks there are exactly num_parameters finite values.
at::Tensor DecodeWeights(const v1::Tensor& message, int64_t num_parameters);

}  // namespace cleave::protocol
