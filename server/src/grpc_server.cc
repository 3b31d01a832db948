#include "cleave/server/grpc_server.h"

#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>

#include "cleave/core/error.h"
#include "cleave/protocol/cleave.grpc.pb.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/version.h"
#include "cleave/server/split_server.h"

namespace cleave::server {

namespace {

std::atomic<int64_t> refused_handshakes{0};

void LogFromGrpc(gpr_log_func_args* args) {
  const char* message = args->message;
  if (std::strstr(message, "Handshake failed") != nullptr ||
      std::strstr(message, "handshake failed") != nullptr) {
    refused_handshakes.fetch_add(1);
    spdlog::warn("TLS handshake refused: {}", message);
    return;
  }
  switch (args->severity) {
    case GPR_LOG_SEVERITY_ERROR:
      spdlog::error("grpc: {}", message);
      break;
    case GPR_LOG_SEVERITY_INFO:
      spdlog::info("grpc: {}", message);
      break;
    default:
      spdlog::debug("grpc: {}", message);
      break;
  }
}

// The client's identity: the CN of its verified certificate, or the peer address when insecure.
std::string IdentityOf(const grpc::ServerContext& context) {
  const auto auth = context.auth_context();
  if (auth && auth->IsPeerAuthenticated()) {
    const auto names = auth->FindPropertyValues("x509_common_name");
    if (!names.empty()) return std::string(names.front().data(), names.front().size());
  }
  return "insecure:" + context.peer();
}

template <typename Fn>
grpc::Status Guarded(const char* what, const std::string& identity, Fn&& fn) {
  try {
    fn();
    return grpc::Status::OK;
  } catch (const std::exception& error) {
    grpc::Status status = protocol::ToGrpcStatus(error);
    spdlog::warn("{} from '{}' failed: {}: {}", what, identity,
                 protocol::StatusCodeName(status.error_code()), status.error_message());
    return status;
  }
}

}  // namespace

// Translates RPCs to SplitServer calls; nothing else.
class SplitLearningService final : public v1::SplitLearning::Service {
 public:
  explicit SplitLearningService(SplitServer& server) : server_(server) {}

  grpc::Status Join(grpc::ServerContext* context, const v1::JoinRequest* request,
                    v1::JoinReply* reply) override {
    const std::string identity = IdentityOf(*context);
    return Guarded("Join", identity, [&] { *reply = server_.Join(identity, *request); });
  }

  grpc::Status Train(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<v1::TrainReply, v1::TrainRequest>* stream) override {
    const std::string identity = IdentityOf(*context);
    std::string session_id;
    v1::TrainRequest request;
    grpc::Status status = grpc::Status::OK;
    while (stream->Read(&request)) {
      session_id = request.session_id();
      status = Guarded("Train", identity, [&] {
        const v1::TrainReply reply = server_.Train(identity, request);
        if (!stream->Write(reply)) {
          throw protocol::StatusError(grpc::StatusCode::CANCELLED, "client went away");
        }
      });
      if (!status.ok()) break;
    }
    // A stream that ends without the client closing it cleanly means the client vanished:
    // release its session so that nothing waits on it.
    if (context->IsCancelled() && !session_id.empty()) {
      server_.ReleaseSession(identity, session_id, "Train stream cancelled (client vanished)");
    }
    return status;
  }

  grpc::Status Evaluate(grpc::ServerContext* context, const v1::EvaluateRequest* request,
                        v1::EvaluateReply* reply) override {
    const std::string identity = IdentityOf(*context);
    return Guarded("Evaluate", identity, [&] { *reply = server_.Evaluate(identity, *request); });
  }

  grpc::Status Leave(grpc::ServerContext* context, const v1::LeaveRequest* request,
                     v1::LeaveReply* reply) override {
    const std::string identity = IdentityOf(*context);
    return Guarded("Leave", identity, [&] {
      server_.Leave(identity, request->session_id());
      reply->set_protocol_version(protocol::kProtocolVersion);
    });
  }

  grpc::Status Sync(grpc::ServerContext* context, const v1::SyncRequest* request,
                    v1::SyncReply* reply) override {
    const std::string identity = IdentityOf(*context);
    const grpc::Status status =
        Guarded("Sync", identity, [&] { *reply = server_.Sync(identity, *request); });
    // A hospital that died while waiting for its round must not hold the round up.
    if (context->IsCancelled()) {
      server_.ReleaseSession(identity, request->session_id(), "Sync cancelled (client vanished)");
    }
    return status;
  }

  grpc::Status SubmitUpdate(grpc::ServerContext* context, const v1::UpdateRequest* request,
                            v1::UpdateReply* reply) override {
    const std::string identity = IdentityOf(*context);
    return Guarded("SubmitUpdate", identity,
                   [&] { *reply = server_.SubmitUpdate(identity, *request); });
  }

 private:
  SplitServer& server_;
};

void RouteGrpcLogsToSpdlog() { gpr_set_log_function(LogFromGrpc); }

int64_t RefusedHandshakes() { return refused_handshakes.load(); }

GrpcServer::GrpcServer(SplitServer& server, const ListenOptions& options)
    : service_(std::make_unique<SplitLearningService>(server)) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.insecure) {
    credentials = grpc::InsecureServerCredentials();
  } else {
    grpc::SslServerCredentialsOptions ssl(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = options.tls.ca_pem;
    ssl.pem_key_cert_pairs.push_back({options.tls.private_key_pem, options.tls.certificate_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(options.address, credentials, &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Notice dead peers on idle connections.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server_ = builder.BuildAndStart();
  CLEAVE_CHECK_USER(server_ != nullptr && port_ != 0, "cannot listen on '", options.address,
                    "' (address in use or invalid)");
  server_->GetHealthCheckService()->SetServingStatus("cleave.v1.SplitLearning", true);
  spdlog::info("listening on port {} ({})", port_,
               options.insecure ? "INSECURE plaintext" : "mutual TLS");
}

GrpcServer::~GrpcServer() { Shutdown(0); }

void GrpcServer::Shutdown(int grace_ms) {
  if (!server_) return;
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
  server_->Wait();
  server_.reset();
}

void GrpcServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace cleave::server
