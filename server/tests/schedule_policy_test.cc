// Each schedule's policy on its own, on round views built here: who may train, what a departure
// does, and what closes, reopens or extends a round.
#include "cleave/server/schedule_policy.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "cleave/core/error.h"

namespace cleave::server {
namespace {

using Action = RoundVerdict::Action;

// A round as a policy sees it, built field by field by each test.
struct Round {
  RoundOptions options;
  RoundState state;
  std::set<std::string> participants;
  std::map<std::string, int> connected;
  bool deadline_passed = false;

  Round() { state.phase = RoundPhase::kTraining; }
  RoundView View() const { return {options, state, participants, connected, deadline_passed}; }
  void Connect(std::initializer_list<const char*> names) {
    for (const char* name : names) {
      connected[name] = 1;
      state.join_order.push_back(name);
    }
  }
};

TEST(SequentialPolicyTest, TheTurnGoesInJoinOrderSkippingHospitalsNotConnected) {
  SequentialPolicy policy;
  Round round;
  round.Connect({"a", "b", "c"});
  EXPECT_TRUE(policy.MayTrain(round.View(), "a"));
  EXPECT_FALSE(policy.MayTrain(round.View(), "b"));
  round.connected.erase("a");  // a is away: b's turn
  EXPECT_EQ(SequentialPolicy::TurnHolder(round.View()), "b");
  policy.OnAssigned("b", /*first=*/true, &round.state);
  EXPECT_EQ(round.state.turn, 1);
  round.participants.insert("b");
  EXPECT_TRUE(policy.MayTrain(round.View(), "b"));   // the holder may sync again
  EXPECT_FALSE(policy.MayTrain(round.View(), "c"));  // nobody else while b holds the turn
  policy.OnClosed(&round.state);
  EXPECT_EQ(round.state.turn, 2);
}

TEST(SequentialPolicyTest, TheHoldersUpdateOrTheDeadlineClosesTheRound) {
  SequentialPolicy policy;
  Round round;
  round.Connect({"a", "b"});
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kKeepOpen);
  round.deadline_passed = true;
  EXPECT_EQ(policy.Judge(round.View()).why, "deadline, nobody took the turn");
  round.deadline_passed = false;
  round.participants.insert("a");
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kKeepOpen);
  round.deadline_passed = true;
  EXPECT_EQ(policy.Judge(round.View()).why, "deadline, turn of 'a' skipped");
  round.deadline_passed = false;
  round.state.submitted.insert("a");
  const RoundVerdict done = policy.Judge(round.View());
  EXPECT_EQ(done.action, Action::kClose);
  EXPECT_EQ(done.why, "turn of 'a' done");
}

TEST(SequentialPolicyTest, AHolderThatLeavesWithoutItsUpdateLosesTheTurn) {
  SequentialPolicy policy;
  Round round;
  round.Connect({"a", "b"});
  EXPECT_EQ(policy.OnParticipantGone(round.View(), "a", /*lost_turn=*/true).action, Action::kClose);
  // Rejoined (not lost): it takes the turn again through Sync.
  EXPECT_EQ(policy.OnParticipantGone(round.View(), "a", /*lost_turn=*/false).action,
            Action::kKeepOpen);
  round.state.submitted.insert("a");  // its update is in: nothing to skip
  EXPECT_EQ(policy.OnParticipantGone(round.View(), "a", /*lost_turn=*/true).action,
            Action::kKeepOpen);
}

TEST(SplitFedPolicyTest, EveryoneTrainsAndAllUpdatesInAtTheQuorumClose) {
  SplitFedPolicy policy;
  Round round;
  round.options.quorum = 2;
  round.Connect({"a", "b"});
  EXPECT_TRUE(policy.MayTrain(round.View(), "a"));
  EXPECT_TRUE(policy.MayTrain(round.View(), "b"));
  round.participants = {"a", "b"};
  round.state.submitted = {"a"};
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kKeepOpen);
  round.state.submitted = {"a", "b"};
  const RoundVerdict all_in = policy.Judge(round.View());
  EXPECT_EQ(all_in.action, Action::kClose);
  EXPECT_EQ(all_in.why, "all updates in");
}

TEST(SplitFedPolicyTest, BelowTheQuorumTheRoundReopensForHospitalsNotYetIn) {
  SplitFedPolicy policy;
  Round round;
  round.options.quorum = 3;
  round.Connect({"a", "b", "c"});
  round.participants = {"a", "b"};
  round.state.submitted = {"a", "b"};
  // c could still add an update; the round is open already: keep it so.
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kKeepOpen);
  // The sample target shut c out: reopen.
  round.state.phase = RoundPhase::kClosing;
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kReopen);
  // Nobody else is connected: what is in is all there will be.
  round.connected.erase("c");
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kClose);
  // At the deadline the participants' updates close the round even below the quorum.
  round.connected["c"] = 1;
  round.deadline_passed = true;
  EXPECT_EQ(policy.Judge(round.View()).action, Action::kClose);
}

TEST(SplitFedPolicyTest, TheDeadlineClosesWithAQuorumElseExtends) {
  SplitFedPolicy policy;
  Round round;
  round.options.quorum = 2;
  round.Connect({"a", "b", "hung"});
  round.participants = {"a", "b", "hung"};
  round.state.submitted = {"a"};
  round.deadline_passed = true;
  const RoundVerdict waiting = policy.Judge(round.View());
  EXPECT_EQ(waiting.action, Action::kExtendDeadline);
  EXPECT_TRUE(waiting.stragglers);  // b and hung are told to send what they have
  round.state.submitted = {"a", "b"};
  EXPECT_EQ(policy.Judge(round.View()).why, "deadline with a quorum of updates");
  // Nobody training and no quorum: extended, and reopened for hospitals that (re)join.
  round.participants = {"a"};
  round.state.submitted = {};
  round.participants.clear();
  const RoundVerdict empty = policy.Judge(round.View());
  EXPECT_EQ(empty.action, Action::kExtendDeadline);
  EXPECT_FALSE(empty.stragglers);
}

TEST(SchedulePolicyTest, EachScheduleWithRoundsHasItsPolicy) {
  EXPECT_EQ(MakeSchedulePolicy(Schedule::kSequential)->schedule(), Schedule::kSequential);
  EXPECT_EQ(MakeSchedulePolicy(Schedule::kSplitFed)->schedule(), Schedule::kSplitFed);
  EXPECT_THROW(MakeSchedulePolicy(Schedule::kSingle), Error);
}

}  // namespace
}  // namespace cleave::server
