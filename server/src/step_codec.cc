#include "cleave/server/step_codec.h"

#include <ATen/ATen.h>

#include "cleave/core/error.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/version.h"

namespace cleave::server {

protocol::TensorSpec ActivationTensorSpec(const std::vector<int64_t>& cut_shape, int64_t max_batch,
                                          double max_abs) {
  protocol::TensorSpec spec;
  spec.sample_shape = cut_shape;
  spec.max_batch = max_batch;
  spec.max_abs = max_abs;  // sparse payloads: as the link spec says (ActivationDecoder)
  return spec;
}

protocol::TensorSpec LabelTensorSpec(int64_t max_batch, int64_t num_classes) {
  protocol::TensorSpec spec;
  spec.dtype = v1::Tensor::INT64;
  spec.max_batch = max_batch;
  spec.int_upper_bound = num_classes;
  return spec;
}

StepCodec::StepCodec(const protocol::LinkSpec& link, const protocol::TensorSpec& activations,
                     const protocol::TensorSpec& labels, uint64_t seed)
    : activations_(link.activations, activations),
      labels_(labels),
      gradients_(std::make_unique<protocol::GradientEncoder>(link.gradients, seed)) {}

StepCodec::~StepCodec() = default;

StepCodec::Batch StepCodec::Decode(const v1::TrainRequest& request) const {
  Batch batch;
  batch.activations = activations_.Decode(request.activations());
  batch.labels = protocol::DecodeTensor(request.labels(), labels_).dense;
  CLEAVE_CHECK_INPUT(batch.labels.size(0) == batch.activations.dense.size(0), "labels have batch ",
                     batch.labels.size(0), ", activations ", batch.activations.dense.size(0));
  return batch;
}

v1::TrainReply StepCodec::Encode(const v1::TrainRequest& request, const Batch& batch,
                                 const TopModel::Step& step, bool round_closing,
                                 int64_t server_step) {
  v1::TrainReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_server_step(server_step);
  reply.set_step(request.step());
  reply.set_model_version(request.model_version());
  reply.set_loss(step.loss);
  reply.set_correct(step.correct);
  reply.set_round_closing(round_closing);
  gradients_->Encode(step.cut_gradient, batch.activations.sent, reply.mutable_gradients());
  return reply;
}

}  // namespace cleave::server
