// The server's layers and their optimizer. A training step is committed only when it is known to
// be finite: the loss and every gradient are checked before the optimizer steps, and the layers
// after it (restored if not finite). A stale step moves the layers 1/(1+s) as far, by scaling
// the step the optimizer took rather than rewriting its learning rate. Not thread-safe: the
// caller serialises calls. The layers may live on a GPU (moved there before the optimizer was
// made): inputs are moved to their device, and what goes back to the wire comes back to the host.
// With K-FAC (`--optimizer kfac`) the forward pass runs through the KfacPreconditioner, which
// preconditions the gradients before the optimizer (SGD) steps. TrainMerged takes several
// hospitals' steps in one forward/backward and one optimizer step (step_merger.h).
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cleave/core/split_model.h"
#include "cleave/server/kfac_preconditioner.h"

namespace torch::optim {
class Optimizer;
}

namespace cleave::server {

// How the top trains: "adam", "adamw", "sgd" (with `momentum`) or "kfac" (K-FAC
// preconditioning, then SGD with `momentum`).
struct TopOptimizerOptions {
  std::string name = "adam";
  double learning_rate = 1e-3;
  double momentum = 0.9;
  KfacOptions kfac;
  double weight_decay = 0;  // see MakeOptimizer
};

// The weight of a step's gradients: its samples, and its samples times their staleness scales
// (equal without staleness).
struct StepWeight {
  double samples = 0;
  double scaled_samples = 0;
};

// The one place between a step's backward pass and its optimizer step where replicas of the
// server can combine their gradients (CheckAndStep calls it, for Train, TrainMerged and
// FinishStep alike, after the gradients were checked finite and the step admitted, before K-FAC
// preconditions and the optimizer steps). `gradients`: the layers' parameters' gradients (the
// undefined ones left out), those of this server's loss, the scaled_samples-weighted mean over
// its samples; `local`: this server's weight. Reduce replaces the gradients in place with the
// scaled_samples-weighted mean over all replicas and returns the summed weight; the step then
// moves scaled_samples / samples as far as a fresh step (a step whose summed samples is 0 is
// skipped). Without a reducer the local weight is the global one.
class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  virtual StepWeight Reduce(const std::vector<at::Tensor>& gradients, StepWeight local) = 0;
};

class TopModel {
 public:
  // `kfac` (optional) must have been built on `layers`.
  TopModel(torch::nn::Sequential layers, std::unique_ptr<torch::optim::Optimizer> optimizer,
           std::unique_ptr<KfacPreconditioner> kfac = nullptr);
  ~TopModel();

  struct Step {
    at::Tensor cut_gradient;  // d loss / d activations, the activations' shape
    double loss = 0;
    int64_t correct = 0;
  };
  // One step on a batch of cut activations. `admit` runs after the loss and the gradients were
  // checked, before the layers move; it returns the step's scale in (0, 1] or throws to refuse.
  // Throws NotFinite / OutOfBounds (core/error.h) when the loss or a gradient is not finite or
  // too large for the optimizer's moments (nothing changed), or when the step's result is not
  // finite (the layers restored).
  Step Train(const at::Tensor& activations, const at::Tensor& labels,
             const std::function<double()>& admit);

  // Several hospitals' steps as one (step_merger.h): `activations` and `labels` are their
  // batches concatenated, `slices` their sizes (rows, in order, summing to the batch) and
  // staleness scales in (0, 1]. The loss is sum_i w_i L_i, L_i the mean cross-entropy of slice
  // i and w_i = rows_i scale_i / sum_j rows_j scale_j, and the step moves
  // sum_i rows_i scale_i / sum_i rows_i as far as a fresh one: under SGD exactly the step of the
  // loss sum_i scale_i (rows_i / N) L_i, each hospital's loss weighted by its samples and its
  // staleness. Returns one Step per slice: its own loss and correct, and as its cut gradient
  // d L_i / d (its activations), what a step of its own would have returned. The slices were
  // admitted before: there is no admit. Throws as Train (nothing changed).
  struct Slice {
    int64_t rows = 0;
    double scale = 1.0;
  };
  std::vector<Step> TrainMerged(const at::Tensor& activations, const at::Tensor& labels,
                                const std::vector<Slice>& slices);
  // Not owned; null (the default) for a server without replicas.
  void SetGradientReducer(GradientReducer* reducer) { reducer_ = reducer; }

  // Train in two halves, for replicas that average the gradients in between themselves
  // (replicated_top.h; the GradientReducer is not called): Backward runs the forward and
  // backward pass and checks the loss and every gradient as Train does (throwing as Train, the
  // gradients then cleared), leaving the batch's gradients in the layers' grads; ApplyStep
  // preconditions (K-FAC) and steps on whatever the grads hold, scaled by `scale` in (0, 1], and
  // restores the layers when the result is not finite (NotFinite).
  Step Backward(const at::Tensor& activations, const at::Tensor& labels);
  void ApplyStep(double scale);
  // Replicated merged steps: TrainMerged's forward and backward pass and its checks (throwing
  // as TrainMerged, the gradients then cleared), without the step: the layers' grads hold the
  // gradient of sum_i w_i L_i (w_i = rows_i scale_i / sum_j rows_j scale_j), the local batch's
  // sum_j rows_j scale_j-weighted mean, for the replicas to average; ApplyStep then steps.
  std::vector<Step> BackwardMerged(const at::Tensor& activations, const at::Tensor& labels,
                                   const std::vector<Slice>& slices);

  // U-shaped: the server's layers are the middle, and a step spans two calls. StartStep runs the
  // forward pass on a batch of cut activations (the graph is kept in the result); FinishStep
  // takes d loss / d output from the hospital, checks it as Train does, steps, and returns the
  // gradient at the cut. No other step may run on the layers between the two (the optimizer
  // changes the weights the graph saved): the caller gives the layers to one pending step at a
  // time. StartStep throws NotFinite for a non-finite output; FinishStep as Train.
  struct Forward {
    at::Tensor input;   // the cut activations, requiring grad
    at::Tensor output;  // the middle's output, part of the graph
  };
  Forward StartStep(const at::Tensor& activations);
  at::Tensor FinishStep(const Forward& forward, const at::Tensor& output_gradient,
                        const std::function<double()>& admit);
  // U-shaped evaluation: the layers' output in eval mode, without a graph. Throws NotFinite.
  at::Tensor Output(const at::Tensor& activations);

  struct Evaluation {
    double loss_sum = 0;
    int64_t correct = 0;
    std::vector<int64_t> correct_per_class;  // index = label, one entry per logit; sums to correct
  };
  Evaluation Evaluate(const at::Tensor& activations, const at::Tensor& labels);

  const torch::nn::Sequential& layers() const { return layers_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  std::vector<at::Tensor> ParameterCopies() const;
  // Null unless the top trains with K-FAC; its state() goes into the checkpoint.
  KfacPreconditioner* kfac() const { return kfac_.get(); }
  std::shared_ptr<torch::nn::Module> kfac_state() const { return kfac_ ? kfac_->state() : nullptr; }

 private:
  // Forward and backward on one batch (the gradients are zeroed first), then `then(input)` with
  // the cut input whose gradient is set; a loss that is not finite, or anything `then` throws,
  // leaves the gradients zeroed and is rethrown. Train and Backward differ only in `then`.
  Step BackwardThen(const at::Tensor& activations, const at::Tensor& labels,
                    const std::function<void(const at::Tensor& input)>& then);
  // Checks the gradients at `input` and of the layers, asks `admit` for the scale, lets the
  // reducer (if any) combine the gradients of `samples` samples, steps and restores the layers
  // if the result is not finite.
  void CheckAndStep(const at::Tensor& input, int64_t samples,
                    const std::function<double()>& admit);
  // TrainMerged and BackwardMerged: the merged forward and backward pass, then
  // `after_backward(input, rows, sum of rows x scale)` (checks, and the step if any).
  using AfterBackward = std::function<void(const at::Tensor& input, int64_t rows, double scaled)>;
  std::vector<Step> MergedPass(const at::Tensor& activations, const at::Tensor& labels,
                               const std::vector<Slice>& slices,
                               const AfterBackward& after_backward);
  // Checks the gradients at `input` (if defined) and of the layers.
  void CheckGradients(const at::Tensor& input) const;
  // The scale of the step (0: skip it) after the reducer, if any, combined the gradients.
  double ReduceGradients(int64_t samples, double scale);
  // Takes the optimizer step scaled by `scale`; restores the layers if it is not finite.
  void ScaledStep(double scale);

  torch::nn::Sequential layers_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  c10::Device device_;  // of the layers' parameters
  std::unique_ptr<KfacPreconditioner> kfac_;
  GradientReducer* reducer_ = nullptr;
};

// The top model with the optimizer `options` name. Throws UserError for an unknown name, bad
// K-FAC options, or K-FAC on a top it cannot precondition (see KfacPreconditioner).
std::unique_ptr<TopModel> MakeTopModel(torch::nn::Sequential layers,
                                       const TopOptimizerOptions& options);

}  // namespace cleave::server
