#include "cleave/server/server_checkpoint.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/nn/module.h>

#include <cstring>
#include <map>

#include "cleave/core/error.h"

namespace cleave::server {

namespace {

// What a checkpoint holds, as one module so that it is written and checked as one file: the
// server-side model (the optimizer's parameters) and the round state's tensors (the client-side
// weights and the round's accepted, not yet applied updates) and, with K-FAC, its factors,
// eigenbases and step count ("kfac"); the round state's numbers travel as checkpoint counters.
// Built for each save and load: the number of updates varies.
struct CheckpointModule : torch::nn::Module {
  CheckpointModule(torch::nn::Sequential top, int64_t client_parameters, int64_t pending,
                   std::shared_ptr<torch::nn::Module> kfac_state) {
    register_module("top", std::move(top));
    if (kfac_state) register_module("kfac", std::move(kfac_state));
    client_weights = register_buffer("client_weights", at::zeros({client_parameters}));
    round_updates = register_buffer("round_updates", at::zeros({pending, client_parameters}));
  }
  at::Tensor client_weights;
  at::Tensor round_updates;  // [pending, P]
};

constexpr const char* kPendingPrefix = "pending.";
constexpr const char* kLastRoundPrefix = "last_round.";
constexpr const char* kSubmittedPrefix = "submitted.";
constexpr const char* kJoinPrefix = "join.";
constexpr const char* kStalenessPrefix = "staleness.";

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

int64_t PendingCount(const CheckpointMeta& meta) {
  const auto it = meta.counters.find("pending");
  const int64_t count = it == meta.counters.end() ? 0 : it->second;
  CLEAVE_CHECK_USER(count >= 0 && count <= 1000000, "checkpoint claims ", count,
                    " pending updates");
  return count;
}

// The phase is written as its enum value; anything else is a corrupt file.
RoundPhase PhaseFromCounter(int64_t value) {
  CLEAVE_CHECK_USER(value >= static_cast<int64_t>(RoundPhase::kWaitingForClients) &&
                        value <= static_cast<int64_t>(RoundPhase::kFinished),
                    "checkpoint has an unknown round phase ", value);
  return static_cast<RoundPhase>(value);
}

// Checkpoints written before the phase was saved: finished, or training once anything happened
// in the rounds (as those servers decided), else waiting for hospitals.
RoundPhase LegacyPhase(const CheckpointMeta& meta, const RoundState& state) {
  const auto finished = meta.counters.find("finished");
  if (finished != meta.counters.end() && finished->second != 0) return RoundPhase::kFinished;
  const bool started =
      state.round > 1 || state.updates_accepted > 0 || state.round_samples_trained > 0;
  return started ? RoundPhase::kTraining : RoundPhase::kWaitingForClients;
}

}  // namespace

void WriteRoundState(const RoundState& state, CheckpointMeta* meta) {
  auto& c = meta->counters;
  c["round"] = state.round;
  c["version"] = state.version;
  c["pending"] = static_cast<int64_t>(state.pending.size());
  for (size_t i = 0; i < state.pending.size(); ++i) {
    c[kPendingPrefix + std::to_string(i) + ".samples"] = state.pending[i].samples;
    c[kPendingPrefix + std::to_string(i) + ".staleness"] = state.pending[i].staleness;
  }
  c["round_samples_trained"] = state.round_samples_trained;
  c["turn"] = state.turn;
  c["phase"] = static_cast<int64_t>(state.phase);
  c["updates_accepted"] = state.updates_accepted;
  c["updates_applied"] = state.updates_applied;
  c["updates_duplicate"] = state.updates_duplicate;
  c["updates_capped"] = state.updates_capped;
  for (size_t s = 0; s < state.staleness_histogram.size(); ++s) {
    c[kStalenessPrefix + std::to_string(s)] = state.staleness_histogram[s];
  }
  for (const auto& [identity, round] : state.last_round_submitted) {
    c[kLastRoundPrefix + identity] = round;
  }
  for (const std::string& identity : state.submitted) c[kSubmittedPrefix + identity] = 1;
  for (size_t i = 0; i < state.join_order.size(); ++i) {
    c[kJoinPrefix + state.join_order[i]] = static_cast<int64_t>(i);
  }
}

// The round state's numbers; the tensors (weights, pending deltas) are filled in by the caller.
RoundState ReadRoundState(const CheckpointMeta& meta) {
  RoundState state;
  std::map<int64_t, std::string> joined;
  state.pending.resize(static_cast<size_t>(PendingCount(meta)));
  const auto counter = [&](const std::string& name) {
    const auto it = meta.counters.find(name);
    CLEAVE_CHECK_USER(it != meta.counters.end(), "checkpoint lacks counter '", name, "'");
    return it->second;
  };
  for (size_t i = 0; i < state.pending.size(); ++i) {
    state.pending[i].samples = counter(kPendingPrefix + std::to_string(i) + ".samples");
    state.pending[i].staleness = counter(kPendingPrefix + std::to_string(i) + ".staleness");
  }
  for (const auto& [name, value] : meta.counters) {
    if (name == "round")
      state.round = value;
    else if (name == "version")
      state.version = value;
    else if (name == "round_samples_trained")
      state.round_samples_trained = value;
    else if (name == "turn")
      state.turn = value;
    else if (name == "phase")
      state.phase = PhaseFromCounter(value);
    else if (name == "updates_accepted")
      state.updates_accepted = value;
    else if (name == "updates_applied")
      state.updates_applied = value;
    else if (name == "updates_duplicate")
      state.updates_duplicate = value;
    else if (name == "updates_capped")
      state.updates_capped = value;
    else if (StartsWith(name, kLastRoundPrefix))
      state.last_round_submitted[name.substr(std::strlen(kLastRoundPrefix))] = value;
    else if (StartsWith(name, kSubmittedPrefix))
      state.submitted.insert(name.substr(std::strlen(kSubmittedPrefix)));
    else if (StartsWith(name, kJoinPrefix))
      joined[value] = name.substr(std::strlen(kJoinPrefix));
    else if (StartsWith(name, kStalenessPrefix)) {
      const auto s = static_cast<size_t>(std::stoll(name.substr(std::strlen(kStalenessPrefix))));
      if (s < 1024) {
        if (state.staleness_histogram.size() <= s) state.staleness_histogram.resize(s + 1, 0);
        state.staleness_histogram[s] = value;
      }
    }
  }
  for (const auto& [index, identity] : joined) state.join_order.push_back(identity);
  if (meta.counters.count("phase") == 0) state.phase = LegacyPhase(meta, state);
  CLEAVE_CHECK_USER(state.round >= 1 && state.version >= 0,
                    "checkpoint has an impossible round state (round ", state.round, ", version ",
                    state.version, ")");
  return state;
}

void SaveServerCheckpoint(const std::string& path, const std::string& fingerprint,
                          const torch::nn::Sequential& top,
                          const torch::optim::Optimizer& optimizer, int64_t client_parameters,
                          int64_t step, const RoundState* round,
                          std::shared_ptr<torch::nn::Module> kfac_state) {
  CheckpointMeta meta;
  meta.fingerprint = fingerprint;
  meta.counters["step"] = step;
  const auto pending = round ? static_cast<int64_t>(round->pending.size()) : 0;
  CheckpointModule module(top, client_parameters, pending, std::move(kfac_state));
  if (round) {
    WriteRoundState(*round, &meta);
    module.client_weights.copy_(round->weights);
    for (int64_t i = 0; i < pending; ++i) {
      module.round_updates[i].copy_(round->pending[static_cast<size_t>(i)].delta);
    }
  }
  SaveCheckpoint(path, module, &optimizer, meta);
}

ServerCheckpoint LoadServerCheckpoint(const std::string& path, const std::string& fingerprint,
                                      const torch::nn::Sequential& top,
                                      torch::optim::Optimizer* optimizer, int64_t client_parameters,
                                      std::shared_ptr<torch::nn::Module> kfac_state) {
  // The number of pending deltas sizes a buffer: read it before the tensors.
  const CheckpointMeta header = ReadCheckpointMeta(path, fingerprint);
  CheckpointModule module(top, client_parameters, PendingCount(header), std::move(kfac_state));
  const CheckpointMeta meta = LoadCheckpoint(path, module, optimizer, fingerprint);
  ServerCheckpoint loaded;
  const auto step = meta.counters.find("step");
  loaded.step = step == meta.counters.end() ? 0 : step->second;
  if (meta.counters.count("round") == 1) {
    RoundState round = ReadRoundState(meta);
    round.weights = module.client_weights.clone();
    for (size_t i = 0; i < round.pending.size(); ++i) {
      round.pending[i].delta = module.round_updates[static_cast<int64_t>(i)].clone();
    }
    loaded.round = std::move(round);
  }
  return loaded;
}

int64_t ResumeServer(const std::string& path, const std::string& fingerprint, TopModel& top,
                     RoundCoordinator* rounds, int64_t client_parameters) {
  const ServerCheckpoint loaded = LoadServerCheckpoint(
      path, fingerprint, top.layers(), &top.optimizer(), client_parameters, top.kfac_state());
  if (rounds && loaded.round) {
    rounds->Restore(*loaded.round);
    spdlog::info("resumed from checkpoint '{}' at step {}, round {} ({}), client model version {}",
                 path, loaded.step, rounds->round(), PhaseName(rounds->phase()), rounds->version());
  } else {
    spdlog::info("resumed from checkpoint '{}' at step {}", path, loaded.step);
  }
  return loaded.step;
}

}  // namespace cleave::server
