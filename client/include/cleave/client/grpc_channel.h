// The channel every client-side gRPC connection uses: mutual TLS with the client's certificate
// (unless insecure), explicit message size limits, keepalive.
#pragma once

#include <memory>

#include "cleave/client/grpc_link.h"

namespace grpc {
class Channel;
}

namespace cleave::client {

std::shared_ptr<grpc::Channel> MakeChannel(const ConnectOptions& options);

}  // namespace cleave::client
