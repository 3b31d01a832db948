#include "cleave/server/round_coordinator.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/status_error.h"

namespace cleave::server {

using protocol::StatusError;

Schedule ParseSchedule(const std::string& name) {
  if (name == "single") return Schedule::kSingle;
  if (name == "sequential") return Schedule::kSequential;
  if (name == "splitfed") return Schedule::kSplitFed;
  throw UserError("unknown schedule '" + name + "' (use single, sequential or splitfed)");
}

const char* ScheduleName(Schedule schedule) {
  switch (schedule) {
    case Schedule::kSingle:
      return "single";
    case Schedule::kSequential:
      return "sequential";
    case Schedule::kSplitFed:
      return "splitfed";
  }
  return "?";
}

RoundCoordinator::RoundCoordinator(RoundOptions options, at::Tensor initial_weights, Now now)
    : options_(std::move(options)),
      num_parameters_(initial_weights.numel()),
      now_(now ? now : Now([] { return Clock::now(); })) {
  CLEAVE_ENFORCE(options_.schedule != Schedule::kSingle,
                 "the single schedule runs no rounds: build no RoundCoordinator for it");
  CLEAVE_CHECK_USER(options_.rounds >= 0, "--rounds must be >= 0");
  CLEAVE_CHECK_USER(options_.round_samples >= 1, "--round-samples must be >= 1");
  CLEAVE_CHECK_USER(options_.quorum >= 1, "--quorum must be >= 1");
  CLEAVE_CHECK_USER(options_.min_clients >= 1, "--min-clients must be >= 1");
  CLEAVE_CHECK_USER(options_.max_staleness >= 0, "--max-staleness must be >= 0");
  CLEAVE_CHECK_USER(options_.round_deadline.count() >= 0, "--round-deadline must be >= 0");
  CLEAVE_CHECK_USER(options_.max_update_abs >= 0, "--max-update-value must be >= 0");
  CheckAggregationOptions(options_.aggregation);
  state_.weights = initial_weights.detach().to(at::kFloat).reshape({-1}).contiguous().clone();
  CLEAVE_CHECK_USER(state_.weights.isfinite().all().item<bool>(),
                    "the initial client-side weights are not finite");
  state_.staleness_histogram.assign(static_cast<size_t>(options_.max_staleness) + 1, 0);
  StartRoundLocked();
  if (options_.round_deadline.count() > 0 && !now) {
    deadline_thread_ = std::thread([this] { DeadlineLoop(); });
  }
}

RoundCoordinator::~RoundCoordinator() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (deadline_thread_.joinable()) deadline_thread_.join();
}

void RoundCoordinator::SetRoundClosedCallback(std::function<void(const RoundSummary&)> callback) {
  std::lock_guard<std::mutex> lock(mutex_);
  on_round_closed_ = std::move(callback);
}

RoundState RoundCoordinator::Snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  RoundState copy = state_;
  copy.weights = state_.weights.clone();
  for (PendingUpdate& update : copy.pending) update.delta = update.delta.clone();
  return copy;
}

void RoundCoordinator::Restore(RoundState state) {
  CLEAVE_CHECK_USER(state.weights.defined() && state.weights.numel() == num_parameters_,
                    "checkpointed client-side weights have ",
                    state.weights.defined() ? state.weights.numel() : 0, " values, the model has ",
                    num_parameters_);
  CLEAVE_CHECK_USER(state.weights.isfinite().all().item<bool>(),
                    "checkpointed client-side weights are not finite");
  for (const PendingUpdate& update : state.pending) {
    CLEAVE_CHECK_USER(update.delta.defined() && update.delta.numel() == num_parameters_ &&
                          update.delta.isfinite().all().item<bool>() && update.samples > 0 &&
                          update.staleness >= 0,
                      "a checkpointed update of the round is malformed");
  }
  state.staleness_histogram.resize(static_cast<size_t>(options_.max_staleness) + 1, 0);
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = std::move(state);
  assignments_.clear();
  started_ = state_.round > 1 || state_.updates_accepted > 0 || state_.round_samples_trained > 0;
  StartRoundLocked();
  changed_.notify_all();
}

void RoundCoordinator::StartRoundLocked() {
  participants_.clear();
  closing_ = false;
  stale_in_round_ = 0;
  round_start_ = now_();
  deadline_ = round_start_ + options_.round_deadline;
}

void RoundCoordinator::OnJoin(const std::string& identity) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++connected_[identity];
  if (std::find(state_.join_order.begin(), state_.join_order.end(), identity) ==
      state_.join_order.end()) {
    state_.join_order.push_back(identity);
  }
  if (!started_ && static_cast<int>(connected_.size()) >= options_.min_clients) {
    started_ = true;
    StartRoundLocked();
    spdlog::info("round {} starts with {} hospital(s) connected", state_.round, connected_.size());
  }
  changed_.notify_all();
}

void RoundCoordinator::OnLeave(const std::string& identity) {
  RoundSummary summary;
  bool closed = false;
  std::function<void(const RoundSummary&)> callback;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = connected_.find(identity);
    if (it == connected_.end()) return;
    if (--it->second > 0) return;  // another session of the same hospital is still there
    connected_.erase(it);
    closed = DropParticipantLocked(identity, /*skip_turn=*/true, &summary);
    callback = on_round_closed_;
    changed_.notify_all();
  }
  if (closed && callback) callback(summary);
}

void RoundCoordinator::OnRejoin(const std::string& identity) {
  Drop(identity, /*skip_turn=*/false, /*forget_assignment=*/false);
}

void RoundCoordinator::Exclude(const std::string& identity) {
  Drop(identity, /*skip_turn=*/true, /*forget_assignment=*/true);
}

void RoundCoordinator::Drop(const std::string& identity, bool skip_turn, bool forget_assignment) {
  RoundSummary summary;
  bool closed = false;
  std::function<void(const RoundSummary&)> callback;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (forget_assignment) assignments_.erase(identity);
    closed = DropParticipantLocked(identity, skip_turn, &summary);
    callback = on_round_closed_;
    changed_.notify_all();
  }
  if (closed && callback) callback(summary);
}

bool RoundCoordinator::DropParticipantLocked(const std::string& identity, bool skip_turn,
                                             RoundSummary* summary) {
  const bool was_participant = participants_.erase(identity) > 0;
  const bool had_sent = state_.submitted.count(identity) > 0;
  if (was_participant && skip_turn && options_.schedule == Schedule::kSequential && !had_sent) {
    CloseLocked("turn holder '" + identity + "' left", summary);
    return true;
  }
  if (MaybeCloseLocked(summary)) return true;
  if (was_participant && participants_.empty() && state_.submitted.empty() && closing_) {
    // The round had what it needed from a hospital that is gone, and nothing was sent: open it
    // again for the hospitals that (re)join, rather than waiting for an update that never comes.
    closing_ = false;
    state_.round_samples_trained = 0;
  }
  return false;
}

void RoundCoordinator::AssignLocked(const std::string& identity) {
  participants_.insert(identity);
  Assignment& assignment = assignments_[identity];
  if (assignment.version != state_.version) assignment = Assignment{state_.version, 0};
}

std::string RoundCoordinator::TurnHolderLocked() const {
  if (!participants_.empty()) return *participants_.begin();
  const auto n = static_cast<int64_t>(state_.join_order.size());
  for (int64_t i = 0; i < n; ++i) {
    const std::string& candidate = state_.join_order[(state_.turn + i) % n];
    if (connected_.count(candidate)) return candidate;
  }
  return "";
}

SyncDecision RoundCoordinator::Sync(const std::string& identity, int64_t have_version,
                                    std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto until = Clock::now() + wait;
  while (true) {
    SyncDecision decision;
    decision.round = state_.round;
    decision.version = state_.version;
    if (state_.finished) {
      decision.action = SyncDecision::Action::kDone;
    } else if (started_ && !closing_ && state_.submitted.count(identity) == 0) {
      if (options_.schedule == Schedule::kSplitFed) {
        AssignLocked(identity);
        decision.action = SyncDecision::Action::kTrain;
      } else if (TurnHolderLocked() == identity) {
        if (participants_.empty()) {
          // Skip hospitals that are not connected: the turn moves to this one.
          const auto it = std::find(state_.join_order.begin(), state_.join_order.end(), identity);
          state_.turn = it - state_.join_order.begin();
        }
        AssignLocked(identity);
        decision.action = SyncDecision::Action::kTrain;
      }
    }
    if (decision.action != SyncDecision::Action::kWait) {
      if (have_version != state_.version) decision.weights = state_.weights.clone();
      return decision;
    }
    if (changed_.wait_until(lock, until) == std::cv_status::timeout) {
      return decision;
    }
  }
}

double RoundCoordinator::OnTrainStep(const std::string& identity, int64_t model_version,
                                     int64_t samples, bool* round_closing) {
  std::lock_guard<std::mutex> lock(mutex_);
  *round_closing = false;
  CLEAVE_CHECK_INPUT(model_version >= 0 && model_version <= state_.version, "model version ",
                     model_version, " is not one the server issued (current ", state_.version, ")");
  const int64_t staleness = state_.version - model_version;
  if (staleness > options_.max_staleness) {
    ++state_.steps_refused;
    assignments_.erase(identity);
    throw RoundRefusal(
        grpc::StatusCode::ABORTED, "stale",
        detail::Concat("client model version ", model_version, " is ", staleness,
                       " versions old (at most ", options_.max_staleness,
                       " allowed): Sync and continue from version ", state_.version));
  }
  const auto assignment = assignments_.find(identity);
  if (assignment == assignments_.end() || assignment->second.version != model_version) {
    throw RoundRefusal(grpc::StatusCode::FAILED_PRECONDITION, "not_participant",
                       detail::Concat("this hospital was not told to train client model version ",
                                      model_version, " (round ", state_.round, "): Sync first"));
  }
  assignment->second.samples += samples;
  if (staleness == 0) {
    state_.round_samples_trained += samples;
    if (!closing_ && state_.round_samples_trained >= options_.round_samples) {
      closing_ = true;
      changed_.notify_all();
    }
    *round_closing = closing_;
  } else {
    *round_closing = true;  // a step of a round that has ended: stop and send the update
  }
  return 1.0 / (1.0 + static_cast<double>(staleness));
}

std::optional<RoundRefusal> RoundCoordinator::CheckUpdate(const at::Tensor& flat,
                                                          int64_t counted) const {
  const double largest = flat.abs().max().item<double>();
  if (!std::isfinite(largest)) {
    return RoundRefusal(grpc::StatusCode::INVALID_ARGUMENT, "nonfinite",
                        "the update has values that are not finite");
  }
  if (options_.max_update_abs > 0 && largest > options_.max_update_abs) {
    return RoundRefusal(grpc::StatusCode::INVALID_ARGUMENT, "out_of_bounds",
                        detail::Concat("the update has a value of magnitude ", largest,
                                       ", beyond the bound of ", options_.max_update_abs));
  }
  if (counted == 0) {
    return RoundRefusal(
        grpc::StatusCode::FAILED_PRECONDITION, "no_samples",
        "no training step of this hospital was counted for this update: Sync and train");
  }
  return std::nullopt;
}

UpdateOutcome RoundCoordinator::Submit(const std::string& identity, int64_t base_version,
                                       int64_t round, int64_t samples, const at::Tensor& delta) {
  RoundSummary summary;
  bool closed = false;
  UpdateOutcome outcome;
  std::function<void(const RoundSummary&)> callback;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    CLEAVE_CHECK_INPUT(samples > 0, "an update must count at least one sample, got ", samples);
    CLEAVE_CHECK_INPUT(round >= 1 && round <= state_.round, "round ", round,
                       " is not one the server has run (current ", state_.round, ")");
    CLEAVE_CHECK_INPUT(base_version >= 0 && base_version <= state_.version, "base version ",
                       base_version, " is not one the server issued (current ", state_.version,
                       ")");
    CLEAVE_CHECK_INPUT(delta.numel() == num_parameters_, "update has ", delta.numel(),
                       " values, the client-side model has ", num_parameters_);
    outcome.version = state_.version;
    const auto last = state_.last_round_submitted.find(identity);
    if (last != state_.last_round_submitted.end() && last->second >= round) {
      ++state_.updates_duplicate;
      outcome.duplicate = true;
      return outcome;
    }
    outcome.staleness = state_.version - base_version;
    if (outcome.staleness > options_.max_staleness) {
      ++state_.updates_refused;
      assignments_.erase(identity);
      throw RoundRefusal(
          grpc::StatusCode::ABORTED, "stale",
          detail::Concat("update from version ", base_version, " is ", outcome.staleness,
                         " versions old (at most ", options_.max_staleness,
                         " allowed): Sync and continue from "
                         "version ",
                         state_.version));
    }
    const auto assignment = assignments_.find(identity);
    if (assignment == assignments_.end() || assignment->second.version != base_version) {
      throw RoundRefusal(grpc::StatusCode::FAILED_PRECONDITION, "not_participant",
                         detail::Concat("this hospital was not told to train client model version ",
                                        base_version, " (round ", state_.round, "): Sync first"));
    }
    const int64_t counted = assignment->second.samples;
    const at::Tensor flat = delta.detach().to(at::kFloat).reshape({-1});
    if (std::optional<RoundRefusal> refusal = CheckUpdate(flat, counted)) {
      // A refused hospital does not hold the round up; what it trained is lost.
      assignments_.erase(assignment);
      closed = DropParticipantLocked(identity, /*skip_turn=*/true, &summary);
      callback = on_round_closed_;
      changed_.notify_all();
      lock.unlock();
      if (closed && callback) callback(summary);
      throw *refusal;
    }
    if (samples > counted) {
      ++state_.updates_capped;
      spdlog::warn(
          "update of '{}' for round {} claims {} samples, the server counted {}: "
          "weighted by {}",
          PeerText(identity), round, samples, counted, counted);
    }
    assignments_.erase(assignment);
    outcome.scale = 1.0 / (1.0 + static_cast<double>(outcome.staleness));
    // Dai et al.: a stale update moves the model less (scaled when the round is aggregated).
    state_.pending.push_back(
        PendingUpdate{std::min(samples, counted), outcome.staleness, flat.contiguous().clone()});
    ++state_.updates_accepted;
    ++state_.staleness_histogram[static_cast<size_t>(outcome.staleness)];
    if (outcome.staleness > 0) ++stale_in_round_;
    state_.last_round_submitted[identity] = round;
    if (round == state_.round) state_.submitted.insert(identity);
    closed = MaybeCloseLocked(&summary);
    outcome.version = state_.version;
    callback = on_round_closed_;
    changed_.notify_all();
  }
  if (closed && callback) callback(summary);
  return outcome;
}

bool RoundCoordinator::MaybeCloseLocked(RoundSummary* summary) {
  if (state_.finished || !started_) return false;
  const bool deadline_passed = options_.round_deadline.count() > 0 && now_() >= deadline_;
  if (options_.schedule == Schedule::kSequential) {
    if (!participants_.empty() && state_.submitted.count(*participants_.begin())) {
      CloseLocked("turn of '" + *participants_.begin() + "' done", summary);
      return true;
    }
    if (deadline_passed) {
      CloseLocked(participants_.empty()
                      ? "deadline, nobody took the turn"
                      : "deadline, turn of '" + *participants_.begin() + "' skipped",
                  summary);
      return true;
    }
    return false;
  }
  // splitfed
  bool all_in = !participants_.empty();
  for (const std::string& participant : participants_) {
    all_in = all_in && state_.submitted.count(participant) > 0;
  }
  const auto updates = static_cast<int>(state_.submitted.size());
  if (all_in && updates >= options_.quorum) {
    CloseLocked("all updates in", summary);
    return true;
  }
  if (all_in && deadline_passed) {
    CloseLocked("deadline, all participants' updates in (below the quorum)", summary);
    return true;
  }
  if (all_in) {
    // Fewer updates than the quorum (a robust aggregator needs several to out-vote one hostile
    // hospital). Connected hospitals that have not taken part may still add theirs: if the
    // sample target shut them out, the round opens again for them (the updates in are kept).
    bool someone_else = false;
    for (const auto& [identity, sessions] : connected_) {
      someone_else = someone_else || participants_.count(identity) == 0;
    }
    if (!someone_else) {
      CloseLocked("all updates in", summary);
      return true;
    }
    if (closing_) {
      spdlog::info(
          "round {}: {} of the {} update(s) a quorum needs; reopened for the other "
          "connected hospitals",
          state_.round, updates, options_.quorum);
      closing_ = false;
      state_.round_samples_trained = 0;
      changed_.notify_all();
    }
    return false;
  }
  if (deadline_passed) {
    if (static_cast<int>(state_.submitted.size()) >= options_.quorum) {
      CloseLocked("deadline with a quorum of updates", summary);
      return true;
    }
    // No quorum yet: hospitals still training are told to send what they have (closing_); if
    // none is left, the round reopens for new and returning hospitals. What was sent is kept.
    bool someone_training = false;
    for (const std::string& participant : participants_) {
      someone_training = someone_training || state_.submitted.count(participant) == 0;
    }
    spdlog::warn("round {}: deadline passed with {} of the {} update(s) a quorum needs; {}",
                 state_.round, state_.submitted.size(), options_.quorum,
                 someone_training ? "waiting for the hospitals still training"
                                  : "reopened for hospitals that (re)join");
    closing_ = someone_training;
    if (!someone_training) state_.round_samples_trained = 0;
    deadline_ = now_() + options_.round_deadline;
    changed_.notify_all();
  }
  return false;
}

void RoundCoordinator::CloseLocked(const std::string& why, RoundSummary* summary) {
  summary->clipped = 0;
  if (!state_.pending.empty()) {
    std::vector<ClientDelta> deltas;
    for (const PendingUpdate& update : state_.pending) {
      deltas.push_back(ClientDelta{update.delta, update.samples,
                                   1.0 / (1.0 + static_cast<double>(update.staleness))});
    }
    const AggregateResult result = Aggregate(deltas, options_.aggregation);
    // One fused multiply-add, as the running mean always was (bit for bit the same weights).
    at::Tensor next = state_.weights.clone();
    next.add_(result.step, result.step_scale);
    if (next.isfinite().all().item<bool>()) {
      state_.weights = next;
      ++state_.version;
      summary->clipped = result.clipped;
    } else {
      // Cannot happen with finite, bounded deltas; if it does, the model keeps its weights.
      spdlog::error("round {}: the aggregate of {} update(s) is not finite; not applied",
                    state_.round, state_.pending.size());
    }
  }
  const auto applied = static_cast<int64_t>(state_.pending.size());
  state_.updates_applied += applied;
  summary->round = state_.round;
  summary->version = state_.version;
  summary->updates = applied;
  summary->stale_updates = stale_in_round_;
  summary->samples = state_.round_samples_trained;
  summary->seconds = std::chrono::duration<double>(now_() - round_start_).count();
  summary->why = why;
  state_.pending.clear();
  state_.submitted.clear();
  state_.round_samples_trained = 0;
  if (options_.schedule == Schedule::kSequential) ++state_.turn;
  ++state_.round;
  if (options_.rounds > 0 && state_.round > options_.rounds) state_.finished = true;
  summary->finished = state_.finished;
  StartRoundLocked();
  changed_.notify_all();
}

void RoundCoordinator::DeadlineLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (started_ && !state_.finished) {
      changed_.wait_until(lock, deadline_);
    } else {
      changed_.wait(lock);
    }
    if (stopping_) break;
    lock.unlock();
    CheckDeadline();
    lock.lock();
  }
}

void RoundCoordinator::CheckDeadline() {
  RoundSummary summary;
  bool closed = false;
  std::function<void(const RoundSummary&)> callback;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!started_ || state_.finished || options_.round_deadline.count() == 0 ||
        now_() < deadline_) {
      return;
    }
    closed = MaybeCloseLocked(&summary);
    callback = on_round_closed_;
    changed_.notify_all();  // closing_ may have changed: Sync waiters re-decide
  }
  if (closed && callback) callback(summary);
}

int64_t RoundCoordinator::version() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_.version;
}

int64_t RoundCoordinator::round() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_.round;
}

bool RoundCoordinator::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_.finished;
}

bool RoundCoordinator::WaitForRound(int64_t round, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return state_.round > round || state_.finished; });
}

}  // namespace cleave::server
