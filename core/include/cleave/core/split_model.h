// The split model zoo: full models cut at a configurable layer into a client-side `bottom` and a
// server-side `top`, plus the fingerprint both sides compare at Join.
#pragma once

#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cleave {

struct ModelSpec {
  std::string architecture = "cnn";  // "cnn" (1x28x28 images), "mlp" (tabular) or "torchscript"
  int cut = 1;                       // number of blocks that run on the client (1..blocks-1)
  // U-shaped split (config "u-shaped"): the last `tail_layers` blocks also run on the client
  // (the tail, which computes the logits); the server runs blocks cut..blocks-tail_layers-1 (the
  // middle, at least one block). 0: no tail (vanilla), the server runs everything after the cut.
  int tail_layers = 0;
  std::vector<int64_t> input_shape = {1, 28, 28};  // one sample, without the batch dimension
  int64_t num_classes = 10;
  std::vector<int64_t> hidden = {};  // mlp only: hidden widths (default {128, 64})
  // torchscript only (TorchScriptSpec fills these from the halves' metadata): the halves this
  // end holds (.pt files exported by tools/export/cleave_export.py), the cut-layer shape of one
  // sample and the id both halves of one export share.
  std::string bottom_script;
  std::string top_script;
  std::vector<int64_t> cut_shape = {};
  std::string split_id;
  // torchscript U-shaped exports (tail_layers > 0, from the metadata): the client's tail.pt and
  // the middle's output shape of one sample.
  std::string tail_script;
  std::vector<int64_t> middle_shape = {};
};

struct SplitModel {
  torch::nn::Sequential bottom{nullptr};  // client side: input -> cut-layer activation
  torch::nn::Sequential top{nullptr};     // server side: activation -> logits
  std::vector<int64_t> cut_shape;         // activation shape of one sample
  // U-shaped (spec.tail_layers > 0): `top` is the server's middle (activation -> middle output)
  // and `tail` the client's last blocks (middle output -> logits); null otherwise.
  torch::nn::Sequential tail{nullptr};
  std::vector<int64_t> middle_shape;  // middle output shape of one sample (U-shaped only)
  int num_blocks = 0;                     // how many blocks the full model has
};

// Blocks: "cnn" (input CxHxW, H and W divisible by 4):
//   [Conv(C->32, 3, pad 1), ReLU, MaxPool 2] [Conv(32->64, 3, pad 1), ReLU, MaxPool 2]
//   [Flatten, Linear(64*H/4*W/4 -> 128), ReLU, Dropout(0.3)] [Linear(128 -> classes)]
// "mlp" (input F): [Linear, ReLU] per hidden width, then [Linear(-> classes)].
//
// "torchscript": the parts named in the spec, loaded and checked by LoadScriptHalf (each a
// Sequential holding one ScriptHalf, script_half.h); a part this end does not hold is null. A
// U-shaped export (spec.tail_layers > 0) has three: bottom, top (the server's middle) and tail.
//
// With spec.tail_layers = t > 0 (cnn and mlp) the top's last t blocks form `tail` instead;
// a cut + t beyond blocks-1 (no block left for the middle) is a UserError.
//
// Builds the model with weights initialised from `seed` (a torchscript half keeps its own). This
// seeds LibTorch's global generator (torch::manual_seed), so later random draws in the process
// (dropout masks) follow `seed` too. Throws UserError for an unknown architecture, a cut outside
// 1..num_blocks-1, a bad input shape, or a torchscript half LoadScriptHalf refuses.
SplitModel BuildSplitModel(const ModelSpec& spec, uint64_t seed);

// A "torchscript" spec from the parts this end holds (any path may be empty, not all): input
// shape, classes, cut shape, split id and (U-shaped exports) middle shape and tail_layers come
// from their metadata (ReadScriptMeta). Throws UserError if a file's metadata is missing or bad,
// if a file holds another part than its flag names, or if the parts' metadata disagree.
ModelSpec TorchScriptSpec(const std::string& bottom_path, const std::string& top_path,
                          const std::string& tail_path = "");

// The parameters of `module` (recursively, in registration order) as one flat float32 vector:
// how client-side weights travel between hospitals and the server in rounds.
at::Tensor FlattenParameters(const torch::nn::Module& module);
// Copies `flat` (as FlattenParameters returns it) into the parameters of `module`. Throws
// InvalidInput if the number of values differs.
void AssignFlatParameters(torch::nn::Module& module, const at::Tensor& flat);

// The client-side parameters that rounds average, flattened: the bottom's, then (U-shaped) the
// tail's. A model without a bottom (TorchScript top only) gives an empty vector.
at::Tensor FlattenClientParameters(const SplitModel& model);
// Copies `flat` (as FlattenClientParameters returns it) into bottom and tail. Throws
// InvalidInput if the number of values differs.
void AssignClientParameters(SplitModel& model, const at::Tensor& flat);

// Number of blocks of the full model (valid cuts are 1..n-1). Builds nothing.
int NumBlocks(const ModelSpec& spec);

// A short hex digest (16 chars) over the architecture, cut, input shape, classes, hidden widths,
// tail (U-shaped) and the cut-layer shape (not the link's compression: the server's JoinReply sets that); for
// "torchscript", over the split id, input shape, cut shape and classes of the metadata, so two
// halves of different exports are refused at Join. Equal
// specs give equal fingerprints on every machine. Leaves LibTorch's global generator as it was.
std::string ModelFingerprint(const ModelSpec& spec);

// Human-readable description, e.g. "cnn cut=1 input=1x28x28 classes=10" (U-shaped: with
// " u-shaped tail=1" appended).
std::string DescribeSpec(const ModelSpec& spec);

}  // namespace cleave
