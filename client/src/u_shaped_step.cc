// SplitTrainer's U-shaped calls (config "u-shaped"): a training step is two messages on the Train
// stream (a1 up, a2 down; d loss / d a2 up, d loss / d a1 down), an evaluation batch one call
// (a1 up, a2 down) with loss and accuracy computed here. No request carries labels.
#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>

#include "cleave/client/activation_compressor.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/error.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/version.h"

namespace cleave::client {

namespace {

void Count(DirectionBytes* direction, size_t message_bytes, const at::Tensor& tensor) {
  direction->messages += static_cast<int64_t>(message_bytes);
  direction->dense_fp32 += tensor.numel() * 4;
}

void CheckReply(uint32_t version, int64_t step, int64_t expected_step) {
  CLEAVE_CHECK_INPUT(version == protocol::kProtocolVersion,
                     "server answered Train with protocol version ", version,
                     "; this client speaks ", protocol::kProtocolVersion);
  CLEAVE_CHECK_INPUT(step == expected_step, "server answered step ", step, ", expected ",
                     expected_step);
}

std::vector<int64_t> SizesOf(const at::Tensor& tensor) {
  return std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end());
}

}  // namespace

SplitTrainer::StepResult SplitTrainer::UShapedStep(const at::Tensor& inputs,
                                                   const at::Tensor& labels, double* dcor_sum) {
  UShapedBytes& bytes = u_shaped_->bytes();
  const at::Tensor activations = SentActivations(inputs);
  const SelectedActivations selected = compressor_->Select(activations);
  v1::TrainRequest up;  // a1, and no labels: they stay here
  up.set_protocol_version(protocol::kProtocolVersion);
  up.set_session_id(session_id_);
  up.set_step(step_);
  up.set_model_version(model_version_);
  compressor_->Encode(activations, selected, up.mutable_activations());
  const v1::TrainReply middle = link_.TrainStep(up);
  CheckReply(middle.protocol_version(), middle.step(), step_);
  Count(&bytes.activations_up, up.ByteSizeLong(), activations);
  counters_.dense_fp32_bytes += activations.numel() * 4;
  counters_.elements_total += activations.numel();
  counters_.elements_sent += selected.count(activations.numel());

  const protocol::ReceivedActivations output =
      u_shaped_->DecodeMiddleOutput(middle.middle_output(), inputs.size(0));
  Count(&bytes.middle_output_down, middle.ByteSizeLong(), output.dense);
  optimizer_->zero_grad();
  const UShapedTail::Step tail = u_shaped_->Backward(output.dense, labels);

  v1::TrainRequest back;  // d loss / d a2
  back.set_protocol_version(protocol::kProtocolVersion);
  back.set_session_id(session_id_);
  back.set_step(step_);
  back.set_model_version(model_version_);
  u_shaped_->EncodeMiddleGradient(tail.middle_gradient.to(at::kCPU), output.sent,
                                  back.mutable_middle_gradient());
  const v1::TrainReply reply = link_.TrainStep(back);
  CheckReply(reply.protocol_version(), reply.step(), step_);
  Count(&bytes.middle_gradient_up, back.ByteSizeLong(), tail.middle_gradient);

  const at::Tensor gradient =
      gradient_decoder_->Decode(reply.gradients(), SizesOf(activations), selected)
          .to(options_.device);
  Count(&bytes.gradient_down, reply.ByteSizeLong(), gradient);
  BackwardAtCut(inputs, activations, selected, gradient, dcor_sum);
  SetLearningRate(*optimizer_, options_.schedule.At(options_.learning_rate, step_));
  optimizer_->step();  // bottom and tail
  ++step_;
  step_losses_.push_back(tail.loss);
  return {tail.loss, tail.correct, labels.size(0), reply.round_closing()};
}

v1::EvaluateReply SplitTrainer::UShapedEvaluateBatch(const at::Tensor& activations,
                                                     const SelectedActivations& selected,
                                                     const at::Tensor& labels, EvalStats* stats) {
  v1::EvaluateRequest request;  // no labels
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session_id_);
  compressor_->Encode(activations, selected, request.mutable_activations());
  const v1::EvaluateReply answer = link_.Evaluate(request);
  CLEAVE_CHECK_INPUT(answer.protocol_version() == protocol::kProtocolVersion,
                     "server answered Evaluate with protocol version ", answer.protocol_version());
  CLEAVE_CHECK_INPUT(answer.count() == labels.size(0), "server evaluated ", answer.count(),
                     " samples, sent ", labels.size(0));
  UShapedBytes& bytes = u_shaped_->bytes();
  Count(&bytes.activations_up, request.ByteSizeLong(), activations);
  counters_.dense_fp32_bytes += activations.numel() * 4;
  const at::Tensor output =
      u_shaped_->DecodeMiddleOutput(answer.middle_output(), labels.size(0)).dense;
  Count(&bytes.middle_output_down, answer.ByteSizeLong(), output);

  const int64_t classes = options_.model.num_classes;
  const UShapedTail::Evaluation evaluation = u_shaped_->Evaluate(output, labels, classes);
  const at::Tensor batch_counts = at::bincount(labels.to(at::kLong), {}, classes).contiguous();
  const int64_t* in_batch = batch_counts.data_ptr<int64_t>();
  for (int64_t c = 0; c < classes; ++c) {
    stats->samples_per_class[c] += in_batch[c];
    stats->correct_per_class[c] += evaluation.correct_per_class[c];
  }
  stats->samples += labels.size(0);
  v1::EvaluateReply local;  // what the vanilla server would have answered
  local.set_protocol_version(protocol::kProtocolVersion);
  local.set_loss_sum(evaluation.loss_sum);
  local.set_correct(evaluation.correct);
  local.set_count(labels.size(0));
  return local;
}

}  // namespace cleave::client
