// Atomic checkpoints of a module and its optimizer, plus a few named integers (step, epoch, ...).
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace torch {
namespace nn {
class Module;
}
namespace optim {
class Optimizer;
}
}  // namespace torch

namespace cleave {

struct CheckpointMeta {
  std::string fingerprint;                  // ModelFingerprint of the model it belongs to
  std::map<std::string, int64_t> counters;  // e.g. {"step": 1200, "epoch": 3}
};

// Serialises parameters, buffers, optimizer state and meta to `path` atomically (temp file in the
// same directory, fsync, rename). The previous checkpoint stays intact if anything fails.
// The file carries a magic header and a CRC32 of the payload. Throws UserError naming the file
// and the first offending tensor, writing nothing, if a floating-point parameter or buffer of
// the module or a state tensor of the optimizer (Adam, AdamW, SGD) holds NaN or Inf: a step that
// diverged must not replace the last good checkpoint.
void SaveCheckpoint(const std::string& path, const torch::nn::Module& module,
                    const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta);

// Loads a checkpoint written by SaveCheckpoint into `module` (and `optimizer` if given and the
// file has optimizer state; otherwise the optimizer keeps its state). Header, length, CRC and
// fingerprint are checked before anything is parsed, and every parameter and buffer is read into
// a temporary and checked for name, shape and type before the module is written. Throws UserError
// naming the file if it is missing, truncated, corrupt (CRC mismatch, or NaN/Inf in a parameter,
// buffer or optimizer state), belongs to a model with another fingerprint (`expected_fingerprint`
// non-empty), or does not fit the module or optimizer. Nothing is modified on error. `module` must
// use Module's standard save/load layout (all torch::nn modules do).
CheckpointMeta LoadCheckpoint(const std::string& path, torch::nn::Module& module,
                              torch::optim::Optimizer* optimizer,
                              const std::string& expected_fingerprint = "");

// The fingerprint and counters of a checkpoint, without a module: the file is checked (header,
// length, CRC, fingerprint) exactly as LoadCheckpoint checks it and refused with the same
// UserError; the tensors are not checked against any model.
CheckpointMeta ReadCheckpointMeta(const std::string& path,
                                  const std::string& expected_fingerprint = "");

}  // namespace cleave
