// Why the server refuses a call, in the server's own terms: the plain classes (SplitServer,
// SessionTable, RoundCoordinator) throw a Refusal, and the service boundary maps its kind to a
// status once (status_mapping.h). Nothing here knows about networking.
#pragma once

#include <string>

#include "cleave/core/error.h"

namespace cleave::server {

enum class RefusalKind {
  // Fatal: the two ends do not fit (protocol version, model fingerprint, a call the server's
  // schedule has no use for). Retrying or resynchronising cannot cure it.
  kMismatch,
  kNotAllowed,      // not on the allowlist, or another identity's session
  kUnknownSession,  // unknown or expired session: join again
  // Recoverable: the hospital is behind the rounds; Sync and go on.
  kNotInRound,  // not told to train that client-model version in this round
  kStale,       // computed from a client-model version older than the staleness bound
  kNoSamples,   // an update for which no training step was counted
  // The peer's numbers are refused.
  kOutOfBounds,  // a value beyond its bound
  kNonFinite,    // NaN or Inf
  // Vertical: another party sent nothing for this step within the party timeout.
  kPartyMissing,
  // Replicas: the replica group ended (a replica died or stopped answering, or the group shut
  // down); this server trains no more. The hospital joins another replica.
  kReplicaLost,
};

// The short label metrics count refusals by ("stale", "not_participant", ...).
const char* RefusalReason(RefusalKind kind);
// True for the kinds a hospital cures by synchronising with the rounds again.
bool Resynchronises(RefusalKind kind);

class Refusal : public Error {
 public:
  Refusal(RefusalKind kind, const std::string& message) : Error(message), kind_(kind) {}
  RefusalKind kind() const { return kind_; }
  const char* reason() const { return RefusalReason(kind_); }

 private:
  RefusalKind kind_;
};

// The metrics label of any refused call: a Refusal's reason, "nonfinite" / "out_of_bounds" for
// core's NotFinite / OutOfBounds, "invalid" for other bad input.
const char* RefusalReasonOf(const std::exception& error);

}  // namespace cleave::server
