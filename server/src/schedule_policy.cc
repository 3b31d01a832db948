#include "cleave/server/schedule_policy.h"

#include <algorithm>

#include "cleave/core/error.h"

namespace cleave::server {

void SchedulePolicy::OnAssigned(const std::string&, bool, RoundState*) const {}

RoundVerdict SchedulePolicy::OnParticipantGone(const RoundView&, const std::string&, bool) const {
  return RoundVerdict::KeepOpen();
}

void SchedulePolicy::OnClosed(RoundState*) const {}

std::string SequentialPolicy::TurnHolder(const RoundView& round) {
  if (!round.participants.empty()) return *round.participants.begin();
  const std::vector<std::string>& order = round.state.join_order;
  const auto n = static_cast<int64_t>(order.size());
  for (int64_t i = 0; i < n; ++i) {
    const std::string& candidate = order[static_cast<size_t>((round.state.turn + i) % n)];
    if (round.connected.count(candidate)) return candidate;
  }
  return "";
}

bool SequentialPolicy::MayTrain(const RoundView& round, const std::string& identity) const {
  return TurnHolder(round) == identity;
}

void SequentialPolicy::OnAssigned(const std::string& identity, bool first,
                                  RoundState* state) const {
  if (!first) return;
  // Hospitals that are not connected were skipped: the turn moves to this one.
  const auto it = std::find(state->join_order.begin(), state->join_order.end(), identity);
  state->turn = it - state->join_order.begin();
}

RoundVerdict SequentialPolicy::OnParticipantGone(const RoundView& round,
                                                 const std::string& identity,
                                                 bool lost_turn) const {
  if (lost_turn && round.state.submitted.count(identity) == 0) {
    return RoundVerdict::Close("turn holder '" + identity + "' left");
  }
  return RoundVerdict::KeepOpen();
}

RoundVerdict SequentialPolicy::Judge(const RoundView& round) const {
  const std::string holder = round.participants.empty() ? "" : *round.participants.begin();
  if (!holder.empty() && round.state.submitted.count(holder)) {
    return RoundVerdict::Close("turn of '" + holder + "' done");
  }
  if (round.deadline_passed) {
    return RoundVerdict::Close(holder.empty() ? "deadline, nobody took the turn"
                                              : "deadline, turn of '" + holder + "' skipped");
  }
  return RoundVerdict::KeepOpen();
}

void SequentialPolicy::OnClosed(RoundState* state) const { ++state->turn; }

bool SplitFedPolicy::MayTrain(const RoundView&, const std::string&) const { return true; }

RoundVerdict SplitFedPolicy::Judge(const RoundView& round) const {
  bool all_in = !round.participants.empty();
  for (const std::string& participant : round.participants) {
    all_in = all_in && round.state.submitted.count(participant) > 0;
  }
  if (all_in) return JudgeAllIn(round);
  if (round.deadline_passed) return JudgeDeadline(round);
  return RoundVerdict::KeepOpen();
}

RoundVerdict SplitFedPolicy::JudgeAllIn(const RoundView& round) const {
  const auto updates = static_cast<int>(round.state.submitted.size());
  if (updates >= round.options.quorum) return RoundVerdict::Close("all updates in");
  if (round.deadline_passed) {
    return RoundVerdict::Close("deadline, all participants' updates in (below the quorum)");
  }
  // Fewer updates than the quorum (a robust aggregator needs several to out-vote one hostile
  // hospital). Connected hospitals that have not taken part may still add theirs: if the sample
  // target shut them out, the round opens again for them (the updates in are kept).
  bool someone_else = false;
  for (const auto& [identity, sessions] : round.connected) {
    someone_else = someone_else || round.participants.count(identity) == 0;
  }
  if (!someone_else) return RoundVerdict::Close("all updates in");
  if (round.state.phase == RoundPhase::kClosing) {
    return {RoundVerdict::Action::kReopen,
            detail::Concat(updates, " of the ", round.options.quorum,
                           " update(s) a quorum needs; reopened for the other connected hospitals"),
            false};
  }
  return RoundVerdict::KeepOpen();
}

RoundVerdict SplitFedPolicy::JudgeDeadline(const RoundView& round) const {
  const auto updates = static_cast<int>(round.state.submitted.size());
  if (updates >= round.options.quorum) {
    return RoundVerdict::Close("deadline with a quorum of updates");
  }
  // No quorum yet: hospitals still training are told to send what they have; if none is left,
  // the round reopens for new and returning hospitals. What was sent is kept.
  bool someone_training = false;
  for (const std::string& participant : round.participants) {
    someone_training = someone_training || round.state.submitted.count(participant) == 0;
  }
  return {RoundVerdict::Action::kExtendDeadline,
          detail::Concat("deadline passed with ", updates, " of the ", round.options.quorum,
                         " update(s) a quorum needs; ",
                         someone_training ? "waiting for the hospitals still training"
                                          : "reopened for hospitals that (re)join"),
          someone_training};
}

std::unique_ptr<SchedulePolicy> MakeSchedulePolicy(Schedule schedule) {
  switch (schedule) {
    case Schedule::kSequential:
      return std::make_unique<SequentialPolicy>();
    case Schedule::kSplitFed:
      return std::make_unique<SplitFedPolicy>();
    case Schedule::kSingle:
      break;
  }
  CLEAVE_ENFORCE(false, "the single schedule runs no rounds: it has no schedule policy");
  return nullptr;
}

}  // namespace cleave::server
