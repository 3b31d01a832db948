#include "cleave/server/round_state.h"

#include "cleave/core/error.h"

namespace cleave::server {

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

void CheckRoundOptions(const RoundOptions& options) {
  CLEAVE_CHECK_USER(options.rounds >= 0, "the number of rounds must be >= 0");
  CLEAVE_CHECK_USER(options.round_samples >= 1, "the samples that end a round must be >= 1");
  CLEAVE_CHECK_USER(options.quorum >= 1, "the quorum of updates must be >= 1");
  CLEAVE_CHECK_USER(options.min_clients >= 1, "the hospitals needed to start must be >= 1");
  CLEAVE_CHECK_USER(options.max_staleness >= 0, "the staleness bound must be >= 0");
  CLEAVE_CHECK_USER(options.round_deadline.count() >= 0, "the round deadline must be >= 0");
  CLEAVE_CHECK_USER(options.max_update_abs >= 0, "the bound on update values must be >= 0");
  CheckAggregationOptions(options.aggregation);
}

std::string DescribeRoundOptions(const RoundOptions& options) {
  return detail::Concat(
      "schedule ", ScheduleName(options.schedule), ": ", options.rounds, " round(s) of ",
      options.round_samples, " samples, deadline ", options.round_deadline.count(), " ms, quorum ",
      options.quorum, ", ", options.min_clients, " hospital(s) to start, max staleness ",
      options.max_staleness, ", aggregation ", AggregationName(options.aggregation.method));
}

const char* PhaseName(RoundPhase phase) {
  switch (phase) {
    case RoundPhase::kWaitingForClients:
      return "waiting for clients";
    case RoundPhase::kTraining:
      return "training";
    case RoundPhase::kClosing:
      return "closing";
    case RoundPhase::kFinished:
      return "finished";
  }
  return "?";
}

RoundPhase RestoredPhase(RoundPhase saved) {
  return saved == RoundPhase::kClosing ? RoundPhase::kTraining : saved;
}

}  // namespace cleave::server
