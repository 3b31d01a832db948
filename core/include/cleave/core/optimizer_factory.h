// The optimizers both halves of a split model can use, by name, so that client and server (and
// their flags) agree on what "adam" and "sgd" mean.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/Tensor.h>

namespace torch::optim {
class Optimizer;
}

namespace cleave {

// "adam" (Adam with default betas), "adamw" (Adam with decoupled weight decay) or "sgd"
// (momentum 0.9); throws UserError otherwise. `weight_decay` is AdamW's decoupled decay, and an
// L2 term added to the gradient for adam and sgd.
std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& name,
                                                       std::vector<at::Tensor> parameters,
                                                       double learning_rate,
                                                       double weight_decay = 0);

}  // namespace cleave
