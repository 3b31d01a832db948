#include "cleave/client/byte_counting_link.h"

namespace cleave::client {
namespace {

// Counts `request` as sent, makes the call, counts the reply it returns as received.
template <typename Reply, typename Request, typename Call>
Reply Counted(MessageBytes& bytes, const Request& request, Call call) {
  bytes.sent += static_cast<int64_t>(request.ByteSizeLong());
  Reply reply = call(request);
  bytes.received += static_cast<int64_t>(reply.ByteSizeLong());
  return reply;
}

}  // namespace

MessageBytes LinkBytes::Total() const {
  MessageBytes total;
  for (const MessageBytes* kind : {&train, &evaluate, &update, &sync, &session}) {
    total.sent += kind->sent;
    total.received += kind->received;
  }
  return total;
}

v1::JoinReply ByteCountingLink::Join(const v1::JoinRequest& request) {
  return Counted<v1::JoinReply>(bytes_.session, request,
                                [this](const auto& r) { return inner_.Join(r); });
}

v1::TrainReply ByteCountingLink::TrainStep(const v1::TrainRequest& request) {
  return Counted<v1::TrainReply>(bytes_.train, request,
                                 [this](const auto& r) { return inner_.TrainStep(r); });
}

v1::EvaluateReply ByteCountingLink::Evaluate(const v1::EvaluateRequest& request) {
  return Counted<v1::EvaluateReply>(bytes_.evaluate, request,
                                    [this](const auto& r) { return inner_.Evaluate(r); });
}

void ByteCountingLink::Leave(const v1::LeaveRequest& request) {
  bytes_.session.sent += static_cast<int64_t>(request.ByteSizeLong());
  inner_.Leave(request);  // the reply is empty
}

v1::SyncReply ByteCountingLink::Sync(const v1::SyncRequest& request) {
  return Counted<v1::SyncReply>(bytes_.sync, request,
                                [this](const auto& r) { return inner_.Sync(r); });
}

v1::UpdateReply ByteCountingLink::SubmitUpdate(const v1::UpdateRequest& request) {
  return Counted<v1::UpdateReply>(bytes_.update, request,
                                  [this](const auto& r) { return inner_.SubmitUpdate(r); });
}

}  // namespace cleave::client
