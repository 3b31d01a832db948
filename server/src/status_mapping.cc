#include "cleave/server/status_mapping.h"

namespace cleave::server {

grpc::StatusCode StatusCodeFor(RefusalKind kind) {
  switch (kind) {
    case RefusalKind::kMismatch:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case RefusalKind::kNotInRound:
    case RefusalKind::kStale:
    case RefusalKind::kNoSamples:
      return grpc::StatusCode::ABORTED;
    case RefusalKind::kNotAllowed:
      return grpc::StatusCode::PERMISSION_DENIED;
    case RefusalKind::kUnknownSession:
      return grpc::StatusCode::NOT_FOUND;
    case RefusalKind::kOutOfBounds:
    case RefusalKind::kNonFinite:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case RefusalKind::kPartyMissing:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case RefusalKind::kReplicaLost:
      return grpc::StatusCode::UNAVAILABLE;
  }
  return grpc::StatusCode::INTERNAL;
}

grpc::Status StatusFor(const std::exception& error) {
  if (const auto* refusal = dynamic_cast<const Refusal*>(&error)) {
    return grpc::Status(StatusCodeFor(refusal->kind()), refusal->what());
  }
  return protocol::ToGrpcStatus(error);
}

protocol::StatusError AsStatusError(const std::exception& error) {
  const grpc::Status status = StatusFor(error);
  return protocol::StatusError(status.error_code(), status.error_message());
}

}  // namespace cleave::server
