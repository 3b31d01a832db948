#include "cleave/core/split_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>
#include <torch/utils.h>

#include <cstdio>
#include <mutex>
#include <sstream>

#include "cleave/core/error.h"
#include "cleave/core/script_half.h"

namespace cleave {

namespace {

using torch::nn::Sequential;

std::string JoinShape(const std::vector<int64_t>& shape) {
  std::string out;
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
  return out;
}

std::vector<int64_t> MlpHidden(const ModelSpec& spec) {
  return spec.hidden.empty() ? std::vector<int64_t>{128, 64} : spec.hidden;
}

// Throws UserError for a spec no model can be built from; returns the number of blocks.
int ValidateSpec(const ModelSpec& spec) {
  CLEAVE_CHECK_USER(spec.num_classes >= 2, "a model needs at least 2 classes, got ",
                    spec.num_classes);
  for (int64_t d : spec.input_shape) {
    CLEAVE_CHECK_USER(d > 0, "input shape ", JoinShape(spec.input_shape), " has a bad size");
  }
  if (spec.architecture == "cnn") {
    CLEAVE_CHECK_USER(spec.input_shape.size() == 3 && spec.input_shape[1] % 4 == 0 &&
                          spec.input_shape[2] % 4 == 0,
                      "cnn needs an input shape CxHxW with H and W divisible by 4, got ",
                      JoinShape(spec.input_shape));
    return 4;
  }
  if (spec.architecture == "mlp") {
    CLEAVE_CHECK_USER(spec.input_shape.size() == 1,
                      "mlp needs a flat input shape (number of features), got ",
                      JoinShape(spec.input_shape));
    for (int64_t hidden : MlpHidden(spec)) {
      CLEAVE_CHECK_USER(hidden > 0, "mlp hidden widths must be positive");
    }
    return static_cast<int>(MlpHidden(spec).size()) + 1;
  }
  if (spec.architecture == "torchscript") {
    CLEAVE_CHECK_USER((spec.tail_layers > 0) == !spec.middle_shape.empty(),
                      "a U-shaped split of TorchScript parts needs an export with a tail "
                      "(tools/export/cleave_export.py --tail-layers N)");
    CLEAVE_CHECK_USER(spec.tail_layers > 0 || spec.tail_script.empty(),
                      "a tail (.pt) belongs to a U-shaped export");
    CLEAVE_CHECK_USER(!spec.bottom_script.empty() || !spec.top_script.empty() ||
                          !spec.tail_script.empty(),
                      "a torchscript model needs a bottom, top or tail part (.pt)");
    return spec.tail_layers > 0 ? 3 : 2;
  }
  throw UserError("unknown model architecture '" + spec.architecture + "' (use cnn or mlp)");
}

// The blocks of the full model, in order (the spec is validated).
std::vector<Sequential> CnnBlocks(const ModelSpec& spec) {
  const int64_t channels = spec.input_shape[0];
  const int64_t flat = 64 * (spec.input_shape[1] / 4) * (spec.input_shape[2] / 4);
  namespace nn = torch::nn;
  return {
      Sequential(nn::Conv2d(nn::Conv2dOptions(channels, 32, 3).padding(1)), nn::ReLU(),
                 nn::MaxPool2d(2)),
      Sequential(nn::Conv2d(nn::Conv2dOptions(32, 64, 3).padding(1)), nn::ReLU(), nn::MaxPool2d(2)),
      Sequential(nn::Flatten(), nn::Linear(flat, 128), nn::ReLU(), nn::Dropout(0.3)),
      Sequential(nn::Linear(128, spec.num_classes)),
  };
}

std::vector<Sequential> MlpBlocks(const ModelSpec& spec) {
  namespace nn = torch::nn;
  std::vector<Sequential> blocks;
  int64_t width = spec.input_shape[0];
  for (int64_t hidden : MlpHidden(spec)) {
    blocks.push_back(Sequential(nn::Linear(width, hidden), nn::ReLU()));
    width = hidden;
  }
  blocks.push_back(Sequential(nn::Linear(width, spec.num_classes)));
  return blocks;
}

std::vector<Sequential> Blocks(const ModelSpec& spec) {
  ValidateSpec(spec);
  return spec.architecture == "cnn" ? CnnBlocks(spec) : MlpBlocks(spec);
}

uint64_t Fnv1a64(const std::string& text) {
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash;
}

}  // namespace

int NumBlocks(const ModelSpec& spec) { return ValidateSpec(spec); }

namespace {

// Puts LibTorch's default CPU generator back as it was on scope exit: building a throwaway model
// (for its cut shape) must not change the random draws that follow.
class DefaultGeneratorRestorer {
 public:
  DefaultGeneratorRestorer() : generator_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~DefaultGeneratorRestorer() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }
  DefaultGeneratorRestorer(const DefaultGeneratorRestorer&) = delete;
  DefaultGeneratorRestorer& operator=(const DefaultGeneratorRestorer&) = delete;

 private:
  at::Generator generator_;
  at::Tensor state_;
};

std::vector<int64_t> SampleShape(const at::Tensor& batch) {
  return std::vector<int64_t>(batch.sizes().begin() + 1, batch.sizes().end());
}

// The cut-layer (and, U-shaped, middle output) shape of one sample, from a dummy forward pass.
void FindShapes(const ModelSpec& spec, SplitModel& model) {
  at::NoGradGuard no_grad;
  std::vector<int64_t> input = {1};
  input.insert(input.end(), spec.input_shape.begin(), spec.input_shape.end());
  model.bottom->eval();
  model.top->eval();
  const at::Tensor cut = model.bottom->forward(at::zeros(input));
  model.cut_shape = SampleShape(cut);
  if (model.tail) model.middle_shape = SampleShape(model.top->forward(cut));
  model.bottom->train();
  model.top->train();
}

// Builds and cuts the model with whatever the global generator holds.
SplitModel Assemble(const ModelSpec& spec) {
  std::vector<Sequential> blocks = Blocks(spec);
  const int num_blocks = static_cast<int>(blocks.size());
  CLEAVE_CHECK_USER(spec.cut >= 1 && spec.cut < num_blocks, "cut ", spec.cut, " is outside 1..",
                    num_blocks - 1, " for ", spec.architecture, " (", num_blocks, " blocks)");
  CLEAVE_CHECK_USER(spec.tail_layers >= 0 && spec.cut + spec.tail_layers < num_blocks,
                    "a tail of ", spec.tail_layers, " block(s) after cut ", spec.cut,
                    " leaves the server no middle block (", spec.architecture, " has ",
                    num_blocks, " blocks)");
  SplitModel model;
  model.num_blocks = num_blocks;
  model.bottom = Sequential();
  model.top = Sequential();
  if (spec.tail_layers > 0) model.tail = Sequential();
  const int tail_from = num_blocks - spec.tail_layers;
  for (int b = 0; b < num_blocks; ++b) {
    Sequential& part = b < spec.cut ? model.bottom : (b < tail_from ? model.top : model.tail);
    for (const auto& layer : *blocks[b]) part->push_back(layer);
  }
  FindShapes(spec, model);
  return model;
}

}  // namespace

namespace {

torch::nn::Sequential LoadHalf(const std::string& path, const char* half, const ModelSpec& spec) {
  if (path.empty()) return torch::nn::Sequential(nullptr);
  ScriptHalf loaded = LoadScriptHalf(path, half);
  const ScriptMeta& meta = loaded->meta();
  CLEAVE_CHECK_USER(meta.split_id == spec.split_id && meta.input_shape == spec.input_shape &&
                        meta.cut_shape == spec.cut_shape && meta.num_classes == spec.num_classes &&
                        meta.middle_shape == spec.middle_shape &&
                        meta.tail_layers == spec.tail_layers,
                    "'", path, "' changed since its metadata was read");
  return torch::nn::Sequential(loaded);
}

SplitModel LoadScriptModel(const ModelSpec& spec) {
  ValidateSpec(spec);
  SplitModel model;
  model.num_blocks = spec.tail_layers > 0 ? 3 : 2;
  model.cut_shape = spec.cut_shape;
  model.middle_shape = spec.middle_shape;
  model.bottom = LoadHalf(spec.bottom_script, "bottom", spec);
  model.top = LoadHalf(spec.top_script, "top", spec);
  model.tail = LoadHalf(spec.tail_script, "tail", spec);
  return model;
}

void CheckSameSplit(const ScriptMeta& first, const std::string& first_path,
                    const ScriptMeta& other, const std::string& other_path) {
  CLEAVE_CHECK_USER(first.split_id == other.split_id && first.input_shape == other.input_shape &&
                        first.cut_shape == other.cut_shape &&
                        first.num_classes == other.num_classes &&
                        first.middle_shape == other.middle_shape &&
                        first.tail_layers == other.tail_layers,
                    "'", first_path, "' (split ", first.split_id, ") and '", other_path,
                    "' (split ", other.split_id, ") are not parts of one export");
}

}  // namespace

ModelSpec TorchScriptSpec(const std::string& bottom_path, const std::string& top_path,
                          const std::string& tail_path) {
  CLEAVE_CHECK_USER(!bottom_path.empty() || !top_path.empty() || !tail_path.empty(),
                    "a torchscript model needs a bottom, top or tail part (.pt)");
  ScriptMeta meta;
  std::string meta_path;
  for (const auto& [path, half] :
       {std::pair{bottom_path, "bottom"}, {top_path, "top"}, {tail_path, "tail"}}) {
    if (path.empty()) continue;
    const ScriptMeta read = ReadScriptMeta(path);
    CLEAVE_CHECK_USER(read.half == half, "'", path, "' is the ", read.half,
                      " half of a split, not the ", half);
    if (!meta.half.empty()) CheckSameSplit(meta, meta_path, read, path);
    meta = read;
    meta_path = path;
  }
  ModelSpec spec;
  spec.architecture = "torchscript";
  spec.cut = 1;
  spec.bottom_script = bottom_path;
  spec.top_script = top_path;
  spec.tail_script = tail_path;
  spec.input_shape = meta.input_shape;
  spec.cut_shape = meta.cut_shape;
  spec.num_classes = meta.num_classes;
  spec.split_id = meta.split_id;
  spec.middle_shape = meta.middle_shape;
  spec.tail_layers = meta.tail_layers;
  ValidateSpec(spec);
  return spec;
}

SplitModel BuildSplitModel(const ModelSpec& spec, uint64_t seed) {
  torch::manual_seed(seed);
  if (spec.architecture == "torchscript") return LoadScriptModel(spec);
  return Assemble(spec);
}

std::string DescribeSpec(const ModelSpec& spec) {
  std::ostringstream out;
  if (spec.architecture == "torchscript") {
    out << "torchscript split=" << spec.split_id << " input=" << JoinShape(spec.input_shape)
        << " cut_shape=" << JoinShape(spec.cut_shape) << " classes=" << spec.num_classes;
    if (spec.tail_layers > 0) {
      out << " u-shaped tail=" << spec.tail_layers
          << " middle_shape=" << JoinShape(spec.middle_shape);
    }
    return out.str();
  }
  out << spec.architecture << " cut=" << spec.cut << " input=" << JoinShape(spec.input_shape)
      << " classes=" << spec.num_classes;
  if (spec.architecture == "mlp") out << " hidden=" << JoinShape(MlpHidden(spec));
  if (spec.tail_layers > 0) out << " u-shaped tail=" << spec.tail_layers;
  return out.str();
}

namespace {

std::string Hex(uint64_t value) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(value));
  return hex;
}

}  // namespace

std::string ModelFingerprint(const ModelSpec& spec) {
  if (spec.architecture == "torchscript") {
    ValidateSpec(spec);
    return Hex(Fnv1a64("cleave-torchscript-v1|" + DescribeSpec(spec) + "|"));
  }
  // The cut shape follows from the spec, but hashing it guards against model zoo changes that
  // keep the spec text and change the layers.
  SplitModel model;
  {
    DefaultGeneratorRestorer restore_generator;
    model = Assemble(spec);
  }
  std::string canonical = "cleave-model-v1|" + DescribeSpec(spec) +
                          "|cut_shape=" + JoinShape(model.cut_shape) +
                          "|blocks=" + std::to_string(model.num_blocks) +
                          "|";  // the trailing '|' keeps fingerprints of earlier versions
  if (model.tail) canonical += "middle_shape=" + JoinShape(model.middle_shape) + "|";
  return Hex(Fnv1a64(canonical));
}

at::Tensor FlattenParameters(const torch::nn::Module& module) {
  std::vector<at::Tensor> pieces;
  for (const at::Tensor& parameter : module.parameters()) {
    pieces.push_back(parameter.detach().to(at::kFloat).reshape({-1}));
  }
  if (pieces.empty()) return at::zeros({0}, at::kFloat);
  return at::cat(pieces).contiguous();
}

at::Tensor FlattenClientParameters(const SplitModel& model) {
  if (!model.bottom) return at::zeros({0}, at::kFloat);
  if (!model.tail) return FlattenParameters(*model.bottom);
  return at::cat({FlattenParameters(*model.bottom), FlattenParameters(*model.tail)});
}

void AssignClientParameters(SplitModel& model, const at::Tensor& flat) {
  CLEAVE_CHECK_INPUT(model.bottom || flat.numel() == 0, "weights have ", flat.numel(),
                     " values, this end holds no client-side model");
  if (!model.bottom) return;
  if (!model.tail) return AssignFlatParameters(*model.bottom, flat);
  const int64_t bottom = FlattenParameters(*model.bottom).numel();
  const int64_t tail = FlattenParameters(*model.tail).numel();
  CLEAVE_CHECK_INPUT(flat.dim() == 1 && flat.numel() == bottom + tail, "weights have ",
                     flat.numel(), " values, bottom and tail have ", bottom + tail,
                     " parameters");
  AssignFlatParameters(*model.bottom, flat.slice(0, 0, bottom));
  AssignFlatParameters(*model.tail, flat.slice(0, bottom, bottom + tail));
}

void AssignFlatParameters(torch::nn::Module& module, const at::Tensor& flat) {
  int64_t total = 0;
  for (const at::Tensor& parameter : module.parameters()) total += parameter.numel();
  CLEAVE_CHECK_INPUT(flat.dim() == 1 && flat.numel() == total, "weights have ", flat.numel(),
                     " values, the model has ", total, " parameters");
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (at::Tensor& parameter : module.parameters()) {
    const int64_t n = parameter.numel();
    parameter.copy_(flat.slice(0, offset, offset + n).view(parameter.sizes()));
    offset += n;
  }
}

}  // namespace cleave
