#include "cleave/test_support/script_halves.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/api/module.h>

#include <filesystem>
#include <tuple>

#include "cleave/core/script_half.h"

namespace cleave::test_support {

namespace {

constexpr int64_t kCutWidth = 4;
constexpr int64_t kMiddleWidth = 8;

std::string PartPath(const std::string& dir, const std::string& name, const char* part) {
  return (std::filesystem::path(dir) / (name + "_" + part + ".pt")).string();
}

torch::jit::Module Linear(const std::string& name, int64_t in, int64_t out,
                          const at::Generator& generator, const std::string& after) {
  torch::jit::Module module("__torch__." + name);
  module.register_attribute("training", c10::BoolType::get(), true);
  const double scale = 1.0 / std::sqrt(static_cast<double>(in));
  module.register_parameter("weight", (at::randn({out, in}, generator) * scale).requires_grad_(),
                            false);
  module.register_parameter("bias", at::zeros({out}).requires_grad_(), false);
  module.define("def forward(self, x):\n    y = torch.linear(x, self.weight, self.bias)\n" + after);
  return module;
}

}  // namespace

ScriptHalfPaths WriteScriptHalves(const std::string& dir, const std::string& name,
                                  const std::string& split_id, int64_t features, int64_t classes,
                                  uint64_t seed) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  ScriptHalfPaths paths{PartPath(dir, name, "bottom"), PartPath(dir, name, "top"), ""};
  const torch::jit::Module bottom =
      Linear("TestBottom", features, kCutWidth, generator,
             "    return torch.dropout(torch.relu(y), 0.1, self.training)\n");
  const torch::jit::Module top = Linear("TestTop", kCutWidth, classes, generator, "    return y\n");
  ScriptMeta meta{"bottom", {features}, {kCutWidth}, classes, split_id};
  bottom.save(paths.bottom, {{kScriptMetaFile, ScriptMetaToJson(meta)}});
  meta.half = "top";
  top.save(paths.top, {{kScriptMetaFile, ScriptMetaToJson(meta)}});
  return paths;
}

ScriptHalfPaths WriteUShapedScriptParts(const std::string& dir, const std::string& name,
                                        const std::string& split_id, int64_t features,
                                        int64_t classes, uint64_t seed) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  ScriptHalfPaths paths{PartPath(dir, name, "bottom"), PartPath(dir, name, "top"),
                        PartPath(dir, name, "tail")};
  const torch::jit::Module bottom =
      Linear("TestBottom", features, kCutWidth, generator,
             "    return torch.dropout(torch.relu(y), 0.1, self.training)\n");
  const torch::jit::Module middle =
      Linear("TestMiddle", kCutWidth, kMiddleWidth, generator, "    return torch.relu(y)\n");
  const torch::jit::Module tail =
      Linear("TestTail", kMiddleWidth, classes, generator, "    return y\n");
  ScriptMeta meta{"bottom", {features}, {kCutWidth}, classes, split_id, {kMiddleWidth}, 1};
  for (const auto& [module, half, path] : {std::tuple{&bottom, "bottom", paths.bottom},
                                           {&middle, "top", paths.top},
                                           {&tail, "tail", paths.tail}}) {
    meta.half = half;
    module->save(path, {{kScriptMetaFile, ScriptMetaToJson(meta)}});
  }
  return paths;
}

}  // namespace cleave::test_support
