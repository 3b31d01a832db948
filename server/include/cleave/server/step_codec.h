// The Train call's messages on the server: a request's activations and labels decoded and checked
// (cut shape, batch limit, value bound, label range; never trusting the peer), and a step's
// result encoded into the reply, the gradient at the positions the activations took
// (protocol/gradient_codec.h).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/top_model.h"

namespace cleave::protocol {
class GradientEncoder;
}

namespace cleave::server {

// What a batch's cut activations must look like: `cut_shape` per sample, at most `max_batch` rows,
// values at most `max_abs` in magnitude.
protocol::TensorSpec ActivationTensorSpec(const std::vector<int64_t>& cut_shape, int64_t max_batch,
                                          double max_abs);
// Labels: int64 class indices below `num_classes`, at most `max_batch` of them.
protocol::TensorSpec LabelTensorSpec(int64_t max_batch, int64_t num_classes);

class StepCodec {
 public:
  StepCodec(const protocol::LinkSpec& link, const protocol::TensorSpec& activations,
            const protocol::TensorSpec& labels, uint64_t seed);
  ~StepCodec();

  struct Batch {
    protocol::ReceivedActivations activations;
    at::Tensor labels;
    int64_t size() const { return labels.size(0); }
  };
  // Throws InvalidInput (NotFinite, OutOfBounds) for what does not fit.
  Batch Decode(const v1::TrainRequest& request) const;
  // The reply to `request` for the step taken on `batch`.
  v1::TrainReply Encode(const v1::TrainRequest& request, const Batch& batch,
                        const TopModel::Step& step, bool round_closing, int64_t server_step);

 private:
  protocol::ActivationDecoder activations_;
  protocol::TensorSpec labels_;
  std::unique_ptr<protocol::GradientEncoder> gradients_;
};

}  // namespace cleave::server
