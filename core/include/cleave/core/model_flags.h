// Command-line flags that describe the split model, shared by cleave-server, cleave-client and
// cleave-leakage so that the same words build the same model (and fingerprint) everywhere.
#pragma once

#include <CLI/CLI.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/core/split_model.h"

namespace cleave {

// "1x28x28" -> {1, 28, 28}; throws UserError on anything else.
inline std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, 'x')) {
    char* end = nullptr;
    const long long value = std::strtoll(part.c_str(), &end, 10);
    CLEAVE_CHECK_USER(!part.empty() && end != nullptr && *end == '\0' && value > 0,
                      "bad shape '", text, "' (expected positive sizes like 1x28x28)");
    shape.push_back(value);
  }
  CLEAVE_CHECK_USER(!shape.empty(), "bad shape '", text, "'");
  return shape;
}

struct ModelFlags {
  std::string architecture = "cnn";
  int cut = 1;
  std::string input_shape = "1x28x28";
  int64_t num_classes = 10;
  std::vector<int64_t> hidden;

  void Register(CLI::App& app) {
    app.add_option("--model", architecture, "Split model architecture: cnn (1x28x28 images) or mlp")
        ->check(CLI::IsMember({"cnn", "mlp"}))
        ->capture_default_str();
    app.add_option("--cut", cut, "Blocks that run on the client (cnn: 1..3, mlp: 1..hidden layers)")
        ->capture_default_str();
    app.add_option("--input-shape", input_shape,
                   "Shape of one input sample, e.g. 1x28x28 or 30 for 30 tabular features")
        ->capture_default_str();
    app.add_option("--classes", num_classes, "Number of label classes")->capture_default_str();
    app.add_option("--hidden", hidden, "mlp only: hidden layer widths (default 128 64)");
  }

  ModelSpec Spec() const {
    ModelSpec spec;
    spec.architecture = architecture;
    spec.cut = cut;
    spec.input_shape = ParseShape(input_shape);
    spec.num_classes = num_classes;
    spec.hidden = hidden;
    return spec;
  }
};

}  // namespace cleave
