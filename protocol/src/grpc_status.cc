#include "cleave/protocol/status_error.h"

namespace cleave::protocol {

grpc::Status ToGrpcStatus(const std::exception& error) {
  if (const auto* status_error = dynamic_cast<const StatusError*>(&error)) {
    return grpc::Status(status_error->code(), status_error->what());
  }
  if (dynamic_cast<const InvalidInput*>(&error) != nullptr) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error.what());
  }
  return grpc::Status(grpc::StatusCode::INTERNAL, error.what());
}

void ThrowIfError(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return;
  throw StatusError(status.error_code(), what + " failed: " + StatusCodeName(status.error_code()) +
                                             ": " + status.error_message());
}

const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN_CODE";
  }
}

}  // namespace cleave::protocol
