// The client's gRPC connection to a cleave-server: mutual TLS with the client's certificate by
// default, explicit message size limits, one Train stream at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cleave/core/certificates.h"
#include "cleave/protocol/split_link.h"
#include "cleave/protocol/version.h"

namespace grpc {
class Channel;
class ClientContext;
template <class W, class R>
class ClientReaderWriter;
}  // namespace grpc

namespace cleave::client {

struct ConnectOptions {
  std::string target = "localhost:50051";
  bool insecure = false;
  TlsFiles tls;  // CA that signs the server, our client certificate and key
  // Name checked against the server certificate's SANs when it differs from the target host.
  std::string server_name_override;
  int64_t max_message_bytes = protocol::kDefaultMaxMessageBytes;
  int connect_timeout_seconds = 30;
};

class GrpcLink final : public protocol::SplitLink {
 public:
  explicit GrpcLink(const ConnectOptions& options);
  ~GrpcLink() override;
  v1::JoinReply Join(const v1::JoinRequest& request) override;
  void OpenTrainStream() override;
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override;
  void CloseTrainStream() override;
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override;
  void Leave(const v1::LeaveRequest& request) override;
  v1::SyncReply Sync(const v1::SyncRequest& request) override;
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override;
  // Cancels the open Train stream as if the process had died (tests use it).
  void AbortTrainStream();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cleave::client
