// One half of a split model brought by the user: a TorchScript module exported from Python with
// torch.jit.script (tools/export/cleave_export.py), behind the same interface as the zoo's halves.
// A ScriptHalf is a torch::nn::Module whose parameters and buffers are the script module's own
// tensors (shared, not copied), so optimizers, checkpoints and FlattenParameters work unchanged,
// and saving the script module writes the trained weights.
#pragma once

#include <torch/csrc/jit/api/module.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cleave {

// The extra file of a .pt that describes the split (JSON, written by cleave_export.py).
inline constexpr const char* kScriptMetaFile = "cleave.json";

struct ScriptMeta {
  // "bottom" (client), "top" (server) or, in a U-shaped export, "tail" (client, after the
  // server's part, which is then the middle: "top" maps the cut to middle_shape).
  std::string half;
  std::vector<int64_t> input_shape;  // one sample of the data, without the batch dimension
  std::vector<int64_t> cut_shape;    // one sample's cut-layer activation
  int64_t num_classes = 0;
  std::string split_id;  // the same in all parts of one export
  // U-shaped exports only (empty / 0 otherwise): one sample's middle output, and how many of
  // the model's top-level children the tail holds. Every part of the export carries them.
  std::vector<int64_t> middle_shape;
  int tail_layers = 0;
};

// False in a build without nlohmann-json: every function below that reads or writes metadata
// then throws UserError saying so.
bool ScriptHalvesAvailable();

// The metadata of the .pt at `path`, read from its extra file without loading the module.
// Throws UserError naming the file if it is missing, not a TorchScript archive, has no cleave
// metadata, or the metadata is malformed (bad shapes, fewer than 2 classes, unknown half).
ScriptMeta ReadScriptMeta(const std::string& path);
std::string ScriptMetaToJson(const ScriptMeta& meta);

class ScriptHalfImpl : public torch::nn::Module {
 public:
  ScriptHalfImpl(torch::jit::Module module, ScriptMeta meta);
  at::Tensor forward(const at::Tensor& input);
  // Sets the script module's (and its submodules') `training` too: dropout and batch-norm follow.
  void train(bool on = true) override;
  const torch::jit::Module& script() const { return module_; }
  const ScriptMeta& meta() const { return meta_; }

 private:
  torch::jit::Module module_;
  ScriptMeta meta_;
};
TORCH_MODULE(ScriptHalf);

// Loads the half at `path` and checks it before any training: the metadata says `expected_half`;
// the module has parameters (a frozen or inference-optimised export has none); no dropout or
// batch-norm runs in a mode fixed at trace time (torch.jit.trace); one dry forward pass (eval
// mode, no gradient) maps [1, input_shape] to [1, cut_shape] (bottom), [1, cut_shape] to
// [1, classes] (top; U-shaped: to [1, middle_shape]) or [1, middle_shape] to [1, classes]
// (tail). Returns it in training mode. Throws UserError naming the file otherwise.
ScriptHalf LoadScriptHalf(const std::string& path, const std::string& expected_half);

// The ScriptHalf inside a half BuildSplitModel made from a "torchscript" spec; nullptr for a zoo
// half (or a null one).
ScriptHalfImpl* FindScriptHalf(const torch::nn::Module& half);

// Writes the half's script module, with its metadata as the extra file, to `path` atomically.
// Throws UserError, writing nothing, if a floating-point parameter or buffer is not finite.
void SaveScriptHalf(const ScriptHalfImpl& half, const std::string& path);

}  // namespace cleave
