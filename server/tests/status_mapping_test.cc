// The one mapping from the server's refusals to gRPC statuses, and the in-process link answering
// through it: a fatal mismatch is FAILED_PRECONDITION, "not in this round / too stale" ABORTED,
// whichever link the client uses.
#include "cleave/server/status_mapping.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <stdexcept>

#include "cleave/server/in_process_link.h"
#include "cleave/server/split_server.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using test::JoinFor;
using test::SyncFor;

constexpr RefusalKind kAllKinds[] = {RefusalKind::kMismatch,       RefusalKind::kNotAllowed,
                                     RefusalKind::kUnknownSession, RefusalKind::kNotInRound,
                                     RefusalKind::kStale,          RefusalKind::kNoSamples,
                                     RefusalKind::kOutOfBounds,    RefusalKind::kNonFinite,
                                     RefusalKind::kPartyMissing};

TEST(StatusMappingTest, FatalMismatchAndResynchronisingRefusalsHaveDistinctCodes) {
  EXPECT_EQ(StatusCodeFor(RefusalKind::kMismatch), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kNotInRound), grpc::StatusCode::ABORTED);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kStale), grpc::StatusCode::ABORTED);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kNoSamples), grpc::StatusCode::ABORTED);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kNotAllowed), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kUnknownSession), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kOutOfBounds), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kNonFinite), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(StatusCodeFor(RefusalKind::kPartyMissing), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The client resynchronises on ABORTED and on nothing else: the kinds that resynchronise are
  // exactly those mapped to it.
  for (RefusalKind kind : kAllKinds) {
    EXPECT_EQ(Resynchronises(kind), StatusCodeFor(kind) == grpc::StatusCode::ABORTED)
        << RefusalReason(kind);
  }
}

TEST(StatusMappingTest, TheStatusCarriesTheMessageAndOtherErrorsKeepTheirCodes) {
  const grpc::Status refused = StatusFor(Refusal(RefusalKind::kStale, "3 versions old"));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(refused.error_message(), "3 versions old");
  EXPECT_EQ(StatusFor(InvalidInput("bad shape")).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(StatusFor(protocol::StatusError(grpc::StatusCode::CANCELLED, "gone")).error_code(),
            grpc::StatusCode::CANCELLED);
  EXPECT_EQ(StatusFor(std::runtime_error("bug")).error_code(), grpc::StatusCode::INTERNAL);
  const protocol::StatusError client_side = AsStatusError(Refusal(RefusalKind::kMismatch, "x"));
  EXPECT_EQ(client_side.code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(StatusMappingTest, MetricsLabelsNameTheReason) {
  EXPECT_STREQ(RefusalReasonOf(Refusal(RefusalKind::kNotInRound, "")), "not_participant");
  EXPECT_STREQ(RefusalReasonOf(NotFinite("")), "nonfinite");
  EXPECT_STREQ(RefusalReasonOf(OutOfBounds("")), "out_of_bounds");
  EXPECT_STREQ(RefusalReasonOf(InvalidInput("")), "invalid");
}

SplitServerOptions SplitFedMlp() {
  SplitServerOptions options = test::MlpOptions();
  options.rounds.schedule = Schedule::kSplitFed;
  options.compression.mutable_updates()->set_method("none");
  return options;
}

grpc::StatusCode CodeThrough(const std::function<void()>& call) {
  try {
    call();
  } catch (const protocol::StatusError& error) {
    return error.code();
  }
  return grpc::StatusCode::OK;
}

TEST(InProcessLinkTest, RefusalsReachTheClientWithTheCodesTheServiceAnswers) {
  SplitServer server(SplitFedMlp());
  InProcessLink link(server, "a");
  v1::JoinRequest other_model = JoinFor(server);
  other_model.set_model_fingerprint("0123456789abcdef");
  EXPECT_EQ(CodeThrough([&] { link.Join(other_model); }), grpc::StatusCode::FAILED_PRECONDITION);
  const std::string session = link.Join(JoinFor(server)).session_id();
  // A step before Sync said TRAIN: not in this round, resynchronise.
  v1::TrainRequest step;
  step.set_protocol_version(protocol::kProtocolVersion);
  step.set_session_id(session);
  protocol::EncodeDense(at::randn({4, 128}), step.mutable_activations());
  protocol::EncodeDense(at::zeros({4}, at::kLong), step.mutable_labels());
  EXPECT_EQ(CodeThrough([&] { link.TrainStep(step); }), grpc::StatusCode::ABORTED);
  v1::SyncRequest old_protocol = SyncFor(session, -1);
  old_protocol.set_protocol_version(protocol::kProtocolVersion + 1);
  EXPECT_EQ(CodeThrough([&] { link.Sync(old_protocol); }), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(CodeThrough([&] { link.Sync(SyncFor("no-such-session", -1)); }),
            grpc::StatusCode::NOT_FOUND);
  // Bad input is INVALID_ARGUMENT here as over gRPC (not a bare InvalidInput).
  step.mutable_activations()->Clear();
  EXPECT_EQ(CodeThrough([&] { link.TrainStep(step); }), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace cleave::server
