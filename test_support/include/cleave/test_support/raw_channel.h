// Calls no SplitLink would make (hand-made, hostile or unparseable messages) to a GrpcServer on
// loopback, under a client certificate of the test PKI.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "cleave/protocol/cleave.grpc.pb.h"

namespace cleave::test_support {

// A channel to localhost:`port` with `name`'s certificate, on a connection of its own. It sends
// messages up to 128 MiB, so that the server's limit is the one that refuses.
std::shared_ptr<grpc::Channel> RawChannel(int port, const std::string& name);

std::unique_ptr<v1::SplitLearning::Stub> RawStub(int port, const std::string& name);

// Joins with the current protocol version and `fingerprint`; returns the session. Throws
// std::runtime_error with the status if the server refuses.
std::string RawJoin(v1::SplitLearning::Stub& stub, const std::string& fingerprint);

// One unary call of `method` (a full path: "/package.Service/Method") with raw request bytes;
// `reply` (if given) receives the reply's bytes. Waits at most 10 seconds.
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request, std::string* reply = nullptr);

}  // namespace cleave::test_support
