#include "cleave/core/script_half.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/serialization/import.h>

#include <sstream>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

#ifndef CLEAVE_HAVE_JSON
#define CLEAVE_HAVE_JSON 0
#endif
#if CLEAVE_HAVE_JSON
#include <nlohmann/json.hpp>
#endif

namespace cleave {

namespace {

std::string JoinShape(const std::vector<int64_t>& shape) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
  return out;
}

// LibTorch's messages carry a C++ backtrace; a user needs the first line.
std::string FirstLine(const c10::Error& e) {
  const std::string text = e.what_without_backtrace();
  return text.substr(0, text.find('\n'));
}

// The TorchScript interpreter's errors quote the script's traceback before the error itself.
std::string ErrorLine(const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  const std::string text = error ? error->what_without_backtrace() : e.what();
  const size_t found = text.rfind("Error: ");
  const size_t start = found == std::string::npos ? 0 : found + 7;
  return text.substr(start, text.find('\n', start) - start);
}

#if CLEAVE_HAVE_JSON
std::vector<int64_t> ShapeField(const nlohmann::json& json, const char* key,
                                const std::string& path) {
  std::vector<int64_t> shape;
  bool valid = json.contains(key) && json[key].is_array() && !json[key].empty();
  if (valid) {
    for (const auto& size : json[key]) {
      valid = valid && size.is_number_integer() && size.get<int64_t>() > 0;
      if (valid) shape.push_back(size.get<int64_t>());
    }
  }
  CLEAVE_CHECK_USER(valid, "'", path, "': metadata field '", key,
                    "' is not a list of positive sizes");
  return shape;
}

// U-shaped exports: middle_shape and tail_layers, both or neither; a tail needs them.
void ParseUShapedMeta(const nlohmann::json& json, const std::string& path, ScriptMeta* meta) {
  const bool u_shaped = json.contains("middle_shape") || json.contains("tail_layers");
  CLEAVE_CHECK_USER(u_shaped || meta->half != "tail", "'", path,
                    "': a tail without metadata fields 'middle_shape' and 'tail_layers'");
  if (!u_shaped) return;
  meta->middle_shape = ShapeField(json, "middle_shape", path);
  CLEAVE_CHECK_USER(json.contains("tail_layers") && json["tail_layers"].is_number_integer() &&
                        json["tail_layers"].get<int64_t>() >= 1 &&
                        json["tail_layers"].get<int64_t>() <= 1000,
                    "'", path, "': metadata field 'tail_layers' must be an integer 1..1000");
  meta->tail_layers = json["tail_layers"].get<int>();
}

ScriptMeta ParseMeta(const std::string& text, const std::string& path) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  CLEAVE_CHECK_USER(json.is_object(), "'", path, "': the cleave metadata is not a JSON object");
  ScriptMeta meta;
  meta.half = json.value("half", "");
  CLEAVE_CHECK_USER(meta.half == "bottom" || meta.half == "top" || meta.half == "tail", "'", path,
                    "': metadata field 'half' must be \"bottom\", \"top\" or \"tail\"");
  meta.input_shape = ShapeField(json, "input_shape", path);
  meta.cut_shape = ShapeField(json, "cut_shape", path);
  CLEAVE_CHECK_USER(json.contains("classes") && json["classes"].is_number_integer() &&
                        json["classes"].get<int64_t>() >= 2,
                    "'", path, "': metadata field 'classes' must be an integer >= 2");
  meta.num_classes = json["classes"].get<int64_t>();
  meta.split_id = json.value("split_id", "");
  CLEAVE_CHECK_USER(!meta.split_id.empty() && meta.split_id.size() <= 64, "'", path,
                    "': metadata field 'split_id' must be 1..64 characters");
  ParseUShapedMeta(json, path, &meta);
  return meta;
}

#else
[[noreturn]] void NoJson() {
  throw UserError(
      "this cleave was built without nlohmann-json (Debian: nlohmann-json3-dev): TorchScript "
      "halves are unavailable");
}
ScriptMeta ParseMeta(const std::string&, const std::string&) { NoJson(); }
#endif

// Dropout and batch-norm read `training` from the module when scripted; a trace records the mode
// it ran in as a constant, which train()/eval() can no longer change.
bool FixedTrainingFlag(const torch::jit::Node* node) {
  using c10::Symbol;
  static const std::vector<std::pair<Symbol, size_t>> kTrainingInput = {
      {Symbol::aten("dropout"), 2},
      {Symbol::aten("dropout_"), 2},
      {Symbol::aten("feature_dropout"), 2},
      {Symbol::aten("alpha_dropout"), 2},
      {Symbol::aten("feature_alpha_dropout"), 2},
      {Symbol::aten("batch_norm"), 5}};
  for (const auto& [kind, index] : kTrainingInput) {
    if (node->kind() == kind && node->inputs().size() > index) {
      return node->input(index)->node()->kind() == c10::prim::Constant;
    }
  }
  return false;
}

bool HasFixedTrainingFlag(const torch::jit::Block* block) {
  for (const torch::jit::Node* node : block->nodes()) {
    if (FixedTrainingFlag(node)) return true;
    for (const torch::jit::Block* inner : node->blocks()) {
      if (HasFixedTrainingFlag(inner)) return true;
    }
  }
  return false;
}

void CheckScripted(torch::jit::Module& module, const std::string& path) {
  CLEAVE_CHECK_USER(module.find_method("forward").has_value(), "'", path,
                    "' has no forward method");
  std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*graph);
  CLEAVE_CHECK_USER(!HasFixedTrainingFlag(graph->block()), "'", path,
                    "' was traced (torch.jit.trace): its dropout or batch-norm stays in the mode "
                    "it was traced in and ignores train()/eval(); export it with torch.jit.script "
                    "(tools/export/cleave_export.py)");
  CLEAVE_CHECK_USER(module.parameters().size() > 0, "'", path,
                    "' has no parameters to train (a frozen or inference-optimised module?); "
                    "export it with torch.jit.script and without torch.jit.freeze");
}

// One forward pass on zeros: the half maps what its metadata says to what its metadata says.
void CheckShapes(torch::jit::Module& module, const ScriptMeta& meta, const std::string& path) {
  const std::vector<int64_t> classes = {meta.num_classes};
  const bool u_shaped = !meta.middle_shape.empty();
  const std::vector<int64_t>& sample = meta.half == "bottom" ? meta.input_shape
                                       : meta.half == "top"  ? meta.cut_shape
                                                             : meta.middle_shape;
  const std::vector<int64_t>& result = meta.half == "bottom"            ? meta.cut_shape
                                       : meta.half == "top" && u_shaped ? meta.middle_shape
                                                                        : classes;
  std::vector<int64_t> in = {1}, expected = {1};
  in.insert(in.end(), sample.begin(), sample.end());
  expected.insert(expected.end(), result.begin(), result.end());
  at::NoGradGuard no_grad;
  module.eval();
  c10::IValue value;
  try {
    value = module.forward({at::zeros(in)});
  } catch (const std::exception& e) {
    throw UserError("'" + path + "' fails on an input of shape " + JoinShape(in) +
                    " (from its metadata): " + ErrorLine(e));
  }
  CLEAVE_CHECK_USER(value.isTensor(), "'", path, "' does not return one tensor");
  const at::Tensor out = value.toTensor();
  CLEAVE_CHECK_USER(out.sizes().vec() == expected, "'", path, "' maps ", JoinShape(in), " to ",
                    JoinShape(out.sizes().vec()), ", but its metadata says ", JoinShape(expected));
  module.train();
}

// torch::nn::Module names cannot hold '.'; "layer1.0.weight" becomes "layer1__0__weight".
std::string ModuleName(const std::string& script_name) {
  std::string name;
  for (char c : script_name) name += c == '.' ? std::string("__") : std::string(1, c);
  return name;
}

}  // namespace

ScriptMeta ReadScriptMeta(const std::string& path) {
  CLEAVE_CHECK_USER(FileExists(path), "model file '", path, "' does not exist");
  std::string text;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string record = std::string("extra/") + kScriptMetaFile;
    CLEAVE_CHECK_USER(reader.hasRecord(record), "'", path, "' has no cleave metadata (extra file ",
                      kScriptMetaFile, "); export it with tools/export/cleave_export.py");
    auto [data, size] = reader.getRecord(record);
    text.assign(static_cast<const char*>(data.get()), size);
  } catch (const c10::Error& e) {
    throw UserError("'" + path + "' is not a TorchScript file: " + FirstLine(e));
  }
  return ParseMeta(text, path);
}

bool ScriptHalvesAvailable() { return CLEAVE_HAVE_JSON; }

std::string ScriptMetaToJson(const ScriptMeta& meta) {
#if !CLEAVE_HAVE_JSON
  (void)meta;
  NoJson();
#else
  nlohmann::json json = {{"half", meta.half},
                         {"input_shape", meta.input_shape},
                         {"cut_shape", meta.cut_shape},
                         {"classes", meta.num_classes},
                         {"split_id", meta.split_id}};
  if (!meta.middle_shape.empty()) {
    json["middle_shape"] = meta.middle_shape;
    json["tail_layers"] = meta.tail_layers;
  }
  return json.dump();
#endif
}

ScriptHalfImpl::ScriptHalfImpl(torch::jit::Module module, ScriptMeta meta)
    : module_(std::move(module)), meta_(std::move(meta)) {
  for (const auto& parameter : module_.named_parameters(/*recurse=*/true)) {
    register_parameter(ModuleName(parameter.name), parameter.value,
                       parameter.value.requires_grad());
  }
  for (const auto& buffer : module_.named_buffers(/*recurse=*/true)) {
    register_buffer(ModuleName(buffer.name), buffer.value);
  }
  train(module_.is_training());
}

at::Tensor ScriptHalfImpl::forward(const at::Tensor& input) {
  return module_.forward({input}).toTensor();
}

void ScriptHalfImpl::train(bool on) {
  torch::nn::Module::train(on);
  module_.train(on);
}

ScriptHalf LoadScriptHalf(const std::string& path, const std::string& expected_half) {
  const ScriptMeta meta = ReadScriptMeta(path);
  CLEAVE_CHECK_USER(meta.half == expected_half, "'", path, "' is the ", meta.half,
                    " half of a split; this end runs the ", expected_half, " half");
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, at::kCPU);
  } catch (const c10::Error& e) {
    throw UserError("cannot load '" + path + "': " + FirstLine(e));
  }
  CheckScripted(module, path);
  CheckShapes(module, meta, path);
  ScriptHalf half(std::move(module), meta);
  half->train();
  return half;
}

ScriptHalfImpl* FindScriptHalf(const torch::nn::Module& half) {
  for (const auto& child : half.children()) {
    if (auto* script = child->as<ScriptHalfImpl>()) return script;
  }
  return nullptr;
}

void SaveScriptHalf(const ScriptHalfImpl& half, const std::string& path) {
  for (const auto& item : half.named_parameters()) {
    CLEAVE_CHECK_USER(
        !item.value().is_floating_point() || item.value().isfinite().all().item<bool>(),
        "not writing '", path, "': parameter '", item.key(), "' is not finite");
  }
  for (const auto& item : half.named_buffers()) {
    CLEAVE_CHECK_USER(
        !item.value().is_floating_point() || item.value().isfinite().all().item<bool>(),
        "not writing '", path, "': buffer '", item.key(), "' is not finite");
  }
  std::ostringstream bytes;
  torch::jit::ExtraFilesMap extra = {{kScriptMetaFile, ScriptMetaToJson(half.meta())}};
  half.script().save(bytes, extra);
  WriteFileAtomic(path, bytes.str());
}

}  // namespace cleave
