// Serves a SplitServer over gRPC: mutual TLS by default (client certificates from our CA are
// required and verified; the CN is the client's identity), explicit message size limits, the
// standard health service.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "cleave/core/certificates.h"

namespace grpc {
class Server;
}

namespace cleave::server {

class SplitServer;
class SplitLearningService;

struct ListenOptions {
  std::string address = "0.0.0.0:50051";  // port 0 picks a free port (see GrpcServer::port)
  bool insecure = false;                  // plaintext, no client identity (never by default)
  TlsFiles tls;                           // CA (signs clients), server certificate and key
  int64_t max_message_bytes = 64LL << 20;
};

class GrpcServer {
 public:
  // Starts serving; throws UserError if the address cannot be bound.
  GrpcServer(SplitServer& server, const ListenOptions& options);
  ~GrpcServer();
  int port() const { return port_; }
  // Stops accepting, cancels open streams after `grace_ms`, and returns when all handlers ended.
  void Shutdown(int grace_ms = 2000);
  void Wait();

 private:
  std::unique_ptr<SplitLearningService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Routes gRPC's own log lines (handshake failures among them) into spdlog. Call once at startup.
void RouteGrpcLogsToSpdlog();
// TLS handshakes the server refused since start (counted from gRPC's log lines).
int64_t RefusedHandshakes();

}  // namespace cleave::server
