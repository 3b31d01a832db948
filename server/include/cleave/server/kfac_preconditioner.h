// K-FAC for the server's top model (`--optimizer kfac`): preconditions the gradients of its Linear
// and Conv2d layers with Kronecker factors before the underlying optimizer (SGD with momentum)
// steps, as kfac-pytorch's preconditioner does before `optimizer.step()`.
//
// LibTorch's C++ modules have no forward or backward hooks, so Forward() runs the Sequential
// itself, layer by layer (nested Sequentials too): on a factor step it keeps each K-FAC layer's
// input and registers a tensor hook on its output for the output's gradient. A TorchScript top
// (a ScriptHalf) is refused: its layers run inside the script and cannot be reached this way.
//
// Numbers a hospital sends reach the factors (its activations are layer inputs, its labels shape
// the gradients): a batch factor, an eigendecomposition or a preconditioned gradient that is not
// finite is skipped, and the previous factors, eigenbases (or the plain gradient) are kept.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cleave/core/split_model.h"
#include "cleave/server/kfac_communicator.h"
#include "cleave/server/kfac_factors.h"

namespace cleave::server {

// kfac-pytorch's defaults of the SC20 paper's code (its `KFAC` class: factor decay 0.95, KL clip
// 0.001, factors every 10 steps), except damping (0.001 there) and eigendecompositions (every 100
// there): with those, the top stalled at 84-86% on Fashion-MNIST; with 0.03 and 20 it reaches
// 90% (docs/PERFORMANCE.md, "K-FAC tuned").
struct KfacOptions {
  double damping = 0.03;
  double factor_decay = 0.95;   // running average: F = decay F + (1 - decay) F_batch
  int64_t factor_every = 10;    // steps between factor updates
  int64_t inverse_every = 20;   // steps between eigendecompositions
  double kl_clip = 0.001;
  // Layers with a factor larger than this (rows) are left to the plain optimizer (0: no limit):
  // an eigendecomposition costs O(n³) (3137 rows: about a minute here, see ARCHITECTURE.md).
  int64_t max_dim = 1024;
};

// Throws UserError naming the bad option.
void CheckKfacOptions(const KfacOptions& options);

// One preconditioned layer: its parameters, its factors and eigenbases (buffers of the state
// module, updated in place so that a checkpoint load lands in them) and this step's captures.
struct KfacLayer {
  std::string name;  // path in the Sequential, e.g. "1.1"
  torch::nn::Module* module = nullptr;
  bool conv = false;
  ConvGeometry geometry;              // conv only
  at::Tensor weight, bias;            // bias undefined without one
  at::Tensor a, g;                    // running factors
  at::Tensor qa, da, qg, dg;          // eigenbases of a and g
  at::Tensor input, output_gradient;  // captured this step (undefined when not captured)
};

struct KfacStepReport {
  bool factors_updated = false;
  bool eigen_updated = false;
  double kl_scale = 1.0;
  int factors_skipped = 0;    // layers whose batch factors were not finite
  int eigen_skipped = 0;      // layers whose eigendecomposition failed or was not finite
  int gradients_skipped = 0;  // layers whose preconditioned gradient was not finite (plain kept)
};

class KfacPreconditioner {
 public:
  // Throws UserError for bad options, a TorchScript top, or a top with no Linear or Conv2d layer
  // within `max_dim`. `communicator` null: a single server (LocalKfacCommunicator).
  KfacPreconditioner(torch::nn::Sequential layers, KfacOptions options,
                     std::shared_ptr<KfacCommunicator> communicator = nullptr);
  ~KfacPreconditioner();
  KfacPreconditioner(const KfacPreconditioner&) = delete;
  KfacPreconditioner& operator=(const KfacPreconditioner&) = delete;

  // The Sequential's forward; on a factor step (and with gradients on) captures what the factors
  // need. Captures of an earlier step that was never preconditioned are dropped.
  at::Tensor Forward(const at::Tensor& input);

  // After backward, before the optimizer steps: on a factor step folds this step's factors into
  // the running averages (and reduces them over replicas); on an inverse step recomputes the
  // eigenbases; then replaces each layer's gradients by the preconditioned ones, all scaled by
  // the KL clip for `learning_rate`. Counts the step.
  KfacStepReport Precondition(double learning_rate);

  // The factors, eigenbases and step count as buffers, for the server checkpoint.
  std::shared_ptr<torch::nn::Module> state() const { return state_; }
  int64_t steps() const;
  const std::vector<std::unique_ptr<KfacLayer>>& layers() const { return layers_; }
  const std::vector<std::string>& left_out() const { return left_out_; }
  const KfacOptions& options() const { return options_; }

 private:
  void Collect(const torch::nn::Sequential& sequential, const std::string& prefix);
  void AddLayer(std::unique_ptr<KfacLayer> layer, int64_t a_dim, int64_t g_dim);
  at::Tensor Run(torch::nn::Sequential& sequential, at::Tensor x, bool capture);
  int UpdateFactors();
  int UpdateEigen();

  torch::nn::Sequential sequential_;
  KfacOptions options_;
  std::shared_ptr<KfacCommunicator> communicator_;
  std::shared_ptr<torch::nn::Module> state_;
  at::Tensor steps_;  // int64 [1], a buffer of state_
  std::vector<std::unique_ptr<KfacLayer>> layers_;
  std::unordered_map<const torch::nn::Module*, KfacLayer*> by_module_;
  std::vector<std::string> left_out_;  // layers over max_dim, described
};

}  // namespace cleave::server
