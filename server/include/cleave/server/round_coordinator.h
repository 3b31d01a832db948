// Rounds of multi-hospital training over one server-side model: who trains when (a
// SchedulePolicy per schedule, schedule_policy.h), when a round ends (sample target, or deadline
// with a quorum), how client-model updates are combined (an AggregationOptions rule over the
// round's deltas, scaled down by staleness, each applied exactly once), who may send steps and
// updates (only a hospital told to train a version, and only for that version), how much weight
// an update gets (the samples the server counted, not what the hospital claims), and the state a
// checkpoint must keep to resume a round. The round's phase is explicit (RoundPhase,
// round_state.h). No networking: the server (split_server.h) calls it, tests drive it directly;
// what it refuses it refuses with a Refusal (refusal.h).
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "cleave/server/refusal.h"
#include "cleave/server/round_state.h"
#include "cleave/server/schedule_policy.h"

namespace cleave::server {

struct SyncDecision {
  enum class Action { kWait, kTrain, kDone };
  Action action = Action::kWait;
  int64_t round = 0;  // to train in (kTrain, kWait); the last round run (kDone)
  int64_t version = 0;
  at::Tensor weights;  // defined when the caller's version differs
};

// A training step the rounds admitted.
struct StepAdmission {
  double scale = 1.0;          // for the server's step: 1 / (1 + staleness)
  bool round_closing = false;  // the hospital should stop training and send its update
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
  // Resumes from a checkpoint's state in RestoredPhase(state.phase) (the round goes on with the
  // hospitals that reconnect). Throws UserError if the weights do not fit.
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

  // Admits a training step of `samples` samples computed with client-model `model_version`; the
  // samples count towards the weight of the hospital's next update. Throws Refusal kStale when
  // the version is too old, kNotInRound when Sync did not tell this hospital to train that
  // version (whatever its staleness); InvalidInput for a version the server never issued.
  StepAdmission AdmitStep(const std::string& identity, int64_t model_version, int64_t samples);

  // A client-model update (delta from base_version's weights, shape [P]). Throws Refusal kStale
  // when older than max_staleness, kNotInRound when the hospital was not told to train
  // base_version, kNoSamples when no step of it was counted, kNonFinite / kOutOfBounds for a
  // value that is not finite or beyond max_update_abs (the hospital leaves the round);
  // InvalidInput for a bad version, round, sample count or size. Its weight is min(samples, the
  // samples the server counted from its steps). May close the round.
  UpdateOutcome Submit(const std::string& identity, int64_t base_version, int64_t round,
                       int64_t samples, const at::Tensor& delta);

  // Ends or extends the round if its deadline has passed on the coordinator's clock (the deadline
  // thread calls it; so do tests that move their own clock).
  void CheckDeadline();

  RoundPhase phase() const;
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
  // A round that closed under the lock: the callback runs once the lock is released.
  struct Closed {
    bool closed = false;
    RoundSummary summary;
  };
  bool ActiveLocked() const;
  RoundView ViewLocked() const;
  void AssignLocked(const std::string& identity);
  // The assignment that admits a step or an update of `version` (throws kStale / kNotInRound).
  Assignment& AssignmentForLocked(const std::string& identity, int64_t version, const char* what);
  // Why an update of `counted` samples with these values is refused, if it is.
  std::optional<Refusal> CheckUpdate(const at::Tensor& flat, int64_t counted) const;
  UpdateOutcome AcceptLocked(const std::string& identity, int64_t round, int64_t samples,
                             int64_t counted, int64_t staleness, const at::Tensor& flat);
  // The hospital no longer takes part in the current round (left, rejoined or refused).
  // `lost_turn`: it left or was refused (in sequential, a turn holder that has not sent loses the
  // turn).
  void LeaveRoundLocked(const std::string& identity, bool lost_turn, Closed* closed);
  // LeaveRoundLocked under the lock, then the round-closed callback outside it.
  void Drop(const std::string& identity, bool lost_turn, bool forget_assignment);
  void Notify(const Closed& closed);

  // Each a single job, under the lock:
  // asks the policy what the round does now, and does it;
  void ReviewRoundLocked(Closed* closed);
  void CarryOutLocked(const RoundVerdict& verdict, Closed* closed);
  // aggregates the pending updates, starts the next round (or finishes);
  void CloseRoundLocked(const std::string& why, RoundSummary* summary);
  // back to kTraining with the round's sample count reset (the updates in are kept);
  void ReopenRoundLocked(const std::string& why);
  // a participant that had what the round needed is gone and nothing was sent: reopen;
  void ReopenIfAbandonedLocked();
  // the deadline passed without a quorum: another deadline, stragglers told to send;
  void ExtendDeadlineLocked(const RoundVerdict& verdict);
  // resets the per-round bookkeeping (participants, clock, deadline).
  void StartRoundLocked();
  void DeadlineLoop();

  const RoundOptions options_;
  const int64_t num_parameters_;
  const Now now_;
  const std::unique_ptr<SchedulePolicy> policy_;
  std::function<void(const RoundSummary&)> on_round_closed_;

  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  RoundState state_;                      // state_.phase is the round's phase
  std::map<std::string, int> connected_;  // identity -> sessions
  std::set<std::string> participants_;    // training in the current round
  // Survives a lost session (an update computed before it may still arrive); replaced by the
  // next Sync that says TRAIN, ended by the update.
  std::map<std::string, Assignment> assignments_;
  int64_t stale_in_round_ = 0;
  Clock::time_point round_start_;
  Clock::time_point deadline_;
  // The deadline thread's own lifetime (not a phase of the rounds): set by the destructor.
  bool stop_deadline_thread_ = false;
  std::thread deadline_thread_;
};

}  // namespace cleave::server
