#include "cleave/test_support/test_server.h"

#include <stdexcept>

#include "cleave/server/in_process_link.h"
#include "cleave/test_support/test_pki.h"

namespace cleave::test_support {

std::string LinkName(LinkKind kind) { return kind == LinkKind::kGrpc ? "Grpc" : "InProcess"; }

TestServer::TestServer(const server::SplitServerOptions& options, LinkKind kind, int port)
    : max_message_bytes_(options.max_message_bytes),
      kind_(kind),
      split_server_(std::make_unique<server::SplitServer>(options)) {
  if (kind_ != LinkKind::kGrpc) return;
  server::RouteGrpcLogsToSpdlog();
  server::ListenOptions listen;
  listen.address = "127.0.0.1:" + std::to_string(port);
  listen.tls = Pki().ServerFiles();
  listen.max_message_bytes = options.max_message_bytes;
  listen.allowed_clients = options.allowed_clients;
  grpc_server_ = std::make_unique<server::GrpcServer>(*split_server_, listen);
}

TestServer::~TestServer() { StopListening(); }

int TestServer::port() const {
  if (!grpc_server_) throw std::logic_error("TestServer::port: not listening on gRPC");
  return grpc_server_->port();
}

client::ConnectOptions TestServer::Connect(const std::string& name) const {
  client::ConnectOptions connect;
  connect.target = "localhost:" + std::to_string(port());
  connect.tls = Pki().ClientFiles(name);
  connect.max_message_bytes = max_message_bytes_;
  connect.connect_timeout_seconds = 5;
  return connect;
}

std::unique_ptr<protocol::SplitLink> TestServer::Link(const std::string& name) const {
  if (kind_ == LinkKind::kGrpc) return std::make_unique<client::GrpcLink>(Connect(name));
  return std::make_unique<server::InProcessLink>(*split_server_, name);
}

void TestServer::StopListening() {
  if (grpc_server_) grpc_server_->Shutdown(0);
}

}  // namespace cleave::test_support
