#include "cleave/core/optimizer_factory.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include "cleave/core/error.h"

namespace cleave {

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& name,
                                                       std::vector<at::Tensor> parameters,
                                                       double learning_rate, double weight_decay) {
  CLEAVE_CHECK_USER(learning_rate > 0, "learning rate must be > 0, got ", learning_rate);
  CLEAVE_CHECK_USER(weight_decay >= 0, "weight decay must be >= 0, got ", weight_decay);
  if (name == "adam") {
    return std::make_unique<torch::optim::Adam>(
        std::move(parameters), torch::optim::AdamOptions(learning_rate).weight_decay(weight_decay));
  }
  if (name == "adamw") {
    return std::make_unique<torch::optim::AdamW>(
        std::move(parameters),
        torch::optim::AdamWOptions(learning_rate).weight_decay(weight_decay));
  }
  if (name == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        std::move(parameters),
        torch::optim::SGDOptions(learning_rate).momentum(0.9).weight_decay(weight_decay));
  }
  throw UserError("unknown optimizer '" + name + "' (use adam, adamw or sgd)");
}

}  // namespace cleave
