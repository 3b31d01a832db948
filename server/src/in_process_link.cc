#include "cleave/server/in_process_link.h"

#include "cleave/core/error.h"
#include "cleave/server/split_server.h"
#include "cleave/server/status_mapping.h"

namespace cleave::server {

namespace {

// Round-trips a message through its wire encoding, as the network would.
template <typename Message>
Message OverTheWire(const Message& message) {
  Message copy;
  CLEAVE_ENFORCE(copy.ParseFromString(message.SerializeAsString()), "message did not parse");
  return copy;
}

// Runs a call of the server; what it throws reaches the client as the StatusError the gRPC
// service would have answered with (status_mapping.h), so both links behave alike.
template <typename Call>
auto AsServed(Call&& call) {
  try {
    return call();
  } catch (const std::exception& error) {
    throw AsStatusError(error);
  }
}

}  // namespace

v1::JoinReply InProcessLink::Join(const v1::JoinRequest& request) {
  return AsServed([&] { return OverTheWire(server_.Join(identity_, OverTheWire(request))); });
}

v1::TrainReply InProcessLink::TrainStep(const v1::TrainRequest& request) {
  return AsServed([&] { return OverTheWire(server_.Train(identity_, OverTheWire(request))); });
}

v1::EvaluateReply InProcessLink::Evaluate(const v1::EvaluateRequest& request) {
  return AsServed([&] { return OverTheWire(server_.Evaluate(identity_, OverTheWire(request))); });
}

void InProcessLink::Leave(const v1::LeaveRequest& request) {
  const v1::LeaveRequest received = OverTheWire(request);
  AsServed([&] { server_.Leave(identity_, received.session_id(), received.protocol_version()); });
}

v1::SyncReply InProcessLink::Sync(const v1::SyncRequest& request) {
  return AsServed([&] { return OverTheWire(server_.Sync(identity_, OverTheWire(request))); });
}

v1::UpdateReply InProcessLink::SubmitUpdate(const v1::UpdateRequest& request) {
  return AsServed(
      [&] { return OverTheWire(server_.SubmitUpdate(identity_, OverTheWire(request))); });
}

}  // namespace cleave::server
