#include "cleave/server/round_coordinator.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"

namespace cleave::server {

RoundCoordinator::RoundCoordinator(RoundOptions options, at::Tensor initial_weights, Now now)
    : options_(std::move(options)),
      num_parameters_(initial_weights.numel()),
      now_(now ? now : Now([] { return Clock::now(); })),
      policy_(MakeSchedulePolicy(options_.schedule)) {
  CheckRoundOptions(options_);
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
    stop_deadline_thread_ = true;
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
  state.phase = RestoredPhase(state.phase);
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = std::move(state);
  assignments_.clear();
  StartRoundLocked();
  changed_.notify_all();
}

void RoundCoordinator::StartRoundLocked() {
  participants_.clear();
  stale_in_round_ = 0;
  round_start_ = now_();
  deadline_ = round_start_ + options_.round_deadline;
}

bool RoundCoordinator::ActiveLocked() const {
  return state_.phase == RoundPhase::kTraining || state_.phase == RoundPhase::kClosing;
}

RoundView RoundCoordinator::ViewLocked() const {
  const bool deadline_passed = options_.round_deadline.count() > 0 && now_() >= deadline_;
  return RoundView{options_, state_, participants_, connected_, deadline_passed};
}

void RoundCoordinator::Notify(const Closed& closed) {
  std::function<void(const RoundSummary&)> callback;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    callback = on_round_closed_;
  }
  if (closed.closed && callback) callback(closed.summary);
}

void RoundCoordinator::OnJoin(const std::string& identity) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++connected_[identity];
  if (std::find(state_.join_order.begin(), state_.join_order.end(), identity) ==
      state_.join_order.end()) {
    state_.join_order.push_back(identity);
  }
  if (state_.phase == RoundPhase::kWaitingForClients &&
      static_cast<int>(connected_.size()) >= options_.min_clients) {
    state_.phase = RoundPhase::kTraining;
    StartRoundLocked();
    spdlog::info("round {} starts with {} hospital(s) connected", state_.round, connected_.size());
  }
  changed_.notify_all();
}

void RoundCoordinator::OnLeave(const std::string& identity) {
  Closed closed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = connected_.find(identity);
    if (it == connected_.end()) return;
    if (--it->second > 0) return;  // another session of the same hospital is still there
    connected_.erase(it);
    LeaveRoundLocked(identity, /*lost_turn=*/true, &closed);
    changed_.notify_all();
  }
  Notify(closed);
}

void RoundCoordinator::OnRejoin(const std::string& identity) {
  Drop(identity, /*lost_turn=*/false, /*forget_assignment=*/false);
}

void RoundCoordinator::Exclude(const std::string& identity) {
  Drop(identity, /*lost_turn=*/true, /*forget_assignment=*/true);
}

void RoundCoordinator::Drop(const std::string& identity, bool lost_turn, bool forget_assignment) {
  Closed closed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (forget_assignment) assignments_.erase(identity);
    LeaveRoundLocked(identity, lost_turn, &closed);
    changed_.notify_all();
  }
  Notify(closed);
}

void RoundCoordinator::LeaveRoundLocked(const std::string& identity, bool lost_turn,
                                        Closed* closed) {
  const bool was_participant = participants_.erase(identity) > 0;
  if (!ActiveLocked()) return;
  if (was_participant) {
    CarryOutLocked(policy_->OnParticipantGone(ViewLocked(), identity, lost_turn), closed);
    if (closed->closed) return;
  }
  ReviewRoundLocked(closed);
  if (!closed->closed && was_participant) ReopenIfAbandonedLocked();
}

void RoundCoordinator::AssignLocked(const std::string& identity) {
  policy_->OnAssigned(identity, participants_.empty(), &state_);
  participants_.insert(identity);
  Assignment& assignment = assignments_[identity];
  if (assignment.version != state_.version) assignment = Assignment{state_.version, 0};
}

SyncDecision RoundCoordinator::Sync(const std::string& identity, int64_t have_version,
                                    std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto until = Clock::now() + wait;
  while (true) {
    SyncDecision decision;
    decision.round = state_.round;
    decision.version = state_.version;
    if (state_.phase == RoundPhase::kFinished) {
      decision.action = SyncDecision::Action::kDone;
      decision.round = state_.round - 1;  // the last round run (state_.round is the one after)
    } else if (state_.phase == RoundPhase::kTraining && state_.submitted.count(identity) == 0 &&
               policy_->MayTrain(ViewLocked(), identity)) {
      AssignLocked(identity);
      decision.action = SyncDecision::Action::kTrain;
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

RoundCoordinator::Assignment& RoundCoordinator::AssignmentForLocked(const std::string& identity,
                                                                    int64_t version,
                                                                    const char* what) {
  const int64_t staleness = state_.version - version;
  if (staleness > options_.max_staleness) {
    assignments_.erase(identity);
    throw Refusal(RefusalKind::kStale,
                  detail::Concat(what, version, " is ", staleness, " versions old (at most ",
                                 options_.max_staleness,
                                 " allowed): Sync and continue from version ", state_.version));
  }
  const auto assignment = assignments_.find(identity);
  if (assignment == assignments_.end() || assignment->second.version != version) {
    throw Refusal(RefusalKind::kNotInRound,
                  detail::Concat("this hospital was not told to train client model version ",
                                 version, " (round ", state_.round, "): Sync first"));
  }
  return assignment->second;
}

StepAdmission RoundCoordinator::AdmitStep(const std::string& identity, int64_t model_version,
                                          int64_t samples) {
  std::lock_guard<std::mutex> lock(mutex_);
  CLEAVE_CHECK_INPUT(model_version >= 0 && model_version <= state_.version, "model version ",
                     model_version, " is not one the server issued (current ", state_.version, ")");
  Assignment& assignment = AssignmentForLocked(identity, model_version, "client model version ");
  assignment.samples += samples;
  const int64_t staleness = state_.version - model_version;
  StepAdmission admission;
  admission.scale = 1.0 / (1.0 + static_cast<double>(staleness));
  if (staleness > 0) {
    admission.round_closing = true;  // a step of a round that has ended: stop and send the update
    return admission;
  }
  state_.round_samples_trained += samples;
  if (state_.phase == RoundPhase::kTraining &&
      state_.round_samples_trained >= options_.round_samples) {
    state_.phase = RoundPhase::kClosing;
    changed_.notify_all();
  }
  admission.round_closing = state_.phase == RoundPhase::kClosing;
  return admission;
}

std::optional<Refusal> RoundCoordinator::CheckUpdate(const at::Tensor& flat,
                                                     int64_t counted) const {
  const double largest = flat.abs().max().item<double>();
  if (!std::isfinite(largest)) {
    return Refusal(RefusalKind::kNonFinite, "the update has values that are not finite");
  }
  if (options_.max_update_abs > 0 && largest > options_.max_update_abs) {
    return Refusal(RefusalKind::kOutOfBounds,
                   detail::Concat("the update has a value of magnitude ", largest,
                                  ", beyond the bound of ", options_.max_update_abs));
  }
  if (counted == 0) {
    return Refusal(RefusalKind::kNoSamples,
                   "no training step of this hospital was counted for this update: Sync and train");
  }
  return std::nullopt;
}

UpdateOutcome RoundCoordinator::Submit(const std::string& identity, int64_t base_version,
                                       int64_t round, int64_t samples, const at::Tensor& delta) {
  Closed closed;
  UpdateOutcome outcome;
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
    const auto last = state_.last_round_submitted.find(identity);
    if (last != state_.last_round_submitted.end() && last->second >= round) {
      ++state_.updates_duplicate;
      outcome.duplicate = true;
      outcome.version = state_.version;
      return outcome;
    }
    const int64_t counted =
        AssignmentForLocked(identity, base_version, "update from version ").samples;
    const at::Tensor flat = delta.detach().to(at::kFloat).reshape({-1});
    if (std::optional<Refusal> refusal = CheckUpdate(flat, counted)) {
      // A refused hospital does not hold the round up; what it trained is lost.
      assignments_.erase(identity);
      LeaveRoundLocked(identity, /*lost_turn=*/true, &closed);
      changed_.notify_all();
      lock.unlock();
      Notify(closed);
      throw *refusal;
    }
    outcome = AcceptLocked(identity, round, samples, counted, state_.version - base_version, flat);
    ReviewRoundLocked(&closed);
    outcome.version = state_.version;
    changed_.notify_all();
  }
  Notify(closed);
  return outcome;
}

UpdateOutcome RoundCoordinator::AcceptLocked(const std::string& identity, int64_t round,
                                             int64_t samples, int64_t counted, int64_t staleness,
                                             const at::Tensor& flat) {
  if (samples > counted) {
    ++state_.updates_capped;
    spdlog::warn(
        "update of '{}' for round {} claims {} samples, the server counted {}: "
        "weighted by {}",
        PeerText(identity), round, samples, counted, counted);
  }
  assignments_.erase(identity);
  UpdateOutcome outcome;
  outcome.staleness = staleness;
  outcome.scale = 1.0 / (1.0 + static_cast<double>(outcome.staleness));
  // Dai et al.: a stale update moves the model less (scaled when the round is aggregated).
  state_.pending.push_back(
      PendingUpdate{std::min(samples, counted), outcome.staleness, flat.contiguous().clone()});
  ++state_.updates_accepted;
  ++state_.staleness_histogram[static_cast<size_t>(outcome.staleness)];
  if (outcome.staleness > 0) ++stale_in_round_;
  state_.last_round_submitted[identity] = round;
  if (round == state_.round) state_.submitted.insert(identity);
  return outcome;
}

void RoundCoordinator::ReviewRoundLocked(Closed* closed) {
  if (!ActiveLocked()) return;
  CarryOutLocked(policy_->Judge(ViewLocked()), closed);
}

void RoundCoordinator::CarryOutLocked(const RoundVerdict& verdict, Closed* closed) {
  switch (verdict.action) {
    case RoundVerdict::Action::kKeepOpen:
      return;
    case RoundVerdict::Action::kClose:
      CloseRoundLocked(verdict.why, &closed->summary);
      closed->closed = true;
      return;
    case RoundVerdict::Action::kReopen:
      ReopenRoundLocked(verdict.why);
      return;
    case RoundVerdict::Action::kExtendDeadline:
      ExtendDeadlineLocked(verdict);
      return;
  }
}

void RoundCoordinator::ReopenRoundLocked(const std::string& why) {
  if (!why.empty()) spdlog::info("round {}: {}", state_.round, why);
  state_.phase = RoundPhase::kTraining;
  state_.round_samples_trained = 0;
  changed_.notify_all();
}

void RoundCoordinator::ReopenIfAbandonedLocked() {
  // The round had what it needed from a hospital that is gone, and nothing was sent: open it
  // again for the hospitals that (re)join, rather than waiting for an update that never comes.
  if (participants_.empty() && state_.submitted.empty() && state_.phase == RoundPhase::kClosing) {
    ReopenRoundLocked("");
  }
}

void RoundCoordinator::ExtendDeadlineLocked(const RoundVerdict& verdict) {
  spdlog::warn("round {}: {}", state_.round, verdict.why);
  if (verdict.stragglers) {
    state_.phase = RoundPhase::kClosing;
  } else {
    ReopenRoundLocked("");
  }
  deadline_ = now_() + options_.round_deadline;
  changed_.notify_all();
}

void RoundCoordinator::CloseRoundLocked(const std::string& why, RoundSummary* summary) {
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
  policy_->OnClosed(&state_);
  ++state_.round;
  const bool last = options_.rounds > 0 && state_.round > options_.rounds;
  state_.phase = last ? RoundPhase::kFinished : RoundPhase::kTraining;
  summary->finished = last;
  StartRoundLocked();
  changed_.notify_all();
}

void RoundCoordinator::DeadlineLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_deadline_thread_) {
    if (ActiveLocked()) {
      changed_.wait_until(lock, deadline_);
    } else {
      changed_.wait(lock);
    }
    if (stop_deadline_thread_) break;
    lock.unlock();
    CheckDeadline();
    lock.lock();
  }
}

void RoundCoordinator::CheckDeadline() {
  Closed closed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ActiveLocked() || options_.round_deadline.count() == 0 || now_() < deadline_) return;
    ReviewRoundLocked(&closed);
    changed_.notify_all();  // the phase may have changed: Sync waiters re-decide
  }
  Notify(closed);
}

RoundPhase RoundCoordinator::phase() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_.phase;
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
  return state_.finished();
}

bool RoundCoordinator::WaitForRound(int64_t round, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout,
                           [&] { return state_.round > round || state_.finished(); });
}

}  // namespace cleave::server
