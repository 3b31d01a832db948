#include "cleave/leakage/wire_recorder.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::leakage {

at::Tensor DecodeDenseMessage(const v1::Tensor& message) {
  CLEAVE_ENFORCE(message.payload_case() == v1::Tensor::kDense && message.shape_size() >= 1,
                 "label leakage records dense tensors only (run an uncompressed link)");
  protocol::TensorSpec spec;
  spec.dtype = message.dtype();
  spec.sample_shape.assign(message.shape().begin() + 1, message.shape().end());
  spec.max_batch = std::max<int64_t>(1, message.shape(0));
  return protocol::DecodeTensor(message, spec).dense;
}

WireRecorder::WireRecorder(protocol::SplitLink& inner, Options options, WireRecord* record)
    : inner_(inner), options_(options), record_(record) {
  CLEAVE_ENFORCE(record_ != nullptr, "a WireRecorder needs a record");
}

void WireRecorder::Defend(const privacy::GradientDefence& defence, v1::Tensor* message) {
  if (defence.kind == privacy::GradientDefenceKind::kNone) return;
  const at::Tensor defended = privacy::ApplyGradientDefence(
      DecodeDenseMessage(*message), defence, options_.seed * 1000003u + defended_++);
  message->Clear();
  protocol::EncodeDense(defended.contiguous(), message);
}

v1::TrainReply WireRecorder::TrainStep(const v1::TrainRequest& request) {
  v1::TrainRequest sent = request;
  if (sent.has_activations()) {
    ++record_->train_requests;
    if (sent.has_labels()) ++record_->train_requests_with_labels;
    if (sent.has_labels() && options_.record_labels) {
      record_->labels.push_back(DecodeDenseMessage(sent.labels()));
    }
  }
  if (sent.has_middle_gradient()) {
    Defend(options_.defend_middle_gradient, sent.mutable_middle_gradient());
  }
  v1::TrainReply reply = inner_.TrainStep(sent);
  if (reply.has_gradients()) {
    Defend(options_.defend_reply_gradient, reply.mutable_gradients());
    if (options_.record_reply_gradients) {
      record_->reply_gradients.push_back(DecodeDenseMessage(reply.gradients()));
    }
  }
  return reply;
}

}  // namespace cleave::leakage
