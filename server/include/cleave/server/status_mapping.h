// The one place where the server's refusals become gRPC statuses: the gRPC service
// (grpc_server.h) and the in-process link (in_process_link.h) both answer through it, so a client
// sees the same code whichever link it uses.
//
//   RefusalKind                          status
//   kMismatch                            FAILED_PRECONDITION  (fatal: the client stops)
//   kNotInRound, kStale, kNoSamples      ABORTED              (Sync and go on)
//   kNotAllowed                          PERMISSION_DENIED
//   kUnknownSession                      NOT_FOUND            (join again)
//   kOutOfBounds, kNonFinite             INVALID_ARGUMENT
//   InvalidInput (core/error.h)          INVALID_ARGUMENT
//   protocol::StatusError                its own code
//   anything else                        INTERNAL
#pragma once

#include <grpcpp/support/status.h>

#include <exception>
#include <string>

#include "cleave/protocol/status_error.h"
#include "cleave/server/refusal.h"

namespace cleave::server {

grpc::StatusCode StatusCodeFor(RefusalKind kind);
// The status a call that threw `error` ends with (the message is the exception's).
grpc::Status StatusFor(const std::exception& error);
// The exception a client sees for that status (what GrpcLink throws for it, without the call
// name); for the in-process link.
protocol::StatusError AsStatusError(const std::exception& error);

}  // namespace cleave::server
