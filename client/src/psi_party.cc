#include "cleave/client/psi_party.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "cleave/client/grpc_channel.h"
#include "cleave/core/error.h"
#include "cleave/protocol/cleave.grpc.pb.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/version.h"
#include "cleave/psi/hash_to_curve.h"
#include "cleave/psi/psi_participant.h"

namespace cleave::client {
namespace {

std::string JoinPoints(const std::vector<std::string>& points) {
  std::string out;
  out.reserve(points.size() * psi::kPointBytes);
  for (const std::string& point : points) out += point;
  return out;
}

std::vector<std::string> SplitPoints(const std::string& points) {
  CLEAVE_CHECK_INPUT(points.size() % psi::kPointBytes == 0,
                     "PSI: the relay sent a set that is not whole points");
  std::vector<std::string> out;
  for (size_t at = 0; at < points.size(); at += psi::kPointBytes) {
    out.push_back(points.substr(at, psi::kPointBytes));
  }
  return out;
}

// The set handed to this party, blinded once more, as its answer.
v1::PsiSubmitRequest Answer(const psi::PsiParticipant& participant, const v1::PsiPoints& set,
                            const v1::PsiAwaitReply& reply) {
  CLEAVE_CHECK_INPUT(set.owner() < reply.parties() && set.owner() != reply.party() &&
                         set.hops() >= 1 && set.hops() < reply.parties(),
                     "PSI: the relay handed a set of owner ", set.owner(), " at hops ",
                     set.hops(), " to party ", reply.party(), " of ", reply.parties());
  v1::PsiSubmitRequest answer;
  answer.set_protocol_version(protocol::kProtocolVersion);
  answer.mutable_set()->set_owner(set.owner());
  answer.mutable_set()->set_hops(set.hops() + 1);
  answer.mutable_set()->set_points(JoinPoints(participant.BlindOthers(SplitPoints(set.points()))));
  return answer;
}

}  // namespace

PsiOutcome RunPsiParty(PsiTransport& transport, std::vector<std::string> ids,
                       const PsiPartyOptions& options, psi::BlindingKey key) {
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  const psi::PsiParticipant participant(std::move(ids), std::move(key));
  v1::PsiSubmitRequest own;
  own.set_protocol_version(protocol::kProtocolVersion);
  own.mutable_set()->set_hops(1);
  own.mutable_set()->set_points(JoinPoints(participant.OwnBlindedSet()));
  const v1::PsiSubmitReply joined = transport.Submit(own);
  PsiOutcome outcome;
  outcome.own_ids = participant.size();
  outcome.party = joined.party();
  outcome.parties = joined.parties();
  v1::PsiAwaitRequest await;
  await.set_protocol_version(protocol::kProtocolVersion);
  for (auto now = std::chrono::steady_clock::now(); now < deadline;
       now = std::chrono::steady_clock::now()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    await.set_max_wait_ms(static_cast<uint32_t>(std::clamp<int64_t>(left.count(), 1, 60000)));
    const v1::PsiAwaitReply reply = transport.Await(await);
    if (reply.has_blind()) {
      transport.Submit(Answer(participant, reply.blind(), reply));
      ++outcome.sets_blinded;
    } else if (reply.has_result()) {
      const auto& positions = reply.result().positions();
      outcome.shared_ids =
          participant.SharedIds(std::vector<uint32_t>(positions.begin(), positions.end()));
      return outcome;
    }
  }
  throw UserError(detail::Concat(
      "PSI: no result within ", options.timeout.count() / 1000, " s (party ", outcome.party,
      " of ", outcome.parties, "); is every party connected to the same server?"));
}

struct GrpcPsiTransport::Impl {
  std::string target;
  int connect_timeout_seconds = 30;
  std::unique_ptr<v1::SplitLearning::Stub> stub;
};

GrpcPsiTransport::GrpcPsiTransport(const ConnectOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->target = options.target;
  impl_->connect_timeout_seconds = options.connect_timeout_seconds;
  impl_->stub = v1::SplitLearning::NewStub(MakeChannel(options));
}

GrpcPsiTransport::~GrpcPsiTransport() = default;

v1::PsiSubmitReply GrpcPsiTransport::Submit(const v1::PsiSubmitRequest& request) {
  grpc::ClientContext context;
  context.set_wait_for_ready(true);  // the server may still be starting
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(impl_->connect_timeout_seconds));
  v1::PsiSubmitReply reply;
  const grpc::Status status = impl_->stub->PsiSubmit(&context, request, &reply);
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    throw protocol::StatusError(grpc::StatusCode::UNAVAILABLE,
                                "cannot reach cleave-server at " + impl_->target + " within " +
                                    std::to_string(impl_->connect_timeout_seconds) + " s");
  }
  protocol::ThrowIfError(status, "PsiSubmit");
  return reply;
}

v1::PsiAwaitReply GrpcPsiTransport::Await(const v1::PsiAwaitRequest& request) {
  grpc::ClientContext context;
  // The server answers within the wait asked for (at most a minute); allow that and the network.
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(request.max_wait_ms()) + std::chrono::seconds(30));
  v1::PsiAwaitReply reply;
  protocol::ThrowIfError(impl_->stub->PsiAwait(&context, request, &reply), "PsiAwait");
  return reply;
}

}  // namespace cleave::client
