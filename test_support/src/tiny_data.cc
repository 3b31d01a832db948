#include "cleave/test_support/tiny_data.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace cleave::test_support {

Dataset LinearRuleData(int64_t rows, uint64_t seed, int64_t features, int64_t classes) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  Dataset data;
  data.inputs = at::randn({rows, features}, generator, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor rule =
      at::arange(features * classes, at::kFloat).reshape({features, classes}).sin();
  data.labels = data.inputs.matmul(rule).argmax(1);
  data.num_classes = classes;
  return data;
}

Dataset FirstFeatureData(int64_t rows, uint64_t seed, int64_t features) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  Dataset data;
  data.inputs = at::randn({rows, features}, generator, at::TensorOptions().dtype(at::kFloat));
  data.labels = (data.inputs.select(1, 0) > 0).to(at::kLong);
  data.num_classes = 2;
  return data;
}

Dataset RandomData(int64_t rows, int64_t features, int64_t classes, uint64_t seed) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  Dataset data;
  data.inputs = at::randn({rows, features}, generator, at::kFloat);
  data.labels = at::randint(0, classes, {rows}, generator, at::kLong);
  data.num_classes = classes;
  return data;
}

Dataset SmoothImages(int64_t rows, uint64_t seed) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  Dataset data;
  data.inputs = at::upsample_bilinear2d(
      at::rand({rows, 1, 7, 7}, generator, at::TensorOptions().dtype(at::kFloat)), {28, 28}, false);
  const at::Tensor mean = data.inputs.mean({1, 2, 3});
  data.labels = (mean > mean.median()).to(at::kLong);
  data.num_classes = 2;
  return data;
}

Dataset NoiseImages(int64_t rows, uint64_t seed) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  Dataset data;
  data.inputs = at::rand({rows, 1, 28, 28}, generator, at::TensorOptions().dtype(at::kFloat));
  data.labels = at::randint(0, 10, {rows}, generator, at::kLong);
  data.num_classes = 10;
  return data;
}

ModelSpec MlpSpec(int64_t features, std::vector<int64_t> hidden, int64_t classes) {
  ModelSpec spec;
  spec.architecture = "mlp";
  spec.input_shape = {features};
  spec.hidden = std::move(hidden);
  spec.num_classes = classes;
  spec.cut = 1;
  return spec;
}

ModelSpec CnnSpec(int cut) {
  ModelSpec spec;
  spec.architecture = "cnn";
  spec.cut = cut;
  return spec;
}

}  // namespace cleave::test_support
