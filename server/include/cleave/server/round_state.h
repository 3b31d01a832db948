// The rules and the state of multi-hospital rounds (round_coordinator.h): the schedule, the round
// options, the phase a round is in and everything a checkpoint keeps to resume it.
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cleave/server/robust_aggregation.h"

namespace cleave::server {

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
// Throws UserError naming the option that is out of range (in the library's terms, not a flag's).
void CheckRoundOptions(const RoundOptions& options);
// One line for the log: schedule, rounds, samples, deadline, quorum, staleness, aggregation.
std::string DescribeRoundOptions(const RoundOptions& options);

// Where the rounds are. Transitions (RoundCoordinator):
//   kWaitingForClients -> kTraining   min_clients hospitals connected
//   kTraining -> kClosing             the round's sample target reached, or its deadline passed
//                                     without a quorum while hospitals are still training
//   kClosing -> kTraining             reopened: below the quorum, and nobody is left training
//                                     or hospitals that have not taken part may add an update
//   kTraining / kClosing -> kTraining the round closed (aggregated); the next one opens
//   kTraining / kClosing -> kFinished the round closed was the last one
// Restored from a checkpoint: kClosing resumes as kTraining (the hospitals that were training lost
// their assignment with the server and take part again through Sync); the others as they were.
enum class RoundPhase {
  kWaitingForClients,  // fewer than min_clients have joined: nobody trains yet
  kTraining,           // the round is open: Sync assigns hospitals to train
  kClosing,            // enough was trained: participants send their updates, nobody new starts
  kFinished,           // the configured rounds are done: Sync answers DONE
};
const char* PhaseName(RoundPhase phase);
// The phase a round restored from a checkpoint resumes in (see above).
RoundPhase RestoredPhase(RoundPhase saved);

// An accepted update that the round has not applied yet.
struct PendingUpdate {
  int64_t samples = 0;    // the weight it counts with: min(claimed, counted by the server)
  int64_t staleness = 0;  // versions between its base and the version it was accepted at
  at::Tensor delta;       // [P] float32, as sent
};

// Everything a checkpoint keeps so that a restarted server resumes the round where it was.
struct RoundState {
  RoundPhase phase = RoundPhase::kWaitingForClients;
  int64_t round = 1;
  int64_t version = 0;  // client-model version: +1 each time a round's average is applied
  at::Tensor weights;   // client-side model parameters, flattened [P], float32
  std::vector<PendingUpdate> pending;  // accepted this round, applied when it closes
  int64_t round_samples_trained = 0;
  std::map<std::string, int64_t> last_round_submitted;  // per hospital: duplicates are refused
  std::set<std::string> submitted;                      // hospitals that sent this round's update
  int64_t turn = 0;                     // sequential: index into the join order of whose turn it is
  std::vector<std::string> join_order;  // sequential: hospitals in the order they first joined
  // Counters (each accepted update is applied exactly once: accepted == applied + pending).
  // Refused steps and updates are counted by the server (ServerCounters), once.
  int64_t updates_accepted = 0;
  int64_t updates_applied = 0;
  int64_t updates_duplicate = 0;             // resubmitted for a round already counted
  int64_t updates_capped = 0;                // claimed more samples than the server counted
  std::vector<int64_t> staleness_histogram;  // [s] = accepted updates s versions old

  bool finished() const { return phase == RoundPhase::kFinished; }
};

}  // namespace cleave::server
