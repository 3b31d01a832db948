// An exception that carries a gRPC status code, thrown inside the server's plain classes and
// translated to grpc::Status at the service boundary (and back to an exception on the client).
#pragma once

#include <grpcpp/support/status.h>

#include <exception>
#include <string>

#include "cleave/core/error.h"

namespace cleave::protocol {

class StatusError : public Error {
 public:
  StatusError(grpc::StatusCode code, const std::string& message) : Error(message), code_(code) {}
  grpc::StatusCode code() const { return code_; }

 private:
  grpc::StatusCode code_;
};

// Maps an exception to a status: StatusError keeps its code, InvalidInput is INVALID_ARGUMENT,
// anything else INTERNAL (with the message; it never carries secrets).
grpc::Status ToGrpcStatus(const std::exception& error);

// Throws StatusError for a non-OK status, prefixing `what` ("Join", "Train", ...).
void ThrowIfError(const grpc::Status& status, const std::string& what);

const char* StatusCodeName(grpc::StatusCode code);

}  // namespace cleave::protocol
