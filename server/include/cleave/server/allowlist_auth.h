// Checks a client's identity before gRPC reads any of its call: set on the server's TLS
// credentials, it runs once per call when the call's headers arrive, before the request message is
// received and parsed, and refuses with PERMISSION_DENIED a certificate that has no CN or whose CN
// is not on the allowlist. A stranger with a certificate from our CA then costs a header lookup,
// not a parsed 64 MiB message.
#pragma once

#include <grpcpp/security/auth_metadata_processor.h>

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <utility>

namespace cleave::server {

class AllowlistAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  // `allowed`: certificate CNs that may call; empty: any CN our CA signed.
  explicit AllowlistAuthProcessor(std::set<std::string> allowed) : allowed_(std::move(allowed)) {}

  // A set lookup, no I/O but a log line on refusal: run inline on gRPC's thread, not on a pool.
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

  // Calls refused since start.
  int64_t refused() const { return refused_.load(); }

 private:
  const std::set<std::string> allowed_;
  std::atomic<int64_t> refused_{0};
};

}  // namespace cleave::server
