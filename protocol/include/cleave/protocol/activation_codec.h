// Cut-layer activations, client -> server. The client's encoder chooses the elements to send with
// the direction's compressor (over the whole batch, or per sample) and encodes the values that
// compressor gathered; the server's decoder validates the message and learns the positions sent,
// which the gradient codec (gradient_codec.h) uses on both ends.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::protocol {

// Which elements of a batch's activations went up: all of them (dense), or ascending flat
// positions. The client knows it from its selection, the server from the message.
struct SentPositions {
  bool all = true;
  std::vector<uint32_t> indices;  // when !all

  int64_t count(int64_t numel) const { return all ? numel : static_cast<int64_t>(indices.size()); }
};

// The client's choice: the positions and the activations' values there, gathered once.
struct ActivationSelection : SentPositions {
  std::vector<float> values;  // values[i] is the activation at indices[i] (when !all)
};

class ActivationEncoder {
 public:
  // Builds the direction's compressor (none: everything is sent, densely).
  ActivationEncoder(const DirectionSpec& spec, uint64_t seed);

  // The elements to send: chosen over the whole batch tensor, or, with spec.per_sample,
  // round(density * row size) in each batch row (dimension 0), so that every sample gets its
  // share of the budget. Either way one ascending list of flat positions.
  ActivationSelection Select(const at::Tensor& activations);
  // Dense when everything is sent, else the selection's values at its positions (sparse payload).
  void Encode(const at::Tensor& activations, const ActivationSelection& selection,
              v1::Tensor* message) const;
  const DirectionSpec& spec() const { return spec_; }

 private:
  std::vector<uint32_t> SelectPerSample(const at::Tensor& activations, std::vector<float>* values);

  DirectionSpec spec_;
  std::unique_ptr<Compressor> compressor_;  // null for Method::kNone
};

// What the server received: the activations (zeros where nothing was sent) and where they were.
struct ReceivedActivations {
  at::Tensor dense;
  SentPositions sent;
};

class ActivationDecoder {
 public:
  // `tensor` gives shapes and bounds; a sparse payload is accepted when the direction compresses.
  ActivationDecoder(const DirectionSpec& spec, TensorSpec tensor);
  // Throws InvalidInput (NotFinite, OutOfBounds) for anything the spec does not allow.
  ReceivedActivations Decode(const v1::Tensor& message) const;
  const TensorSpec& tensor_spec() const { return tensor_; }

 private:
  DirectionSpec spec_;
  TensorSpec tensor_;
};

}  // namespace cleave::protocol
