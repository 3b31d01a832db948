// RoundCoordinator without a network or a model: schedules, averaging against a reference
// computed here, staleness, duplicates, deadlines with a quorum, leavers, rejoiners and resume.
#include "cleave/server/round_coordinator.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "cleave/server/server_checkpoint.h"

namespace cleave::server {
namespace {

using namespace std::chrono_literals;
using Action = SyncDecision::Action;

constexpr int64_t kParameters = 37;

// A clock the test moves: deadlines pass when the test says so, not after a real wait.
struct TestClock {
  RoundCoordinator::Clock::time_point now{};
  RoundCoordinator::Now Function() {
    return [this] { return now; };
  }
};

RoundOptions SplitFed(int clients) {
  RoundOptions options;
  options.schedule = Schedule::kSplitFed;
  options.round_samples = 100;
  options.min_clients = clients;
  options.max_staleness = 2;
  return options;
}

// Trains `identity` in the current round: Sync (must say TRAIN) and one step of `samples`.
SyncDecision Train(RoundCoordinator& rounds, const std::string& identity, int64_t samples,
                   int64_t have_version = -1) {
  const SyncDecision decision = rounds.Sync(identity, have_version, 0ms);
  EXPECT_EQ(decision.action, Action::kTrain) << identity;
  rounds.AdmitStep(identity, decision.version, samples);
  return decision;
}

void ExpectAllClose(const at::Tensor& got, const at::Tensor& want) {
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6))
      << "max difference " << (got - want).abs().max().item<double>();
}

TEST(RoundCoordinatorTest, ScheduleNamesRoundTrip) {
  for (Schedule s : {Schedule::kSingle, Schedule::kSequential, Schedule::kSplitFed}) {
    EXPECT_EQ(ParseSchedule(ScheduleName(s)), s);
  }
  EXPECT_THROW(ParseSchedule("gossip"), UserError);
}

TEST(RoundCoordinatorTest, SplitFedAveragesThreeHospitalsWeightedBySamples) {
  const at::Tensor initial = at::randn({kParameters});
  RoundCoordinator rounds(SplitFed(3), initial);
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  // Not started before the third hospital is there.
  EXPECT_EQ(rounds.Sync("a", -1, 0ms).action, Action::kWait);
  rounds.OnJoin("c");
  const std::vector<std::string> names = {"a", "b", "c"};
  const std::vector<int64_t> samples = {30, 50, 40};
  std::vector<at::Tensor> deltas;
  for (size_t i = 0; i < 3; ++i) {
    const SyncDecision decision = Train(rounds, names[i], samples[i]);
    EXPECT_EQ(decision.version, 0);
    ExpectAllClose(decision.weights, initial);
    deltas.push_back(at::randn({kParameters}));
  }
  // 120 samples >= 100: the round is closing; a step says so.
  EXPECT_TRUE(rounds.AdmitStep("a", 0, 1).round_closing);
  EXPECT_EQ(rounds.Sync("d-not-joined", -1, 0ms).action, Action::kWait);
  for (size_t i = 0; i < 3; ++i) {
    const UpdateOutcome outcome = rounds.Submit(names[i], 0, 1, samples[i], deltas[i]);
    EXPECT_FALSE(outcome.duplicate);
    EXPECT_EQ(outcome.staleness, 0);
    EXPECT_EQ(outcome.version, i < 2 ? 0 : 1);  // the last one closes the round
  }
  const at::Tensor reference =
      initial + (30 * deltas[0] + 50 * deltas[1] + 40 * deltas[2]) / 120.0;
  const RoundState state = rounds.Snapshot();
  EXPECT_EQ(state.version, 1);
  EXPECT_EQ(state.round, 2);
  ExpectAllClose(state.weights, reference);
  EXPECT_EQ(state.updates_accepted, 3);
  EXPECT_EQ(state.updates_applied, 3);
  // Everyone starts the next round from the average.
  const SyncDecision next = rounds.Sync("b", 0, 0ms);
  EXPECT_EQ(next.action, Action::kTrain);
  EXPECT_EQ(next.version, 1);
  ExpectAllClose(next.weights, reference);
}

TEST(RoundCoordinatorTest, SequentialHandsTheWeightsFromOneHospitalToTheNext) {
  RoundOptions options = SplitFed(2);
  options.schedule = Schedule::kSequential;
  const at::Tensor initial = at::randn({kParameters});
  RoundCoordinator rounds(options, initial);
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  EXPECT_EQ(rounds.Sync("b", -1, 0ms).action, Action::kWait);  // a's turn first (join order)
  Train(rounds, "a", 100);
  const at::Tensor delta_a = at::randn({kParameters});
  EXPECT_EQ(rounds.Submit("a", 0, 1, 100, delta_a).version, 1);
  EXPECT_EQ(rounds.Sync("a", 1, 0ms).action, Action::kWait);  // now b's turn
  const SyncDecision b = Train(rounds, "b", 100, -1);
  EXPECT_EQ(b.version, 1);
  ExpectAllClose(b.weights, initial + delta_a);  // a's weights, passed on whole
  const at::Tensor delta_b = at::randn({kParameters});
  rounds.Submit("b", 1, 2, 100, delta_b);
  ExpectAllClose(rounds.Snapshot().weights, initial + delta_a + delta_b);
  EXPECT_EQ(rounds.Sync("a", 1, 0ms).action, Action::kTrain);  // back to a
}

TEST(RoundCoordinatorTest, SequentialSkipsAHospitalThatLeftDuringItsTurn) {
  RoundOptions options = SplitFed(2);
  options.schedule = Schedule::kSequential;
  RoundCoordinator rounds(options, at::zeros({kParameters}));
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 10);
  rounds.OnLeave("a");
  EXPECT_EQ(rounds.round(), 2);
  EXPECT_EQ(rounds.version(), 0);  // nothing was applied
  EXPECT_EQ(rounds.Sync("b", -1, 0ms).action, Action::kTrain);
}

TEST(RoundCoordinatorTest, StaleUpdateWithinTheBoundIsAppliedWithAScaledRate) {
  RoundOptions options = SplitFed(2);
  const at::Tensor initial = at::randn({kParameters});
  RoundCoordinator rounds(options, initial);
  rounds.OnJoin("fast");
  rounds.OnJoin("slow");
  Train(rounds, "fast", 60);
  Train(rounds, "slow", 60);
  const at::Tensor fast1 = at::randn({kParameters});
  rounds.Submit("fast", 0, 1, 60, fast1);
  // slow drops off before sending; the round closes with fast's update alone.
  rounds.OnLeave("slow");
  ASSERT_EQ(rounds.round(), 2);
  EXPECT_EQ(rounds.version(), 1);
  const at::Tensor weights1 = initial + fast1;
  ExpectAllClose(rounds.Snapshot().weights, weights1);
  rounds.OnJoin("slow");  // back, with the update it computed from version 0
  // slow's round-1 update arrives one version late: applied in round 2, scaled by 1/2.
  const at::Tensor slow1 = at::randn({kParameters});
  const UpdateOutcome late = rounds.Submit("slow", 0, 1, 40, slow1);
  EXPECT_EQ(late.staleness, 1);
  EXPECT_DOUBLE_EQ(late.scale, 0.5);
  Train(rounds, "fast", 100, 1);
  const at::Tensor fast2 = at::randn({kParameters});
  rounds.Submit("fast", 1, 2, 100, fast2);
  const RoundState state = rounds.Snapshot();
  EXPECT_EQ(state.version, 2);
  ExpectAllClose(state.weights, weights1 + (100 * fast2 + 40 * 0.5 * slow1) / 140.0);
  EXPECT_EQ(state.staleness_histogram[0], 2);
  EXPECT_EQ(state.staleness_histogram[1], 1);
  EXPECT_EQ(state.updates_accepted, state.updates_applied);
}

TEST(RoundCoordinatorTest, TooStaleUpdatesAndStepsAreRefusedAsStale) {
  RoundOptions options = SplitFed(1);
  options.max_staleness = 0;
  RoundCoordinator rounds(options, at::zeros({kParameters}));
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 100);
  rounds.Submit("a", 0, 1, 100, at::ones({kParameters}));  // version 1
  try {
    rounds.Submit("b", 0, 1, 10, at::ones({kParameters}));
    FAIL() << "a stale update was accepted";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kStale);
    EXPECT_STREQ(error.reason(), "stale");
    EXPECT_NE(std::string(error.what()).find("Sync"), std::string::npos) << error.what();
  }
  try {
    rounds.AdmitStep("b", 0, 10);
    FAIL() << "a stale step was admitted";
  } catch (const Refusal& error) {
    EXPECT_EQ(error.kind(), RefusalKind::kStale);
  }
  const RoundState state = rounds.Snapshot();
  EXPECT_EQ(state.updates_accepted, 1);
  ExpectAllClose(state.weights, at::ones({kParameters}));  // untouched by the refused update
  // A version the server never issued is bad input, not staleness.
  EXPECT_THROW(rounds.AdmitStep("a", 7, 1), InvalidInput);
}

TEST(RoundCoordinatorTest, AResentUpdateIsAppliedOnce) {
  RoundOptions options = SplitFed(2);
  RoundCoordinator rounds(options, at::zeros({kParameters}));
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 50);
  Train(rounds, "b", 50);
  const at::Tensor delta = at::randn({kParameters});
  EXPECT_FALSE(rounds.Submit("a", 0, 1, 50, delta).duplicate);
  EXPECT_TRUE(rounds.Submit("a", 0, 1, 50, delta).duplicate);  // a retry after a lost reply
  rounds.Submit("b", 0, 1, 50, at::zeros({kParameters}));
  const RoundState state = rounds.Snapshot();
  ExpectAllClose(state.weights, delta * 0.5);
  EXPECT_EQ(state.updates_accepted, 2);
  EXPECT_EQ(state.updates_applied, 2);
  EXPECT_EQ(state.updates_duplicate, 1);
}

TEST(RoundCoordinatorTest, AKilledHospitalDoesNotStallTheRound) {
  RoundOptions options = SplitFed(3);
  options.round_deadline = 500ms;
  options.quorum = 2;
  TestClock clock;
  RoundCoordinator rounds(options, at::zeros({kParameters}), clock.Function());
  for (const char* name : {"a", "b", "hung"}) rounds.OnJoin(name);
  for (const char* name : {"a", "b", "hung"}) Train(rounds, name, 40);
  rounds.Submit("a", 0, 1, 40, at::ones({kParameters}));
  rounds.Submit("b", 0, 1, 40, at::ones({kParameters}));
  EXPECT_EQ(rounds.version(), 0);  // "hung" is still a participant
  clock.now += 499ms;
  rounds.CheckDeadline();
  EXPECT_EQ(rounds.version(), 0);  // not yet
  clock.now += 1ms;
  rounds.CheckDeadline();
  EXPECT_EQ(rounds.round(), 2);
  EXPECT_EQ(rounds.version(), 1);
}

TEST(RoundCoordinatorTest, WithoutAQuorumTheDeadlineWaitsForTheHospitalsStillTraining) {
  RoundOptions options = SplitFed(2);
  options.round_deadline = 400ms;
  options.quorum = 2;
  TestClock clock;
  RoundCoordinator rounds(options, at::zeros({kParameters}), clock.Function());
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 10);
  Train(rounds, "b", 10);
  rounds.Submit("a", 0, 1, 10, at::ones({kParameters}));
  clock.now += 400ms;  // the deadline: one update is no quorum
  rounds.CheckDeadline();
  EXPECT_EQ(rounds.round(), 1);
  EXPECT_TRUE(rounds.AdmitStep("b", 0, 10).round_closing);  // b is told to send what it has
  rounds.Submit("b", 0, 1, 10, at::ones({kParameters}));
  EXPECT_EQ(rounds.round(), 2);
}

TEST(RoundCoordinatorTest, AHospitalThatLeavesNoLongerHoldsUpTheRound) {
  RoundCoordinator rounds(SplitFed(2), at::zeros({kParameters}));
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 10);
  Train(rounds, "b", 10);
  rounds.Submit("a", 0, 1, 10, at::ones({kParameters}));
  EXPECT_EQ(rounds.round(), 1);
  rounds.OnLeave("b");
  EXPECT_EQ(rounds.round(), 2);
  EXPECT_EQ(rounds.version(), 1);
}

TEST(RoundCoordinatorTest, ARejoiningHospitalGetsTheCurrentVersion) {
  RoundCoordinator rounds(SplitFed(1), at::zeros({kParameters}));
  rounds.OnJoin("a");
  Train(rounds, "a", 100);
  rounds.Submit("a", 0, 1, 100, at::full({kParameters}, 2.0));
  rounds.OnLeave("a");
  rounds.OnJoin("a");  // restarted: it remembers nothing
  const SyncDecision decision = rounds.Sync("a", -1, 0ms);
  EXPECT_EQ(decision.action, Action::kTrain);
  EXPECT_EQ(decision.version, 1);
  EXPECT_EQ(decision.round, 2);
  ExpectAllClose(decision.weights, at::full({kParameters}, 2.0));
  // A hospital that already holds the version gets no weights again.
  EXPECT_FALSE(rounds.Sync("a", 1, 0ms).weights.defined());
}

TEST(RoundCoordinatorTest, SyncWaitsForTheNextRound) {
  RoundCoordinator rounds(SplitFed(2), at::zeros({kParameters}));
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 50);
  Train(rounds, "b", 50);
  rounds.Submit("a", 0, 1, 50, at::ones({kParameters}));
  EXPECT_EQ(rounds.Sync("a", 0, 0ms).action, Action::kWait);  // a already sent
  // a waits in Sync while b's update closes the round (in whichever order the threads run, the
  // answer is the next round's TRAIN, well before the 20 s wait is up).
  SyncDecision decision;
  std::thread waiter([&] { decision = rounds.Sync("a", 0, 20s); });
  rounds.Submit("b", 0, 1, 50, at::ones({kParameters}));
  waiter.join();
  EXPECT_EQ(decision.action, Action::kTrain);
  EXPECT_EQ(decision.round, 2);
}

TEST(RoundCoordinatorTest, TrainingEndsAfterTheConfiguredRounds) {
  RoundOptions options = SplitFed(1);
  options.rounds = 2;
  RoundCoordinator rounds(options, at::zeros({kParameters}));
  rounds.OnJoin("a");
  for (int64_t round = 1; round <= 2; ++round) {
    Train(rounds, "a", 100, round - 1);
    rounds.Submit("a", round - 1, round, 100, at::ones({kParameters}));
  }
  EXPECT_TRUE(rounds.finished());
  const SyncDecision done = rounds.Sync("a", 0, 0ms);
  EXPECT_EQ(done.action, Action::kDone);
  EXPECT_EQ(done.round, 2) << "DONE names the last round run, as the server's log does";
  ExpectAllClose(done.weights, at::full({kParameters}, 2.0));
}

TEST(RoundCoordinatorTest, RestoredStateResumesTheRoundWithoutLosingOrRepeatingUpdates) {
  const at::Tensor initial = at::randn({kParameters});
  const at::Tensor delta_a = at::randn({kParameters});
  const at::Tensor delta_b = at::randn({kParameters});
  RoundState saved;
  {
    RoundCoordinator rounds(SplitFed(2), initial);
    rounds.OnJoin("a");
    rounds.OnJoin("b");
    Train(rounds, "a", 30);
    Train(rounds, "b", 70);
    rounds.Submit("a", 0, 1, 30, delta_a);
    saved = rounds.Snapshot();  // the server dies here
  }
  RoundCoordinator resumed(SplitFed(2), at::zeros({kParameters}));
  resumed.Restore(saved);
  resumed.OnJoin("a");
  resumed.OnJoin("b");
  EXPECT_EQ(resumed.Sync("a", 0, 0ms).action, Action::kWait);  // a's update is in already
  EXPECT_TRUE(resumed.Submit("a", 0, 1, 30, delta_a).duplicate);
  Train(resumed, "b", 80, 0);  // b's steps before the restart died with the server
  resumed.Submit("b", 0, 1, 80, delta_b);
  const RoundState state = resumed.Snapshot();
  EXPECT_EQ(state.version, 1);
  ExpectAllClose(state.weights, initial + (30 * delta_a + 80 * delta_b) / 110.0);
  EXPECT_EQ(state.updates_accepted, 2);
  EXPECT_EQ(state.updates_applied, 2);
  EXPECT_THROW(resumed.Restore(RoundState{}), UserError);  // weights of another size
}

TEST(RoundCoordinatorTest, BadUpdatesAreInvalidInput) {
  RoundCoordinator rounds(SplitFed(1), at::zeros({kParameters}));
  rounds.OnJoin("a");
  Train(rounds, "a", 10);
  EXPECT_THROW(rounds.Submit("a", 0, 1, 0, at::zeros({kParameters})), InvalidInput);
  EXPECT_THROW(rounds.Submit("a", 0, 9, 10, at::zeros({kParameters})), InvalidInput);
  EXPECT_THROW(rounds.Submit("a", 3, 1, 10, at::zeros({kParameters})), InvalidInput);
  EXPECT_THROW(rounds.Submit("a", 0, 1, 10, at::zeros({kParameters + 1})), InvalidInput);
  EXPECT_EQ(rounds.Snapshot().updates_accepted, 0);
}

TEST(RoundPhaseTest, ARoundGoesFromWaitingToTrainingToClosingAndOn) {
  RoundOptions options = SplitFed(2);
  options.rounds = 2;
  RoundCoordinator rounds(options, at::zeros({kParameters}));
  EXPECT_EQ(rounds.phase(), RoundPhase::kWaitingForClients);
  rounds.OnJoin("a");
  EXPECT_EQ(rounds.phase(), RoundPhase::kWaitingForClients);
  rounds.OnJoin("b");
  EXPECT_EQ(rounds.phase(), RoundPhase::kTraining);
  ASSERT_EQ(rounds.Sync("a", -1, 0ms).action, Action::kTrain);
  EXPECT_FALSE(rounds.AdmitStep("a", 0, 99).round_closing);
  EXPECT_TRUE(rounds.AdmitStep("a", 0, 1).round_closing);  // the target of 100 samples
  EXPECT_EQ(rounds.phase(), RoundPhase::kClosing);
  EXPECT_EQ(rounds.Sync("b", -1, 0ms).action, Action::kWait);  // nobody new starts
  rounds.Submit("a", 0, 1, 100, at::ones({kParameters}));
  // Only a's update, and b is connected without having taken part: the quorum of 1 is met.
  EXPECT_EQ(rounds.phase(), RoundPhase::kTraining);
  EXPECT_EQ(rounds.round(), 2);
  Train(rounds, "b", 100, 1);
  rounds.Submit("b", 1, 2, 100, at::ones({kParameters}));
  EXPECT_EQ(rounds.phase(), RoundPhase::kFinished);
  EXPECT_EQ(rounds.Sync("a", 2, 0ms).action, Action::kDone);
}

TEST(RoundPhaseTest, BelowTheQuorumAClosingRoundReopensForTheOthers) {
  RoundOptions options = SplitFed(2);
  options.quorum = 2;
  RoundCoordinator rounds(options, at::zeros({kParameters}));
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 100);  // the target: closing before b took part
  EXPECT_EQ(rounds.phase(), RoundPhase::kClosing);
  rounds.Submit("a", 0, 1, 100, at::ones({kParameters}));
  EXPECT_EQ(rounds.phase(), RoundPhase::kTraining);  // reopened for b, a's update kept
  EXPECT_EQ(rounds.round(), 1);
  Train(rounds, "b", 10);
  rounds.Submit("b", 0, 1, 10, at::ones({kParameters}));
  EXPECT_EQ(rounds.round(), 2);
  EXPECT_EQ(rounds.Snapshot().updates_applied, 2);
}

TEST(RoundPhaseTest, ADeadlineWithoutAQuorumTellsStragglersToSendOrReopens) {
  RoundOptions options = SplitFed(2);
  options.quorum = 2;
  options.round_deadline = 100ms;
  TestClock clock;
  RoundCoordinator rounds(options, at::zeros({kParameters}), clock.Function());
  rounds.OnJoin("a");
  rounds.OnJoin("b");
  Train(rounds, "a", 10);
  clock.now += 100ms;
  rounds.CheckDeadline();
  EXPECT_EQ(rounds.phase(), RoundPhase::kClosing);   // a is told to send what it has
  rounds.OnLeave("a");                               // ... and vanishes without sending
  EXPECT_EQ(rounds.phase(), RoundPhase::kTraining);  // open again for whoever (re)joins
  clock.now += 100ms;
  rounds.CheckDeadline();  // nobody training, nothing sent: extended, still open
  EXPECT_EQ(rounds.phase(), RoundPhase::kTraining);
  EXPECT_EQ(rounds.Sync("b", -1, 0ms).action, Action::kTrain);
}

TEST(RoundPhaseTest, RestoreResumesThePhaseSavedExceptClosing) {
  RoundOptions options = SplitFed(2);
  RoundState saved;
  {
    RoundCoordinator rounds(options, at::zeros({kParameters}));
    rounds.OnJoin("a");
    rounds.OnJoin("b");
    Train(rounds, "a", 100);
    saved = rounds.Snapshot();
  }
  ASSERT_EQ(saved.phase, RoundPhase::kClosing);
  {
    // Those training lost their assignment with the server: the round is open to them again,
    // without waiting for min_clients a second time.
    RoundCoordinator resumed(options, at::zeros({kParameters}));
    resumed.Restore(saved);
    EXPECT_EQ(resumed.phase(), RoundPhase::kTraining);
    resumed.OnJoin("a");
    EXPECT_EQ(resumed.Sync("a", -1, 0ms).action, Action::kTrain);
  }
  for (RoundPhase phase :
       {RoundPhase::kWaitingForClients, RoundPhase::kTraining, RoundPhase::kFinished}) {
    saved.phase = phase;
    RoundCoordinator resumed(options, at::zeros({kParameters}));
    resumed.Restore(saved);
    EXPECT_EQ(resumed.phase(), phase) << PhaseName(phase);
    resumed.OnJoin("a");
    const Action want = phase == RoundPhase::kFinished   ? Action::kDone
                        : phase == RoundPhase::kTraining ? Action::kTrain
                                                         : Action::kWait;  // 1 of 2 hospitals
    EXPECT_EQ(resumed.Sync("a", -1, 0ms).action, want) << PhaseName(phase);
  }
}

TEST(RoundPhaseTest, TheCheckpointKeepsThePhaseAndDerivesItForOlderFiles) {
  RoundState state;
  state.phase = RoundPhase::kClosing;
  state.round = 3;
  CheckpointMeta meta;
  WriteRoundState(state, &meta);
  EXPECT_EQ(ReadRoundState(meta).phase, RoundPhase::kClosing);
  meta.counters["phase"] = 17;
  EXPECT_THROW(ReadRoundState(meta), UserError);
  // Written before the phase was: finished, or training once the rounds had moved.
  meta.counters.erase("phase");
  EXPECT_EQ(ReadRoundState(meta).phase, RoundPhase::kTraining);
  meta.counters["finished"] = 1;
  EXPECT_EQ(ReadRoundState(meta).phase, RoundPhase::kFinished);
  CheckpointMeta fresh;
  WriteRoundState(RoundState{}, &fresh);
  fresh.counters.erase("phase");
  EXPECT_EQ(ReadRoundState(fresh).phase, RoundPhase::kWaitingForClients);
}

}  // namespace
}  // namespace cleave::server
