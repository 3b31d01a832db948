// The gradient at the cut, server -> client, relative to the activations that went up (the
// gradient of a masked activation is zero outside the mask). Three payloads, chosen by the link
// spec and the positions sent, the same way on both ends:
//   gradients not compressed, activations dense:  dense;
//   gradients not compressed, activations sparse: values only, at the sent positions, in order;
//   gradients compressed: sparse, chosen by the gradients' compressor over the values at the sent
//     positions (indices relative to them), or over the whole tensor when the activations were
//     dense (flat indices).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"

namespace cleave::protocol {

// Server side.
class GradientEncoder {
 public:
  // Builds the gradients' compressor once (none: no compressor).
  GradientEncoder(const DirectionSpec& spec, uint64_t seed);
  // `gradient` has the activations' shape; `sent` is what ActivationDecoder learned.
  void Encode(const at::Tensor& gradient, const SentPositions& sent, v1::Tensor* message);
  const DirectionSpec& spec() const { return spec_; }

 private:
  DirectionSpec spec_;
  std::unique_ptr<Compressor> compressor_;  // null for Method::kNone
};

// Client side.
class GradientDecoder {
 public:
  explicit GradientDecoder(const DirectionSpec& spec);
  // The dense gradient of `shape` (the activations'), zeros where nothing came back. Throws
  // InvalidInput for a payload the spec does not produce, a wrong shape or count, an index out of
  // range or a value that is not finite.
  at::Tensor Decode(const v1::Tensor& message, const std::vector<int64_t>& shape,
                    const SentPositions& sent) const;
  const DirectionSpec& spec() const { return spec_; }

 private:
  DirectionSpec spec_;
};

}  // namespace cleave::protocol
