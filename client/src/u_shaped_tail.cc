#include "cleave/client/u_shaped_tail.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/loss.h>

#include <cmath>

#include "cleave/core/error.h"

namespace cleave::client {

namespace {

protocol::TensorSpec MiddleOutputSpec(const std::vector<int64_t>& middle_shape, int64_t max_batch) {
  protocol::TensorSpec spec;
  spec.sample_shape = middle_shape;
  spec.max_batch = max_batch;
  spec.max_abs = kMaxMiddleOutputAbs;
  return spec;
}

}  // namespace

UShapedTail::UShapedTail(torch::nn::Sequential tail, const protocol::LinkSpec& link,
                         const std::vector<int64_t>& middle_shape, int64_t max_batch, uint64_t seed,
                         std::shared_ptr<privacy::GradientDefender> label_defender)
    : tail_(std::move(tail)),
      middle_output_(link.activations, MiddleOutputSpec(middle_shape, max_batch)),
      middle_gradient_(link.gradients, seed + 2),
      label_defender_(std::move(label_defender)) {
  CLEAVE_ENFORCE(tail_, "a U-shaped client needs its tail");
}

protocol::ReceivedActivations UShapedTail::DecodeMiddleOutput(const v1::Tensor& message,
                                                              int64_t batch) const {
  protocol::ReceivedActivations received = middle_output_.Decode(message);
  CLEAVE_CHECK_INPUT(received.dense.size(0) == batch, "server sent the middle's output for ",
                     received.dense.size(0), " samples, the batch has ", batch);
  return received;
}

UShapedTail::Step UShapedTail::Backward(const at::Tensor& middle_output, const at::Tensor& labels) {
  tail_->train();
  const at::Tensor input = middle_output.to(Device()).detach().requires_grad_(true);
  const at::Tensor logits = tail_->forward(input);
  const at::Tensor targets = labels.to(logits.device());
  const at::Tensor loss = torch::nn::functional::cross_entropy(logits, targets);
  Step step;
  step.loss = loss.item<double>();
  CLEAVE_CHECK_INPUT(std::isfinite(step.loss),
                     "the loss on the server's middle output is not finite");
  loss.backward();
  step.middle_gradient = input.grad();
  step.correct = logits.argmax(1).eq(targets).sum().item<int64_t>();
  return step;
}

c10::Device UShapedTail::Device() const {
  const std::vector<at::Tensor> parameters = tail_->parameters();
  return parameters.empty() ? c10::Device(c10::kCPU) : parameters.front().device();
}

void UShapedTail::EncodeMiddleGradient(const at::Tensor& gradient,
                                       const protocol::SentPositions& sent, v1::Tensor* message) {
  middle_gradient_.Encode(label_defender_ ? label_defender_->Apply(gradient) : gradient, sent,
                          message);
}

UShapedTail::Evaluation UShapedTail::Evaluate(const at::Tensor& middle_output,
                                              const at::Tensor& labels, int64_t num_classes) {
  at::NoGradGuard no_grad;
  tail_->eval();
  const at::Tensor logits = tail_->forward(middle_output.to(Device())).to(at::kCPU);
  const at::Tensor loss = torch::nn::functional::cross_entropy(
      logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  Evaluation evaluation;
  evaluation.loss_sum = loss.item<double>();
  const at::Tensor hits = logits.argmax(1).eq(labels);
  const at::Tensor per_class =
      at::bincount(labels.masked_select(hits), {}, num_classes).to(at::kLong).contiguous();
  const int64_t* counts = per_class.data_ptr<int64_t>();
  evaluation.correct_per_class.assign(counts, counts + per_class.numel());
  evaluation.correct = hits.sum().item<int64_t>();
  return evaluation;
}

}  // namespace cleave::client
