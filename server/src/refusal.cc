#include "cleave/server/refusal.h"

namespace cleave::server {

const char* RefusalReason(RefusalKind kind) {
  switch (kind) {
    case RefusalKind::kMismatch:
      return "mismatch";
    case RefusalKind::kNotAllowed:
      return "not_allowed";
    case RefusalKind::kUnknownSession:
      return "unknown_session";
    case RefusalKind::kNotInRound:
      return "not_participant";
    case RefusalKind::kStale:
      return "stale";
    case RefusalKind::kNoSamples:
      return "no_samples";
    case RefusalKind::kOutOfBounds:
      return "out_of_bounds";
    case RefusalKind::kNonFinite:
      return "nonfinite";
    case RefusalKind::kPartyMissing:
      return "party_missing";
    case RefusalKind::kReplicaLost:
      return "replica_lost";
  }
  return "invalid";
}

bool Resynchronises(RefusalKind kind) {
  return kind == RefusalKind::kNotInRound || kind == RefusalKind::kStale ||
         kind == RefusalKind::kNoSamples;
}

const char* RefusalReasonOf(const std::exception& error) {
  if (const auto* refusal = dynamic_cast<const Refusal*>(&error)) return refusal->reason();
  if (dynamic_cast<const NotFinite*>(&error)) return "nonfinite";
  if (dynamic_cast<const OutOfBounds*>(&error)) return "out_of_bounds";
  return "invalid";
}

}  // namespace cleave::server
