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
  std::string fingerprint;               // ModelFingerprint of the model it belongs to
  std::map<std::string, int64_t> counters;  // e.g. {"step": 1200, "epoch": 3}
};

// Serialises parameters, buffers, optimizer state and meta to `path` atomically (temp file in the
// same directory, fsync, rename). The previous checkpoint stays intact if anything fails.
// The file carries a magic header and a CRC32 of the payload.
void SaveCheckpoint(const std::string& path, const torch::nn::Module& module,
                    const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta);

// Loads a checkpoint written by SaveCheckpoint into `module` (and `optimizer` if given). Throws
// UserError naming the file if it is missing, truncated, corrupt (CRC mismatch), or belongs to a
// model with another fingerprint (`expected_fingerprint` non-empty). Nothing is modified on error.
CheckpointMeta LoadCheckpoint(const std::string& path, torch::nn::Module& module,
                              torch::optim::Optimizer* optimizer,
                              const std::string& expected_fingerprint = "");

}  // namespace cleave
