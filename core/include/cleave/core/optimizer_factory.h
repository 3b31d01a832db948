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

// "adam" (Adam with default betas) or "sgd" (with `momentum`, 0.9 unless given); throws
// UserError otherwise (and for a learning rate <= 0 or a momentum outside [0, 1)).
std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& name,
                                                       std::vector<at::Tensor> parameters,
                                                       double learning_rate, double momentum = 0.9);

}  // namespace cleave
