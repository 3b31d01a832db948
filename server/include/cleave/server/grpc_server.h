// Serves a SplitServer over gRPC: mutual TLS by default (client certificates from our CA are
// required and verified; the CN is the client's identity), the allowlist checked before a call is
// read, limits on threads, streams and per-client calls and bytes, explicit message size limits,
// the standard health service.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "cleave/core/certificates.h"
#include "cleave/protocol/version.h"

namespace grpc {
class Server;
}

namespace cleave::server {

class SplitServer;
class SplitLearningService;
class AllowlistAuthProcessor;
class PsiRelay;

struct ListenOptions {
  std::string address = "0.0.0.0:50051";  // port 0 picks a free port (see GrpcServer::port)
  bool insecure = false;                  // plaintext, no client identity (never by default)
  TlsFiles tls;                           // CA (signs clients), server certificate and key
  int64_t max_message_bytes = protocol::kDefaultMaxMessageBytes;
  // Certificate CNs that may call at all, checked when a call's headers arrive, before its
  // request is read; empty: any CN our CA signed. Not checked with `insecure` (no certificates).
  // Give it the same set as SplitServerOptions::allowed_clients.
  std::set<std::string> allowed_clients;
  // Threads serving calls (each open call holds one, a Train stream for its whole life); calls
  // beyond them get RESOURCE_EXHAUSTED.
  int max_threads = 256;
  // Calls one connection may have open at once (HTTP/2 streams); further calls wait on the client.
  int max_streams_per_connection = 16;
  // Calls one client (certificate CN) may have open at once; more get RESOURCE_EXHAUSTED.
  int max_calls_per_client = 8;
  // Bytes of one client's requests being parsed and processed at once; 0: 2 x max_message_bytes.
  int64_t max_client_request_bytes = 0;
  // Bytes of large requests (over 1 MiB) being parsed and processed at once, all clients
  // together; 0: 4 x max_message_bytes.
  int64_t max_large_request_bytes = 0;
  // Private set intersection relay (psi_relay.h): ring size, 0 for none (PsiSubmit and PsiAwait
  // are then UNIMPLEMENTED); and the longest a PsiAwait waits before "nothing yet".
  int psi_parties = 0;
  int psi_max_wait_ms = 10000;
};

class GrpcServer {
 public:
  // What the server refused or handled since start (tests, metrics).
  struct Stats {
    int64_t refused_unauthorized = 0;  // calls refused by the allowlist before being read
    int64_t refused_limits = 0;        // calls or requests refused by a per-client or global limit
    int64_t unparseable = 0;           // requests that were not a valid protobuf message
    int64_t requests_handled = 0;      // request messages that reached the service
  };

  // Starts serving; throws UserError if the address cannot be bound (in use, even by another
  // process that set SO_REUSEPORT: we never share a port) or a limit is out of range.
  GrpcServer(SplitServer& server, const ListenOptions& options);
  ~GrpcServer();
  int port() const { return port_; }
  Stats stats() const;
  PsiRelay* psi_relay() const { return psi_relay_.get(); }  // null without psi_parties
  // Stops accepting, cancels open streams after `grace_ms`, and returns when all handlers ended.
  void Shutdown(int grace_ms = 2000);
  void Wait();

 private:
  std::shared_ptr<AllowlistAuthProcessor> allowlist_;  // null when insecure
  std::unique_ptr<PsiRelay> psi_relay_;                 // null without psi_parties
  std::unique_ptr<SplitLearningService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Routes gRPC's own log lines (handshake failures among them) into spdlog. Call once at startup.
void RouteGrpcLogsToSpdlog();
// TLS handshakes the server refused since start (counted from gRPC's log lines).
int64_t RefusedHandshakes();

}  // namespace cleave::server
