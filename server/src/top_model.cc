#include "cleave/server/top_model.h"

#include <ATen/ATen.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/optimizer.h>

#include <cmath>

#include "cleave/core/error.h"
#include "cleave/core/optimizer_factory.h"

namespace cleave::server {

namespace {

// The optimizer's second moment squares each gradient: beyond this it overflows float.
constexpr double kMaxGradientAbs = 1e18;

void CheckGradient(const at::Tensor& gradient, const char* what) {
  if (!gradient.defined()) return;
  const double largest = gradient.abs().max().item<double>();
  if (!std::isfinite(largest)) throw NotFinite(detail::Concat(what, " is not finite"));
  if (largest > kMaxGradientAbs) {
    throw OutOfBounds(detail::Concat(what, " reaches ", largest, ", beyond ", kMaxGradientAbs));
  }
}

}  // namespace

TopModel::TopModel(torch::nn::Sequential layers,
                   std::unique_ptr<torch::optim::Optimizer> optimizer,
                   std::unique_ptr<KfacPreconditioner> kfac)
    : layers_(std::move(layers)),
      optimizer_(std::move(optimizer)),
      device_(c10::kCPU),
      kfac_(std::move(kfac)) {
  const std::vector<at::Tensor> parameters = layers_->parameters();
  if (!parameters.empty()) device_ = parameters.front().device();
}

TopModel::~TopModel() = default;

TopModel::Step TopModel::BackwardThen(const at::Tensor& activations, const at::Tensor& labels,
                                      const std::function<void(const at::Tensor& input)>& then) {
  layers_->train();
  at::Tensor input = activations.to(device_).detach().requires_grad_(true);
  const at::Tensor targets = labels.to(device_);
  const at::Tensor logits = kfac_ ? kfac_->Forward(input) : layers_->forward(input);
  const at::Tensor loss = torch::nn::functional::cross_entropy(logits, targets);
  Step step;
  step.loss = loss.item<double>();
  optimizer_->zero_grad();
  try {
    if (!std::isfinite(step.loss)) {
      throw NotFinite("the loss of this batch is not finite; the model was not changed");
    }
    loss.backward();
    then(input);
  } catch (...) {
    optimizer_->zero_grad();
    throw;
  }
  step.cut_gradient = input.grad().to(c10::kCPU);
  step.correct = logits.argmax(1).eq(targets).sum().item<int64_t>();
  return step;
}

TopModel::Step TopModel::Train(const at::Tensor& activations, const at::Tensor& labels,
                               const std::function<double()>& admit) {
  return BackwardThen(activations, labels, [&](const at::Tensor& input) {
    CheckAndStep(input, input.size(0), admit);
  });
}

namespace {

// Each row's weight in a merged loss: w_i / rows_i for the rows of slice i, where
// w_i = rows_i scale_i / scaled_total.
at::Tensor RowWeights(const std::vector<TopModel::Slice>& slices, double scaled_total,
                      const at::TensorOptions& options) {
  std::vector<at::Tensor> parts;
  for (const TopModel::Slice& slice : slices) {
    parts.push_back(at::full({slice.rows}, slice.scale / scaled_total, options));
  }
  return at::cat(parts);
}

// Each slice's own loss, correct count and cut gradient (undone from its weight in the loss).
std::vector<TopModel::Step> SplitMerged(const std::vector<TopModel::Slice>& slices,
                                        double scaled_total, const at::Tensor& row_losses,
                                        const at::Tensor& hits, const at::Tensor& cut_gradient) {
  std::vector<TopModel::Step> steps;
  int64_t start = 0;
  for (const TopModel::Slice& slice : slices) {
    const int64_t end = start + slice.rows;
    const double weight = static_cast<double>(slice.rows) * slice.scale / scaled_total;
    TopModel::Step step;
    step.loss = row_losses.slice(0, start, end).mean().item<double>();
    step.correct = hits.slice(0, start, end).sum().item<int64_t>();
    step.cut_gradient = cut_gradient.slice(0, start, end).div(weight);
    steps.push_back(std::move(step));
    start = end;
  }
  return steps;
}

}  // namespace

std::vector<TopModel::Step> TopModel::TrainMerged(const at::Tensor& activations,
                                                  const at::Tensor& labels,
                                                  const std::vector<Slice>& slices) {
  return MergedPass(activations, labels, slices,
                    [&](const at::Tensor& input, int64_t rows, double scaled) {
                      CheckAndStep(input, rows, [&] { return scaled / static_cast<double>(rows); });
                    });
}

std::vector<TopModel::Step> TopModel::BackwardMerged(const at::Tensor& activations,
                                                     const at::Tensor& labels,
                                                     const std::vector<Slice>& slices) {
  return MergedPass(activations, labels, slices,
                    [&](const at::Tensor& input, int64_t, double) { CheckGradients(input); });
}

std::vector<TopModel::Step> TopModel::MergedPass(const at::Tensor& activations,
                                                 const at::Tensor& labels,
                                                 const std::vector<Slice>& slices,
                                                 const AfterBackward& after_backward) {
  int64_t rows = 0;
  double scaled = 0;
  for (const Slice& slice : slices) {
    CLEAVE_ENFORCE(slice.rows > 0 && slice.scale > 0 && slice.scale <= 1, "a merged slice of ",
                   slice.rows, " rows at scale ", slice.scale);
    rows += slice.rows;
    scaled += static_cast<double>(slice.rows) * slice.scale;
  }
  CLEAVE_ENFORCE(rows == activations.size(0) && rows == labels.size(0), "merged slices of ", rows,
                 " rows for a batch of ", activations.size(0));
  layers_->train();
  at::Tensor input = activations.to(device_).detach().requires_grad_(true);
  const at::Tensor targets = labels.to(device_);
  const at::Tensor logits = kfac_ ? kfac_->Forward(input) : layers_->forward(input);
  const at::Tensor row_losses = torch::nn::functional::cross_entropy(
      logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  const at::Tensor loss = (row_losses * RowWeights(slices, scaled, row_losses.options())).sum();
  optimizer_->zero_grad();
  try {
    if (!std::isfinite(loss.item<double>())) {
      throw NotFinite("the loss of this merged batch is not finite; the model was not changed");
    }
    loss.backward();
    after_backward(input, rows, scaled);
  } catch (...) {
    optimizer_->zero_grad();
    throw;
  }
  return SplitMerged(slices, scaled, row_losses.detach().to(c10::kCPU),
                     logits.argmax(1).eq(targets).to(c10::kCPU), input.grad().to(c10::kCPU));
}

TopModel::Step TopModel::Backward(const at::Tensor& activations, const at::Tensor& labels) {
  return BackwardThen(activations, labels,
                      [&](const at::Tensor& input) { CheckGradients(input); });
}

void TopModel::ApplyStep(double scale) {
  if (kfac_) kfac_->Precondition(optimizer_->param_groups().front().options().get_lr());
  ScaledStep(scale);
}

void TopModel::CheckGradients(const at::Tensor& input) const {
  if (input.defined()) CheckGradient(input.grad(), "the gradient at the cut");
  for (const at::Tensor& parameter : layers_->parameters()) {
    CheckGradient(parameter.grad(), "a gradient of the server's layers");
  }
}

TopModel::Forward TopModel::StartStep(const at::Tensor& activations) {
  layers_->train();
  Forward forward;
  forward.input = activations.to(device_).detach().requires_grad_(true);
  forward.output = kfac_ ? kfac_->Forward(forward.input) : layers_->forward(forward.input);
  if (!forward.output.isfinite().all().item<bool>()) {
    throw NotFinite("the server's layers give a non-finite output for this batch");
  }
  return forward;
}

at::Tensor TopModel::FinishStep(const Forward& forward, const at::Tensor& output_gradient,
                                const std::function<double()>& admit) {
  CLEAVE_ENFORCE(forward.output.sizes() == output_gradient.sizes(), "gradient of another shape");
  optimizer_->zero_grad();
  try {
    forward.output.backward(output_gradient.to(device_));
    CheckAndStep(forward.input, forward.input.size(0), admit);
  } catch (...) {
    optimizer_->zero_grad();
    throw;
  }
  return forward.input.grad().to(c10::kCPU);
}

void TopModel::CheckAndStep(const at::Tensor& input, int64_t samples,
                            const std::function<double()>& admit) {
  CheckGradient(input.grad(), "the gradient at the cut");
  for (const at::Tensor& parameter : layers_->parameters()) {
    CheckGradient(parameter.grad(), "a gradient of the server's layers");
  }
  const double scale = ReduceGradients(samples, admit());
  if (scale <= 0) return;  // no replica had samples
  if (kfac_) kfac_->Precondition(optimizer_->param_groups().front().options().get_lr());
  ScaledStep(scale);
}

double TopModel::ReduceGradients(int64_t samples, double scale) {
  if (!reducer_) return scale;
  std::vector<at::Tensor> gradients;
  for (const at::Tensor& parameter : layers_->parameters()) {
    if (parameter.grad().defined()) gradients.push_back(parameter.grad());
  }
  const auto local = static_cast<double>(samples);
  const StepWeight global = reducer_->Reduce(gradients, {local, local * scale});
  CLEAVE_ENFORCE(std::isfinite(global.samples) && std::isfinite(global.scaled_samples) &&
                     global.scaled_samples >= 0 && global.scaled_samples <= global.samples,
                 "the gradient reducer returned a weight out of range");
  return global.samples > 0 ? global.scaled_samples / global.samples : 0.0;
}

void TopModel::ScaledStep(double scale) {
  std::vector<at::Tensor> before;
  for (const at::Tensor& parameter : layers_->parameters()) {
    before.push_back(parameter.detach().clone());
  }
  optimizer_->step();
  at::NoGradGuard no_grad;
  bool finite = true;
  size_t i = 0;
  for (at::Tensor& parameter : layers_->parameters()) {
    // Scaling the step taken is scaling the learning rate for SGD (with momentum), Adam and
    // AdamW: their moments do not depend on it.
    if (scale != 1.0) parameter.sub_(before[i]).mul_(scale).add_(before[i]);
    finite = finite && parameter.isfinite().all().item<bool>();
    ++i;
  }
  if (!finite) {
    i = 0;
    for (at::Tensor& parameter : layers_->parameters()) parameter.copy_(before[i++]);
    throw NotFinite("the step would make the server's layers non-finite; not applied");
  }
}

at::Tensor TopModel::Output(const at::Tensor& activations) {
  at::NoGradGuard no_grad;
  layers_->eval();
  const at::Tensor output = layers_->forward(activations.to(device_)).to(c10::kCPU);
  CLEAVE_CHECK_INPUT(output.isfinite().all().item<bool>(),
                     "the server's layers give a non-finite output for this batch");
  return output;
}

TopModel::Evaluation TopModel::Evaluate(const at::Tensor& activations, const at::Tensor& labels) {
  at::NoGradGuard no_grad;
  layers_->eval();
  const at::Tensor logits = layers_->forward(activations.to(device_));
  const at::Tensor targets = labels.to(device_);
  const at::Tensor loss = torch::nn::functional::cross_entropy(
      logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  Evaluation evaluation;
  evaluation.loss_sum = loss.item<double>();
  const at::Tensor hits = logits.argmax(1).eq(targets);
  const at::Tensor per_class = at::bincount(targets.masked_select(hits), {}, logits.size(1))
                                   .to(at::kLong)
                                   .to(c10::kCPU)
                                   .contiguous();
  const int64_t* counts = per_class.data_ptr<int64_t>();
  evaluation.correct_per_class.assign(counts, counts + per_class.numel());
  evaluation.correct = hits.sum().item<int64_t>();
  return evaluation;
}

std::vector<at::Tensor> TopModel::ParameterCopies() const {
  std::vector<at::Tensor> copies;
  for (const at::Tensor& parameter : layers_->parameters()) {
    copies.push_back(parameter.detach().clone());
  }
  return copies;
}

std::unique_ptr<TopModel> MakeTopModel(torch::nn::Sequential layers,
                                       const TopOptimizerOptions& options) {
  if (options.name != "kfac") {
    auto optimizer = MakeOptimizer(options.name, layers->parameters(), options.learning_rate,
                                   options.weight_decay, options.momentum);
    return std::make_unique<TopModel>(std::move(layers), std::move(optimizer));
  }
  auto kfac = std::make_unique<KfacPreconditioner>(layers, options.kfac);
  auto optimizer = MakeOptimizer("sgd", layers->parameters(), options.learning_rate,
                                 options.weight_decay, options.momentum);
  return std::make_unique<TopModel>(std::move(layers), std::move(optimizer), std::move(kfac));
}

}  // namespace cleave::server
