// What a schedule decides in a round, one class per schedule: who may train now, what a
// participant that leaves does to the round, and what ends it. RoundCoordinator asks its policy
// and carries the verdict out (closing, reopening, moving the deadline); the policy changes
// nothing but the turn. The single schedule runs no rounds and has no policy (SplitServer builds
// no coordinator for it).
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>

#include "cleave/server/round_state.h"

namespace cleave::server {

// What a policy sees of the round (read-only).
struct RoundView {
  const RoundOptions& options;
  const RoundState& state;
  const std::set<std::string>& participants;    // assigned to train in this round
  const std::map<std::string, int>& connected;  // identity -> sessions
  bool deadline_passed = false;
};

// What the round should do now.
struct RoundVerdict {
  enum class Action {
    kKeepOpen,
    kClose,   // aggregate what is in and start the next round
    kReopen,  // back to kTraining for hospitals not yet in (the updates in are kept)
    // The deadline passed without a quorum: set another; `stragglers`: tell the hospitals still
    // training to send what they have (kClosing), else reopen for hospitals that (re)join.
    kExtendDeadline,
  };
  Action action = Action::kKeepOpen;
  std::string why;  // for the round's summary line or the log
  bool stragglers = false;

  static RoundVerdict KeepOpen() { return {}; }
  static RoundVerdict Close(std::string why) { return {Action::kClose, std::move(why), false}; }
};

class SchedulePolicy {
 public:
  virtual ~SchedulePolicy() = default;
  virtual Schedule schedule() const = 0;
  // Whether Sync assigns `identity` (connected, has not sent this round's update) to train in the
  // open round.
  virtual bool MayTrain(const RoundView& round, const std::string& identity) const = 0;
  // `identity` was assigned; `first`: nobody else is in the round yet. (Sequential: the turn
  // moves to it, skipping hospitals that are not connected.)
  virtual void OnAssigned(const std::string& identity, bool first, RoundState* state) const;
  // A participant left the round without its update counted; `lost_turn`: it left, vanished or
  // was refused (rather than rejoined).
  virtual RoundVerdict OnParticipantGone(const RoundView& round, const std::string& identity,
                                         bool lost_turn) const;
  // After an update, a departure or the deadline: what the round does.
  virtual RoundVerdict Judge(const RoundView& round) const = 0;
  // The round closed (sequential: the turn passes on).
  virtual void OnClosed(RoundState* state) const;
};

// Sequential: hospitals take turns in join order; the turn holder's update closes the round.
class SequentialPolicy final : public SchedulePolicy {
 public:
  Schedule schedule() const override { return Schedule::kSequential; }
  bool MayTrain(const RoundView& round, const std::string& identity) const override;
  void OnAssigned(const std::string& identity, bool first, RoundState* state) const override;
  RoundVerdict OnParticipantGone(const RoundView& round, const std::string& identity,
                                 bool lost_turn) const override;
  RoundVerdict Judge(const RoundView& round) const override;
  void OnClosed(RoundState* state) const override;
  // Whose turn it is: the participant, else the first connected hospital from `state.turn` on in
  // join order ("" if none is connected).
  static std::string TurnHolder(const RoundView& round);
};

// SplitFed: every connected hospital trains; the round closes when all participants' updates
// are in and they reach the quorum (or nobody else could add one), or at the deadline with one.
class SplitFedPolicy final : public SchedulePolicy {
 public:
  Schedule schedule() const override { return Schedule::kSplitFed; }
  bool MayTrain(const RoundView& round, const std::string& identity) const override;
  RoundVerdict Judge(const RoundView& round) const override;

 private:
  RoundVerdict JudgeAllIn(const RoundView& round) const;
  RoundVerdict JudgeDeadline(const RoundView& round) const;
};

// The policy of a schedule with rounds; throws Error for kSingle.
std::unique_ptr<SchedulePolicy> MakeSchedulePolicy(Schedule schedule);

}  // namespace cleave::server
