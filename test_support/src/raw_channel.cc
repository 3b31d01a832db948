#include "cleave/test_support/raw_channel.h"

#include <grpcpp/generic/generic_stub.h>

#include <chrono>
#include <future>
#include <stdexcept>
#include <vector>

#include "cleave/protocol/version.h"
#include "cleave/test_support/test_pki.h"

namespace cleave::test_support {

std::shared_ptr<grpc::Channel> RawChannel(int port, const std::string& name) {
  const TlsFiles tls = Pki().ClientFiles(name);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = tls.ca_pem;
  ssl.pem_cert_chain = tls.certificate_pem;
  ssl.pem_private_key = tls.private_key_pem;
  grpc::ChannelArguments arguments;
  arguments.SetMaxSendMessageSize(128 << 20);
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own connection
  return grpc::CreateCustomChannel("localhost:" + std::to_string(port), grpc::SslCredentials(ssl),
                                   arguments);
}

std::unique_ptr<v1::SplitLearning::Stub> RawStub(int port, const std::string& name) {
  return v1::SplitLearning::NewStub(RawChannel(port, name));
}

std::string RawJoin(v1::SplitLearning::Stub& stub, const std::string& fingerprint) {
  grpc::ClientContext context;
  v1::JoinRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_model_fingerprint(fingerprint);
  v1::JoinReply reply;
  const grpc::Status status = stub.Join(&context, request, &reply);
  if (!status.ok()) {
    throw std::runtime_error("Join refused (" + std::to_string(status.error_code()) +
                             "): " + status.error_message());
  }
  return reply.session_id();
}

grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request, std::string* reply) {
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1), reply_buffer;
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request_buffer, &reply_buffer,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  const grpc::Status status = done.get_future().get();
  if (reply != nullptr) {
    reply->clear();
    std::vector<grpc::Slice> slices;
    if (status.ok() && reply_buffer.Dump(&slices).ok()) {
      for (const grpc::Slice& part : slices) {
        reply->append(reinterpret_cast<const char*>(part.begin()), part.size());
      }
    }
  }
  return status;
}

}  // namespace cleave::test_support
