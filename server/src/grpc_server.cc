#include "cleave/server/grpc_server.h"

#include <google/protobuf/io/coded_stream.h>
#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/method_handler.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/sync_stream.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <functional>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/version.h"
#include "cleave/server/allowlist_auth.h"
#include "cleave/server/call_limiter.h"
#include "cleave/server/psi_relay.h"
#include "cleave/server/split_server.h"
#include "cleave/server/status_mapping.h"

namespace cleave::server {

namespace {

// gRPC's lines and status messages can quote what a peer sent; longer than an identity.
constexpr size_t kMaxLoggedMessageBytes = 1000;

std::atomic<int64_t> refused_handshakes{0};

void LogFromGrpc(gpr_log_func_args* args) {
  const std::string message = PeerText(args->message, kMaxLoggedMessageBytes);
  if (message.find("Handshake failed") != std::string::npos ||
      message.find("handshake failed") != std::string::npos) {
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
    grpc::Status status = StatusFor(error);
    spdlog::warn("{} from '{}' failed: {}: {}", what, PeerText(identity),
                 protocol::StatusCodeName(status.error_code()),
                 PeerText(status.error_message(), kMaxLoggedMessageBytes));
    return status;
  }
}

// Codes with which a Train stream ends but the hospital's session stays: the protocol tells it to
// Sync and go on with the same session (ABORTED: a step too stale, or not part of the current
// round). A fatal mismatch (FAILED_PRECONDITION) ends the hospital, and its session with it.
bool KeepsSession(grpc::StatusCode code) {
  return code == grpc::StatusCode::OK || code == grpc::StatusCode::ABORTED;
}

// Method paths, as the generated stubs name them.
constexpr char kJoin[] = "/cleave.v1.SplitLearning/Join";
constexpr char kTrain[] = "/cleave.v1.SplitLearning/Train";
constexpr char kEvaluate[] = "/cleave.v1.SplitLearning/Evaluate";
constexpr char kLeave[] = "/cleave.v1.SplitLearning/Leave";
constexpr char kSync[] = "/cleave.v1.SplitLearning/Sync";
constexpr char kSubmitUpdate[] = "/cleave.v1.SplitLearning/SubmitUpdate";
constexpr char kPsiSubmit[] = "/cleave.v1.SplitLearning/PsiSubmit";
constexpr char kPsiAwait[] = "/cleave.v1.SplitLearning/PsiAwait";

}  // namespace

// Translates RPCs to SplitServer calls; nothing else. Requests arrive as raw bytes so that the
// service decides what an unparseable one gets (INVALID_ARGUMENT, logged with the sender) and
// admits each call and request under the CallLimiter before parsing it.
class SplitLearningService final : public grpc::Service {
 public:
  SplitLearningService(SplitServer& server, const CallLimits& limits, int64_t max_message_bytes,
                       PsiRelay* psi)
      : server_(server), limiter_(limits), max_message_bytes_(max_message_bytes) {
    if (psi != nullptr) AddPsi(*psi);
    AddUnary<v1::JoinRequest, v1::JoinReply>(
        kJoin, "Join",
        [this](const std::string& identity, const v1::JoinRequest& request, grpc::ServerContext*) {
          return server_.Join(identity, request);
        });
    AddMethod(new grpc::internal::RpcServiceMethod(
        kTrain, grpc::internal::RpcMethod::BIDI_STREAMING,
        new grpc::internal::BidiStreamingHandler<SplitLearningService, grpc::ByteBuffer,
                                                 grpc::ByteBuffer>(
            [](SplitLearningService* service, grpc::ServerContext* context,
               grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
              return service->Train(context, stream);
            },
            this)));
    AddUnary<v1::EvaluateRequest, v1::EvaluateReply>(
        kEvaluate, "Evaluate",
        [this](const std::string& identity, const v1::EvaluateRequest& request,
               grpc::ServerContext*) { return server_.Evaluate(identity, request); });
    AddUnary<v1::LeaveRequest, v1::LeaveReply>(
        kLeave, "Leave",
        [this](const std::string& identity, const v1::LeaveRequest& request, grpc::ServerContext*) {
          server_.Leave(identity, request.session_id(), request.protocol_version());
          v1::LeaveReply reply;
          reply.set_protocol_version(protocol::kProtocolVersion);
          return reply;
        });
    AddUnary<v1::SyncRequest, v1::SyncReply>(
        kSync, "Sync",
        [this](const std::string& identity, const v1::SyncRequest& request,
               grpc::ServerContext* context) {
          // A hospital that died while waiting for its round must not hold the round up.
          const auto release_if_cancelled = [&] {
            if (context->IsCancelled()) {
              server_.ReleaseSession(identity, request.session_id(),
                                     "Sync cancelled (client vanished)");
            }
          };
          try {
            v1::SyncReply reply = server_.Sync(identity, request);
            release_if_cancelled();
            return reply;
          } catch (...) {
            release_if_cancelled();
            throw;
          }
        });
    AddUnary<v1::UpdateRequest, v1::UpdateReply>(
        kSubmitUpdate, "SubmitUpdate",
        [this](const std::string& identity, const v1::UpdateRequest& request,
               grpc::ServerContext*) { return server_.SubmitUpdate(identity, request); });
  }

  GrpcServer::Stats stats() const {
    GrpcServer::Stats stats;
    stats.refused_limits = refused_limits_.load();
    stats.unparseable = unparseable_.load();
    stats.requests_handled = requests_handled_.load();
    return stats;
  }

 private:
  using RawHandler =
      grpc::internal::RpcMethodHandler<SplitLearningService, grpc::ByteBuffer, grpc::ByteBuffer>;

  void AddPsi(PsiRelay& psi) {
    AddUnary<v1::PsiSubmitRequest, v1::PsiSubmitReply>(
        kPsiSubmit, "PsiSubmit",
        [&psi](const std::string& identity, const v1::PsiSubmitRequest& request,
               grpc::ServerContext*) { return psi.Submit(identity, request); });
    AddUnary<v1::PsiAwaitRequest, v1::PsiAwaitReply>(
        kPsiAwait, "PsiAwait",
        [&psi](const std::string& identity, const v1::PsiAwaitRequest& request,
               grpc::ServerContext*) { return psi.Await(identity, request); });
  }

  template <typename Request, typename Reply>
  void AddUnary(
      const char* path, const char* what,
      std::function<Reply(const std::string&, const Request&, grpc::ServerContext*)> call) {
    AddMethod(new grpc::internal::RpcServiceMethod(
        path, grpc::internal::RpcMethod::NORMAL_RPC,
        new RawHandler(
            [what, call](SplitLearningService* service, grpc::ServerContext* context,
                         const grpc::ByteBuffer* raw, grpc::ByteBuffer* reply) {
              return service->Unary<Request, Reply>(what, context, *raw, reply, call);
            },
            this)));
  }

  template <typename Request, typename Reply>
  grpc::Status Unary(
      const char* what, grpc::ServerContext* context, grpc::ByteBuffer raw, grpc::ByteBuffer* reply,
      const std::function<Reply(const std::string&, const Request&, grpc::ServerContext*)>& call) {
    requests_handled_.fetch_add(1);
    const std::string identity = IdentityOf(*context);
    const CallLimiter::Permit open = limiter_.AdmitCall(identity);
    if (!open.granted()) return Refuse(what, identity, open.refusal());
    const CallLimiter::Permit bytes = limiter_.AdmitRequest(identity, raw.Length());
    if (!bytes.granted()) return Refuse(what, identity, bytes.refusal());
    return Guarded(what, identity, [&] {
      Request request;
      Parse(&raw, &request);
      raw.Clear();
      Serialize(call(identity, request, context), reply);
    });
  }

  grpc::Status Train(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>* stream) {
    const std::string identity = IdentityOf(*context);
    const CallLimiter::Permit open = limiter_.AdmitCall(identity);
    if (!open.granted()) return Refuse("Train", identity, open.refusal());
    std::string session_id;
    grpc::Status status = grpc::Status::OK;
    grpc::ByteBuffer raw;
    while (stream->Read(&raw)) {
      requests_handled_.fetch_add(1);
      const CallLimiter::Permit bytes = limiter_.AdmitRequest(identity, raw.Length());
      if (!bytes.granted()) {
        status = Refuse("Train", identity, bytes.refusal());
        break;
      }
      status = Guarded("Train", identity, [&] {
        v1::TrainRequest request;
        Parse(&raw, &request);
        raw.Clear();
        session_id = request.session_id();
        grpc::ByteBuffer reply;
        Serialize(server_.Train(identity, request), &reply);
        if (!stream->Write(reply)) {
          throw protocol::StatusError(grpc::StatusCode::CANCELLED, "client went away");
        }
      });
      if (!status.ok()) break;
    }
    // U-shaped: a step of this stream still waiting for its middle gradient never gets it.
    server_.TrainStreamEnded(identity, session_id);
    // A stream that ends without the client closing it cleanly means the client vanished; one
    // the server ends with an error may leave a hospital that gives up. Either way release its
    // session, so that no round waits on it.
    if (!session_id.empty()) {
      if (context->IsCancelled()) {
        server_.ReleaseSession(identity, session_id, "Train stream cancelled (client vanished)");
      } else if (!KeepsSession(status.error_code())) {
        server_.ReleaseSession(identity, session_id,
                               std::string("Train stream ended with ") +
                                   protocol::StatusCodeName(status.error_code()));
      }
    }
    return status;
  }

  grpc::Status Refuse(const char* what, const std::string& identity, const std::string& refusal) {
    refused_limits_.fetch_add(1);
    spdlog::warn("{} from '{}' refused: {}", what, PeerText(identity), refusal);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, refusal);
  }

  // Parses under the same size limit as gRPC's own (typed) handlers would; throws
  // INVALID_ARGUMENT naming the message type.
  void Parse(grpc::ByteBuffer* raw, google::protobuf::Message* message) {
    const size_t size = raw->Length();
    bool parsed = static_cast<int64_t>(size) <= max_message_bytes_;
    if (parsed) {
      grpc::ProtoBufferReader reader(raw);
      google::protobuf::io::CodedInputStream input(&reader);
      input.SetTotalBytesLimit(static_cast<int>(max_message_bytes_));
      parsed = message->ParseFromCodedStream(&input) && input.ConsumedEntireMessage() &&
               reader.status().ok();
    }
    if (!parsed) {
      unparseable_.fetch_add(1);
      const std::string& type = message->GetDescriptor()->name();
      throw protocol::StatusError(
          grpc::StatusCode::INVALID_ARGUMENT,
          detail::Concat("cannot parse ", type, ": ", size, " bytes are not a valid ", type,
                         " (protocol version ", protocol::kProtocolVersion, ")"));
    }
  }

  static void Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
    bool own_buffer = false;
    const grpc::Status status =
        grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, out, &own_buffer);
    if (!status.ok()) {
      throw protocol::StatusError(
          grpc::StatusCode::INTERNAL,
          "cannot serialize " + message.GetDescriptor()->name() + ": " + status.error_message());
    }
  }

  SplitServer& server_;
  CallLimiter limiter_;
  const int64_t max_message_bytes_;
  std::atomic<int64_t> refused_limits_{0};
  std::atomic<int64_t> unparseable_{0};
  std::atomic<int64_t> requests_handled_{0};
};

void RouteGrpcLogsToSpdlog() { gpr_set_log_function(LogFromGrpc); }

int64_t RefusedHandshakes() { return refused_handshakes.load(); }

namespace {

CallLimits LimitsFrom(const ListenOptions& options) {
  CallLimits limits;
  limits.max_calls_per_client = options.max_calls_per_client;
  limits.max_client_request_bytes = options.max_client_request_bytes > 0
                                        ? options.max_client_request_bytes
                                        : 2 * options.max_message_bytes;
  limits.max_large_request_bytes = options.max_large_request_bytes > 0
                                       ? options.max_large_request_bytes
                                       : 4 * options.max_message_bytes;
  return limits;
}

void CheckLimits(const ListenOptions& options, const CallLimits& limits) {
  CLEAVE_CHECK_USER(options.max_message_bytes > 0 && options.max_message_bytes <= INT_MAX,
                    "the largest message must be between 1 byte and 2 GiB");
  // The sync server keeps one polling thread; fewer than two would serve nothing.
  CLEAVE_CHECK_USER(options.max_threads >= 2, "the server needs at least 2 threads");
  CLEAVE_CHECK_USER(options.max_streams_per_connection >= 1,
                    "the streams allowed per connection must be at least 1");
  CLEAVE_CHECK_USER(limits.max_calls_per_client >= 1,
                    "the calls allowed per client must be at least 1");
  // Below one message, a hospital's largest honest request would always be refused.
  CLEAVE_CHECK_USER(limits.max_client_request_bytes >= options.max_message_bytes,
                    "the request bytes allowed per client must be at least one message");
  CLEAVE_CHECK_USER(limits.max_large_request_bytes >= options.max_message_bytes,
                    "the bytes of large requests allowed at once must be at least one message");
}

}  // namespace

GrpcServer::GrpcServer(SplitServer& server, const ListenOptions& options) {
  const CallLimits limits = LimitsFrom(options);
  CheckLimits(options, limits);
  if (options.psi_parties > 0) {
    PsiRelayOptions psi;
    psi.parties = options.psi_parties;
    psi.max_wait = std::chrono::milliseconds(options.psi_max_wait_ms);
    psi_relay_ = std::make_unique<PsiRelay>(psi);
  }
  service_ = std::make_unique<SplitLearningService>(server, limits, options.max_message_bytes,
                                                    psi_relay_.get());
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
    allowlist_ = std::make_shared<AllowlistAuthProcessor>(options.allowed_clients);
    credentials->SetAuthMetadataProcessor(allowlist_);
  }
  builder.AddListeningPort(options.address, credentials, &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // gRPC sets SO_REUSEPORT by default: a second server on our port would start and take a share
  // of the connections. Fail to bind instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_streams_per_connection);
  grpc::ResourceQuota quota("cleave-server");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  // Notice dead peers on idle connections.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  server_ = builder.BuildAndStart();
  CLEAVE_CHECK_USER(server_ != nullptr && port_ != 0, "cannot listen on '", options.address,
                    "' (address in use or invalid)");
  server_->GetHealthCheckService()->SetServingStatus("cleave.v1.SplitLearning", true);
  spdlog::info("listening on port {} ({}; at most {} threads, {} calls per client)", port_,
               options.insecure ? "INSECURE plaintext" : "mutual TLS", options.max_threads,
               limits.max_calls_per_client);
}

GrpcServer::~GrpcServer() { Shutdown(0); }

GrpcServer::Stats GrpcServer::stats() const {
  Stats stats = service_->stats();
  if (allowlist_) stats.refused_unauthorized = allowlist_->refused();
  return stats;
}

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
