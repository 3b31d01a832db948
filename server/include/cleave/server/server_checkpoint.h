// The server's checkpoint: its layers and their optimizer, the step, and the round state (the
// client-side weights and the round's accepted, not yet applied deltas as tensors; the round's
// numbers as named counters), in one atomic file (core/checkpoint.h). The file is refused, and
// never written, when anything in it is not finite.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "cleave/core/checkpoint.h"
#include "cleave/core/split_model.h"
#include "cleave/server/round_coordinator.h"
#include "cleave/server/round_state.h"
#include "cleave/server/top_model.h"

namespace cleave::server {

// The round state's numbers as checkpoint counters, and back (the tensors are not touched:
// ReadRoundState leaves weights undefined and pending deltas empty, sized to their count).
// ReadRoundState throws UserError for an impossible state.
void WriteRoundState(const RoundState& state, CheckpointMeta* meta);
RoundState ReadRoundState(const CheckpointMeta& meta);

struct ServerCheckpoint {
  int64_t step = 0;
  std::optional<RoundState> round;  // with weights and pending deltas; absent without rounds
};

// Writes `top`, `optimizer`, `step`, (if given) the round state and (if given) the K-FAC state
// (KfacPreconditioner::state(): factors, eigenbases, step count) to `path` atomically.
void SaveServerCheckpoint(const std::string& path, const std::string& fingerprint,
                          const torch::nn::Sequential& top,
                          const torch::optim::Optimizer& optimizer, int64_t client_parameters,
                          int64_t step, const RoundState* round,
                          std::shared_ptr<torch::nn::Module> kfac_state = nullptr);

// Loads `path` into `top`, `optimizer` and (if given) `kfac_state` and returns the step and round
// state. Throws UserError (nothing changed) for a missing, corrupt or non-finite file, another
// model's fingerprint, or a file without K-FAC state when `kfac_state` is given.
ServerCheckpoint LoadServerCheckpoint(const std::string& path, const std::string& fingerprint,
                                      const torch::nn::Sequential& top,
                                      torch::optim::Optimizer* optimizer, int64_t client_parameters,
                                      std::shared_ptr<torch::nn::Module> kfac_state = nullptr);

// Resumes a server from `path`: the layers and optimizer of `top`, and the round state into
// `rounds` (when the server runs rounds and the file has them). Returns the step; logs what it
// resumed. Throws as LoadServerCheckpoint.
int64_t ResumeServer(const std::string& path, const std::string& fingerprint, TopModel& top,
                     RoundCoordinator* rounds, int64_t client_parameters);

}  // namespace cleave::server
