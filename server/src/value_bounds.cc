#include "cleave/server/value_bounds.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <vector>

#include "cleave/core/error.h"

namespace cleave::server {

double DeriveActivationBound(const ModelSpec& spec, SplitModel model, uint64_t seed) {
  if (!model.bottom) return kActivationBoundWithoutBottom;
  at::NoGradGuard no_grad;
  // A generator of its own: drawing from the global one would change later dropout masks.
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  std::vector<int64_t> shape = {64};
  shape.insert(shape.end(), spec.input_shape.begin(), spec.input_shape.end());
  const at::Tensor inputs = at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat));
  const bool was_training = model.bottom->is_training();
  model.bottom->eval();
  const double largest = model.bottom->forward(inputs).abs().max().item<double>();
  model.bottom->train(was_training);
  return std::max(1000.0 * largest, 100.0);
}

double DeriveUpdateBound(const SplitModel& model) {
  if (!model.bottom || model.bottom->parameters().empty()) return 1.0;
  return std::max(100.0 * FlattenParameters(*model.bottom).abs().max().item<double>(), 1.0);
}

ValueBounds ResolveValueBounds(ValueBounds configured, const ModelSpec& spec,
                               const SplitModel& model, uint64_t seed) {
  CLEAVE_CHECK_USER(configured.activation_abs >= 0,
                    "the bound on activation values must be >= 0 (0: derived from the model)");
  CLEAVE_CHECK_USER(configured.update_abs >= 0,
                    "the bound on update values must be >= 0 (0: derived from the model)");
  ValueBounds bounds = configured;
  if (bounds.activation_abs == 0) bounds.activation_abs = DeriveActivationBound(spec, model, seed);
  if (bounds.update_abs == 0) bounds.update_abs = DeriveUpdateBound(model);
  return bounds;
}

}  // namespace cleave::server
