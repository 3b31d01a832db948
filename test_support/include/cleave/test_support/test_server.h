// A SplitServer for the integration tests, reached by hospitals over the link a test is
// parameterised with: loopback gRPC with mutual TLS (the test PKI, port 0), or in process
// (messages serialised and parsed as on the wire, no socket).
#pragma once

#include <memory>
#include <ostream>
#include <string>

#include "cleave/client/grpc_link.h"
#include "cleave/protocol/split_link.h"
#include "cleave/server/grpc_server.h"
#include "cleave/server/split_server.h"

namespace cleave::test_support {

enum class LinkKind { kGrpc, kInProcess };

// "Grpc" or "InProcess": the name of a test parameter.
std::string LinkName(LinkKind kind);
// How GoogleTest prints the parameter in a failure.
inline void PrintTo(LinkKind kind, std::ostream* out) { *out << LinkName(kind); }

class TestServer {
 public:
  // Starts a SplitServer with `options`; over gRPC, also a GrpcServer for it on 127.0.0.1:`port`
  // (0: a free port) with the test PKI's server certificate and the options' message limit.
  TestServer(const server::SplitServerOptions& options, LinkKind kind, int port = 0);
  ~TestServer();  // stops the gRPC server at once (open streams are cancelled)
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  server::SplitServer& split_server() const { return *split_server_; }
  LinkKind kind() const { return kind_; }
  // gRPC only: the port, and how a hospital called `name` connects (its own certificate from the
  // test PKI, the server's message limit, 5 seconds to connect).
  int port() const;
  client::ConnectOptions Connect(const std::string& name) const;

  // A link for the hospital `name`: a GrpcLink with `name`'s certificate, or an InProcessLink with
  // identity `name`.
  std::unique_ptr<protocol::SplitLink> Link(const std::string& name) const;

  // Stops the gRPC server at once (no grace), as if the process died; the SplitServer stays.
  void StopListening();

 private:
  int64_t max_message_bytes_;
  LinkKind kind_;
  std::unique_ptr<server::SplitServer> split_server_;
  std::unique_ptr<server::GrpcServer> grpc_server_;
};

}  // namespace cleave::test_support
