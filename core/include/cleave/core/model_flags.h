// Command-line flags that describe the split model, shared by cleave-server, cleave-client and
// cleave-leakage so that the same words build the same model (and fingerprint) everywhere.
#pragma once

#include <CLI/CLI.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/core/split_config.h"
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
  std::string bottom_script, top_script;  // TorchScript halves (.pt) instead of the zoo
  std::string tail_script;                // U-shaped TorchScript exports: the client's tail.pt
  std::string config = "vanilla";         // split configuration (RegisterSplitConfig)
  int tail_layers = 1;                    // u-shaped: blocks of the top kept at the hospital
  CLI::Option* tail_option = nullptr;

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

  // The TorchScript halves this end may hold, after Register: --bottom (the client's half; on
  // the server, for rounds: the starting client-side weights) and, with `top`, --top (the
  // server's). Either replaces the zoo's flags, which it excludes.
  void RegisterScript(CLI::App& app, bool top) {
    std::vector<CLI::Option*> halves = {app.add_option(
        "--bottom", bottom_script,
        top ? "The client-side TorchScript half (.pt, from tools/export/cleave_export.py): the "
              "starting client-side weights for --schedule sequential or splitfed with --top"
            : "Train this TorchScript half (.pt, from tools/export/cleave_export.py) instead of "
              "--model; input shape and classes come from its metadata")};
    if (top) {
      halves.push_back(app.add_option(
          "--top", top_script,
          "Train this TorchScript half (.pt, from tools/export/cleave_export.py) instead of "
          "--model; input shape, cut shape and classes come from its metadata (--config "
          "u-shaped: the middle of an export made with --tail-layers)"));
    }
    halves.push_back(app.add_option(
        "--tail", tail_script,
        top ? "--config u-shaped with --bottom: the client-side tail.pt of the same export (its "
              "starting weights for rounds)"
            : "--config u-shaped with --bottom: train this TorchScript tail (.pt, from "
              "tools/export/cleave_export.py --tail-layers N) after the server's middle"));
    for (CLI::Option* half : halves) {
      half->check(CLI::ExistingFile);
      for (const char* zoo : {"--model", "--cut", "--input-shape", "--classes", "--hidden"}) {
        half->excludes(zoo);
      }
    }
  }

  // --config and --tail-layers (cleave-server and cleave-client; both ends must agree).
  void RegisterSplitConfig(CLI::App& app) {
    app.add_option("--config", config,
                   "split configuration: vanilla (server holds the top and the labels), u-shaped "
                   "(hospital keeps the tail and the labels), vertical (parties hold different "
                   "features of the same samples)")
        ->check(CLI::IsMember({"vanilla", "u-shaped", "vertical"}))
        ->capture_default_str();
    tail_option = app.add_option("--tail-layers", tail_layers,
                                 "u-shaped only: the model's last blocks that run at the hospital "
                                 "(the tail, with the loss); the server runs the blocks between "
                                 "--cut and them")
                      ->capture_default_str();
  }

  SplitConfig Config() const { return ParseSplitConfig(config); }

  bool Scripted() const {
    return !bottom_script.empty() || !top_script.empty() || !tail_script.empty();
  }

  // TorchScript parts: the configuration must match the export (a tail or none).
  ModelSpec ScriptSpec() const {
    CLEAVE_CHECK_USER(!tail_option || tail_option->count() == 0,
                      "--tail-layers is the export's with TorchScript parts (cleave_export.py "
                      "--tail-layers N)");
    const bool u_shaped = Config() == SplitConfig::kUShaped;
    CLEAVE_CHECK_USER(u_shaped || tail_script.empty(), "--tail needs --config u-shaped");
    ModelSpec spec = TorchScriptSpec(bottom_script, top_script, tail_script);
    const std::string& file = !top_script.empty() ? top_script : bottom_script;
    CLEAVE_CHECK_USER(!u_shaped || spec.tail_layers > 0, "'", file,
                      "' is from an export without a tail: for --config u-shaped export three "
                      "parts with cleave_export.py --tail-layers N");
    CLEAVE_CHECK_USER(u_shaped || spec.tail_layers == 0, "'", file,
                      "' is from a U-shaped export (with a tail): use --config u-shaped");
    CLEAVE_CHECK_USER(!u_shaped || bottom_script.empty() == tail_script.empty(),
                      "--config u-shaped with TorchScript parts: --bottom and --tail go together "
                      "(bottom.pt and tail.pt of one export)");
    return spec;
  }

  ModelSpec Spec() const {
    if (Scripted()) return ScriptSpec();
    ModelSpec spec;
    spec.architecture = architecture;
    spec.cut = cut;
    spec.input_shape = ParseShape(input_shape);
    spec.num_classes = num_classes;
    spec.hidden = hidden;
    const bool u_shaped = Config() == SplitConfig::kUShaped;
    CLEAVE_CHECK_USER(u_shaped || !tail_option || tail_option->count() == 0,
                      "--tail-layers needs --config u-shaped");
    if (u_shaped) {
      CLEAVE_CHECK_USER(tail_layers >= 1, "--tail-layers must be at least 1, got ", tail_layers);
      spec.tail_layers = tail_layers;
    }
    return spec;
  }
};

}  // namespace cleave
