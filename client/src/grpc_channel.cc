#include "cleave/client/grpc_channel.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>

namespace cleave::client {

std::shared_ptr<grpc::Channel> MakeChannel(const ConnectOptions& options) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  arguments.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  if (!options.server_name_override.empty()) {
    arguments.SetSslTargetNameOverride(options.server_name_override);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.insecure) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls.ca_pem;
    ssl.pem_cert_chain = options.tls.certificate_pem;
    ssl.pem_private_key = options.tls.private_key_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(options.target, credentials, arguments);
}

}  // namespace cleave::client
