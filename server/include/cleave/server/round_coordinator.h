// Rounds of multi-hospital training over one server-side model: who trains when (schedules
// "sequential" and "splitfed"), when a round ends (sample target, or deadline with a quorum), how
// client-model updates are combined (an AggregationOptions rule over the round's deltas, scaled
// down by staleness, each applied exactly once), who may send steps and updates (only a hospital
// told to train a version, and only for that version), how much weight an update gets (the
// samples the server counted, not what the hospital claims), and the state a checkpoint must keep
// to resume a round. No networking: the server (split_server.h) calls it, tests drive it
// directly.
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cleave/protocol/status_error.h"
#include "cleave/server/robust_aggregation.h"

namespace cleave::server {

// A step or update the rounds refuse, with a short reason for metrics ("stale",
// "not_participant", "out_of_bounds", "nonfinite", "no_samples").
class RoundRefusal : public protocol::StatusError {
 public:
  RoundRefusal(grpc::StatusCode code, std::string reason, const std::string& message)
      : StatusError(code, message), reason_(std::move(reason)) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

enum class Schedule {
  kSingle,      // one client at a time, no rounds (the spine)
  kSequential,  // hospitals take turns; the client-side weights pass from one to the next
  kSplitFed,    // all train at once; client-side models averaged at the end of each round
};
// "single", "sequential", "splitfed"; throws UserError otherwise.
Schedule ParseSchedule(const std::string& name);
const char* ScheduleName(Schedule schedule);

struct RoundOptions {
  Schedule schedule = Schedule::kSingle;
  int64_t rounds = 0;            // rounds to run, then training is over (0: no limit)
  int64_t round_samples = 6400;  // training samples (all hospitals together) that end a round
  std::chrono::milliseconds round_deadline{0};  // a round ends by then if a quorum sent updates
  int quorum = 1;                               // updates needed to end a round at its deadline
  int min_clients = 1;                          // hospitals connected before the first round starts
  int64_t max_staleness = 2;       // older updates and steps are refused (resynchronise)
  AggregationOptions aggregation;  // how a round's updates are combined
  double max_update_abs = 0;       // a delta value beyond this magnitude is refused (0: no bound)
};

// An accepted update that the round has not applied yet.
struct PendingUpdate {
  int64_t samples = 0;    // the weight it counts with: min(claimed, counted by the server)
  int64_t staleness = 0;  // versions between its base and the version it was accepted at
  at::Tensor delta;       // [P] float32, as sent
};

// Everything a checkpoint keeps so that a restarted server resumes the round where it was.
struct RoundState {
  int64_t round = 1;
  int64_t version = 0;  // client-model version: +1 each time a round's average is applied
  at::Tensor weights;   // client-side model parameters, flattened [P], float32
  std::vector<PendingUpdate> pending;  // accepted this round, applied when it closes
  int64_t round_samples_trained = 0;
  std::map<std::string, int64_t> last_round_submitted;  // per hospital: duplicates are refused
  std::set<std::string> submitted;                      // hospitals that sent this round's update
  int64_t turn = 0;                     // sequential: index into the join order of whose turn it is
  std::vector<std::string> join_order;  // sequential: hospitals in the order they first joined
  bool finished = false;
  // Counters (each accepted update is applied exactly once: accepted == applied + pending).
  int64_t updates_accepted = 0;
  int64_t updates_applied = 0;
  int64_t updates_refused = 0;               // too stale
  int64_t updates_duplicate = 0;             // resubmitted for a round already counted
  int64_t updates_capped = 0;                // claimed more samples than the server counted
  int64_t steps_refused = 0;                 // training steps from a too old client-model version
  std::vector<int64_t> staleness_histogram;  // [s] = accepted updates s versions old
};

struct SyncDecision {
  enum class Action { kWait, kTrain, kDone };
  Action action = Action::kWait;
  int64_t round = 0;
  int64_t version = 0;
  at::Tensor weights;  // defined when the caller's version differs
};

struct UpdateOutcome {
  bool duplicate = false;
  int64_t staleness = 0;
  double scale = 1.0;
  int64_t version = 0;  // after this update (a round it closed has been applied)
};

// What a finished round did, for the server's summary line and metrics.
struct RoundSummary {
  int64_t round = 0;
  int64_t version = 0;  // after the round
  int64_t updates = 0;
  int64_t stale_updates = 0;
  int64_t clipped = 0;  // updates whose norm the aggregator clipped
  int64_t samples = 0;  // trained in the round (all hospitals)
  double seconds = 0;
  std::string why;  // "all updates in", "deadline with quorum", "turn holder left", ...
  bool finished = false;
};

class RoundCoordinator {
 public:
  using Clock = std::chrono::steady_clock;
  using Now = std::function<Clock::time_point()>;
  // `initial_weights`: the client-side model every hospital starts from (flattened, float32).
  // `options.schedule` is sequential or splitfed (single runs no rounds). `now`: the clock that
  // round deadlines are measured on; given one (tests), no deadline thread runs and the caller
  // calls CheckDeadline() after moving it.
  RoundCoordinator(RoundOptions options, at::Tensor initial_weights, Now now = {});
  ~RoundCoordinator();
  RoundCoordinator(const RoundCoordinator&) = delete;
  RoundCoordinator& operator=(const RoundCoordinator&) = delete;

  // Called (outside the coordinator's lock) after a round closes; the server checkpoints there.
  void SetRoundClosedCallback(std::function<void(const RoundSummary&)> callback);

  RoundState Snapshot() const;
  // Resumes from a checkpoint's state (the round goes on with the hospitals that reconnect).
  // Throws UserError if the weights do not fit.
  void Restore(RoundState state);

  void OnJoin(const std::string& identity);
  // The hospital has no session left (it left or vanished): it no longer holds up the round.
  void OnLeave(const std::string& identity);
  // The hospital joined again while its earlier session was still open (it restarted or lost its
  // connection; the new session replaced the old): it no longer holds up the round, and takes
  // part again through Sync.
  void OnRejoin(const std::string& identity);
  // The server refused a step or an update of this hospital as malformed, beyond a bound or not
  // finite: it no longer holds up the round, and what it trained is dropped (Sync to take part
  // again).
  void Exclude(const std::string& identity);

  // What `identity` should do; waits up to `wait` for something other than kWait.
  SyncDecision Sync(const std::string& identity, int64_t have_version,
                    std::chrono::milliseconds wait);

  // A training step of `samples` samples computed with client-model `model_version`. Returns the
  // learning-rate scale for the server's step (1 / (1 + staleness)) and sets *round_closing.
  // Throws StatusError: ABORTED when the version is too old (resynchronise), FAILED_PRECONDITION
  // when Sync did not tell this hospital to train that version (whatever its staleness),
  // INVALID_ARGUMENT for a version the server never issued. The samples count towards the weight
  // of the hospital's next update.
  double OnTrainStep(const std::string& identity, int64_t model_version, int64_t samples,
                     bool* round_closing);

  // A client-model update (delta from base_version's weights, shape [P], finite: checked by the
  // caller). Throws StatusError ABORTED when older than max_staleness; FAILED_PRECONDITION when
  // the hospital was not told to train base_version or no step of it was counted;
  // INVALID_ARGUMENT for a bad version, round or sample count or a value beyond max_update_abs.
  // Its weight is min(samples, the samples the server counted from its steps). May close the
  // round.
  UpdateOutcome Submit(const std::string& identity, int64_t base_version, int64_t round,
                       int64_t samples, const at::Tensor& delta);

  // Ends or extends the round if its deadline has passed on the coordinator's clock (the deadline
  // thread calls it; so do tests that move their own clock).
  void CheckDeadline();

  int64_t version() const;
  int64_t round() const;
  bool finished() const;
  int64_t num_parameters() const { return num_parameters_; }
  const RoundOptions& options() const { return options_; }
  // Waits until the given round has closed (or training finished); false on timeout. For tests.
  bool WaitForRound(int64_t round, std::chrono::milliseconds timeout) const;

 private:
  // What a hospital was told to train (by Sync) and the samples its steps brought since.
  struct Assignment {
    int64_t version = 0;
    int64_t samples = 0;
  };
  std::string TurnHolderLocked() const;
  // Why an update of `counted` samples with these values is refused, if it is (not finite, beyond
  // max_update_abs, no step counted).
  std::optional<RoundRefusal> CheckUpdate(const at::Tensor& flat, int64_t counted) const;
  void AssignLocked(const std::string& identity);
  // The hospital no longer takes part in the current round (left, rejoined or refused); returns
  // true and fills *summary when that closed the round. `skip_turn`: in sequential, a turn
  // holder that has not sent its update loses the turn.
  bool DropParticipantLocked(const std::string& identity, bool skip_turn, RoundSummary* summary);
  // DropParticipantLocked under the lock, then the round-closed callback outside it.
  void Drop(const std::string& identity, bool skip_turn, bool forget_assignment);
  // Closes the round if its rule says so; returns true and fills *summary when it did.
  bool MaybeCloseLocked(RoundSummary* summary);
  void CloseLocked(const std::string& why, RoundSummary* summary);
  void StartRoundLocked();
  void DeadlineLoop();

  const RoundOptions options_;
  const int64_t num_parameters_;
  const Now now_;
  std::function<void(const RoundSummary&)> on_round_closed_;

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  RoundState state_;
  std::map<std::string, int> connected_;  // identity -> sessions
  std::set<std::string> participants_;    // training in the current round
  // Survives a lost session (an update computed before it may still arrive); replaced by the
  // next Sync that says TRAIN, ended by the update.
  std::map<std::string, Assignment> assignments_;
  bool started_ = false;  // min_clients reached once
  bool closing_ = false;  // sample target or deadline reached
  int64_t stale_in_round_ = 0;
  Clock::time_point round_start_;
  Clock::time_point deadline_;
  bool stopping_ = false;
  std::thread deadline_thread_;
};

}  // namespace cleave::server
