// A tiny server and well-formed requests to it, for the server's tests (hostile ones start from
// these).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"

namespace cleave::server::test {

// The server of most unit tests: an MLP over 8 features, 3 classes, cut after its first layer,
// batches of at most 16.
inline SplitServerOptions MlpOptions() {
  SplitServerOptions options;
  options.model.architecture = "mlp";
  options.model.input_shape = {8};
  options.model.num_classes = 3;
  options.model.cut = 1;
  options.max_batch = 16;
  return options;
}

inline v1::JoinRequest JoinFor(const SplitServer& server) {
  v1::JoinRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_model_fingerprint(server.fingerprint());
  return request;
}

inline v1::SyncRequest SyncFor(const std::string& session, int64_t have_version) {
  v1::SyncRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_have_version(have_version);
  return request;
}

inline v1::UpdateRequest UpdateFor(const std::string& session, int64_t base_version, int64_t round,
                                   int64_t samples, const at::Tensor& delta) {
  v1::UpdateRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_base_version(base_version);
  request.set_round(round);
  request.set_samples(samples);
  protocol::EncodeDense(delta, request.mutable_delta());
  return request;
}

}  // namespace cleave::server::test
