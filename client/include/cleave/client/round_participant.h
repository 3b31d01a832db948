// A hospital's part in multi-hospital rounds (schedules sequential and splitfed): join, ask the
// server what to do, train the round from the current client-side weights, send the weight
// delta, repeat until the server says training is over. Survives a server restart or a network
// drop by reconnecting with exponential backoff and jitter, and resynchronises when the server
// refuses a step or update as stale or outside the round (ABORTED); a fatal mismatch
// (FAILED_PRECONDITION) ends the run.
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <cstdint>
#include <random>

#include "cleave/client/progress.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"

namespace cleave::client {

struct RoundParticipantOptions {
  int64_t sync_wait_ms = 10000;  // how long each Sync may wait on the server
  std::chrono::milliseconds initial_backoff{250};
  std::chrono::milliseconds max_backoff{8000};
  int max_reconnects = 40;  // consecutive failed attempts before giving up
  uint64_t seed = 1;        // jitter
  // Stop by then even if the server has not said DONE (load tests run for a bounded time).
  std::chrono::steady_clock::time_point stop_at = std::chrono::steady_clock::time_point::max();
};

struct ParticipationStats {
  int64_t rounds_trained = 0;
  int64_t updates_sent = 0;
  int64_t updates_refused = 0;  // refused as stale or outside the round (ABORTED): resynchronised
  int64_t duplicates = 0;       // the server had this round's update already
  int64_t reconnects = 0;
  int64_t errors_recovered = 0;  // failed calls retried or resynchronised (refusals included)
  int64_t samples = 0;
  double seconds = 0;           // training time
  int64_t final_version = 0;
  int64_t final_round = 0;
  EpochStats last_round;
};

class RoundParticipant {
 public:
  RoundParticipant(SplitTrainer& trainer, RoundParticipantOptions options = {});
  // Joins unless the trainer has joined already, then runs until the server says DONE (or
  // options.stop_at); after DONE the trainer holds the final client-side weights.
  // Throws StatusError at once for refusals that retrying cannot fix (FAILED_PRECONDITION:
  // protocol version or fingerprint; PERMISSION_DENIED, INVALID_ARGUMENT, ...), and after
  // max_reconnects failed attempts in a row.
  ParticipationStats Run(const Dataset& train, int64_t num_train_samples,
                         ProgressReporter* progress);

 private:
  void JoinWithRetry(int64_t num_train_samples, ParticipationStats* stats);
  void Backoff(int attempt);

  SplitTrainer& trainer_;
  RoundParticipantOptions options_;
  std::mt19937_64 jitter_;
};

}  // namespace cleave::client
