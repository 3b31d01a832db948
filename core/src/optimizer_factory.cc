#include "cleave/core/optimizer_factory.h"

#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include "cleave/core/error.h"

namespace cleave {

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& name,
                                                       std::vector<at::Tensor> parameters,
                                                       double learning_rate, double momentum) {
  CLEAVE_CHECK_USER(learning_rate > 0, "learning rate must be > 0, got ", learning_rate);
  CLEAVE_CHECK_USER(momentum >= 0 && momentum < 1, "momentum must be in [0, 1), got ", momentum);
  if (name == "adam") {
    return std::make_unique<torch::optim::Adam>(std::move(parameters),
                                                torch::optim::AdamOptions(learning_rate));
  }
  if (name == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        std::move(parameters), torch::optim::SGDOptions(learning_rate).momentum(momentum));
  }
  throw UserError("unknown optimizer '" + name + "' (use adam or sgd)");
}

}  // namespace cleave
