// The split model zoo: full models cut at a configurable layer into a client-side `bottom` and a
// server-side `top`, plus the fingerprint both sides compare at Join.
#pragma once

#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cleave {

struct ModelSpec {
  std::string architecture = "cnn";  // "cnn" (1x28x28 images) or "mlp" (tabular)
  int cut = 1;                       // number of blocks that run on the client (1..blocks-1)
  std::vector<int64_t> input_shape = {1, 28, 28};  // one sample, without the batch dimension
  int64_t num_classes = 10;
  std::vector<int64_t> hidden = {};  // mlp only: hidden widths (default {128, 64})
};

struct SplitModel {
  torch::nn::Sequential bottom{nullptr};  // client side: input -> cut-layer activation
  torch::nn::Sequential top{nullptr};     // server side: activation -> logits
  std::vector<int64_t> cut_shape;         // activation shape of one sample
  int num_blocks = 0;                     // how many blocks the full model has
};

// Blocks: "cnn" (input CxHxW, H and W divisible by 4):
//   [Conv(C->32, 3, pad 1), ReLU, MaxPool 2] [Conv(32->64, 3, pad 1), ReLU, MaxPool 2]
//   [Flatten, Linear(64*H/4*W/4 -> 128), ReLU, Dropout(0.3)] [Linear(128 -> classes)]
// "mlp" (input F): [Linear, ReLU] per hidden width, then [Linear(-> classes)].
//
// Builds the model with weights initialised from `seed`. This seeds LibTorch's global generator
// (torch::manual_seed), so later random draws in the process (dropout masks) follow `seed` too.
// Throws UserError for an unknown architecture, a cut outside 1..num_blocks-1, or a bad input
// shape.
SplitModel BuildSplitModel(const ModelSpec& spec, uint64_t seed);

// The parameters of `module` (recursively, in registration order) as one flat float32 vector:
// how client-side weights travel between hospitals and the server in rounds.
at::Tensor FlattenParameters(const torch::nn::Module& module);
// Copies `flat` (as FlattenParameters returns it) into the parameters of `module`. Throws
// InvalidInput if the number of values differs.
void AssignFlatParameters(torch::nn::Module& module, const at::Tensor& flat);

// Number of blocks of the full model (valid cuts are 1..n-1). Builds nothing.
int NumBlocks(const ModelSpec& spec);

// A short hex digest (16 chars) over the architecture, cut, input shape, classes, hidden widths
// and the cut-layer shape (not the link's compression: the server's JoinReply sets that). Equal
// specs give equal fingerprints on every machine. Leaves LibTorch's global generator as it was.
std::string ModelFingerprint(const ModelSpec& spec);

// Human-readable description, e.g. "cnn cut=1 input=1x28x28 classes=10".
std::string DescribeSpec(const ModelSpec& spec);

}  // namespace cleave
