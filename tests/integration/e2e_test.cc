// End-to-end split learning: a real SplitServer and SplitTrainer on Fashion-MNIST over each link
// (loopback gRPC with mutual TLS and throwaway certificates on port 0, and in process), and, over
// gRPC only, what is about gRPC and TLS: certificates, the bad inputs a server must survive as
// status codes on the wire, message limits, cancelled calls, the health service.
#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>

#include "cleave/client/grpc_link.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/certificates.h"
#include "cleave/core/dataset.h"
#include "cleave/protocol/cleave.grpc.pb.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/grpc_server.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/fashion_mnist.h"
#include "cleave/test_support/raw_channel.h"
#include "cleave/test_support/test_pki.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using client::ConnectOptions;
using client::GrpcLink;
using client::SplitTrainer;
using client::TrainerOptions;
using protocol::StatusError;
using test_support::CnnSpec;
using test_support::LinkKind;
using test_support::Pki;
using test_support::TestServer;

// The first 8000 training rows.
const Dataset& SmallTrainSet() {
  return test_support::FashionMnist(FashionMnistSplit::kTrain, 8000);
}

// Test rows the trainer never sees: accuracy is measured here, not on the training rows. Measured
// after 250 steps over gRPC: 0.81 dense, 0.79 compressed, 0.80 per sample (chance: 0.10).
const Dataset& HeldOutSet() { return test_support::FashionMnist(FashionMnistSplit::kTest, 2000); }

// Mean loss of the first and of the last 25 steps.
std::pair<double, double> FirstAndLastLoss(const std::vector<double>& losses) {
  const double first = std::accumulate(losses.begin(), losses.begin() + 25, 0.0) / 25;
  const double last = std::accumulate(losses.end() - 25, losses.end(), 0.0) / 25;
  return {first, last};
}

server::SplitServerOptions CnnServer() {
  server::SplitServerOptions options;
  options.model = CnnSpec();
  options.max_batch = 64;
  options.max_message_bytes = 4 << 20;
  return options;
}

// 250 steps of 32 Fashion-MNIST images over the link of the parameter.
class TrainingEndToEndTest : public ::testing::TestWithParam<LinkKind> {
 protected:
  virtual server::SplitServerOptions ServerOptions() const { return CnnServer(); }

  void SetUp() override {
    CLEAVE_REQUIRE_FASHION_MNIST();
    server_ = std::make_unique<TestServer>(ServerOptions(), GetParam());
    split_server_ = &server_->split_server();
    link_ = server_->Link("st-mary");
  }

  static TrainerOptions Trainer() {
    TrainerOptions options;
    options.model = CnnSpec();
    options.batch_size = 32;
    options.max_steps_per_epoch = 250;
    return options;
  }

  std::unique_ptr<TestServer> server_;
  server::SplitServer* split_server_ = nullptr;
  std::unique_ptr<protocol::SplitLink> link_;
};

TEST_P(TrainingEndToEndTest, LossFallsOverAFewHundredSteps) {
  SplitTrainer trainer(Trainer(), *link_);
  const v1::JoinReply joined = trainer.Join(SmallTrainSet().size());
  EXPECT_EQ(joined.client_name(), "st-mary");  // identity from the certificate CN (or the link)
  const at::Tensor initial = trainer.ClientWeights();
  trainer.TrainEpoch(SmallTrainSet(), 0, 1, nullptr);
  // The client's layers learned from the server's gradients. (Held-out accuracy cannot show it:
  // with the client's layers frozen at their random start the server's layers alone reach 0.80;
  // client/tests/gradient_step_test.cc checks the client's step exactly.)
  const double moved = ((trainer.ClientWeights() - initial).norm() / initial.norm()).item<double>();
  std::printf("[ e2e      ] client weights moved by %.3f of their norm\n", moved);
  EXPECT_GT(moved, 0.05);
  const auto& losses = trainer.step_losses();
  ASSERT_EQ(losses.size(), 250u);
  const auto [first, last] = FirstAndLastLoss(losses);
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  EXPECT_EQ(split_server_->step(), 250);
  EXPECT_GT(trainer.counters().bytes_sent, 250 * 32 * 32 * 14 * 14 * 4);
  EXPECT_GT(trainer.counters().bytes_received, 0);
  const client::EvalStats eval = trainer.Evaluate(HeldOutSet(), 500);
  EXPECT_EQ(eval.samples, HeldOutSet().size());
  std::printf("[ e2e      ] held-out accuracy after 250 steps: %.3f\n", eval.accuracy);
  EXPECT_GT(eval.accuracy, 0.75);
  trainer.Leave();
  EXPECT_EQ(split_server_->active_sessions(), 0u);
}

// Gaussian-k on the link: activations up at 5% in fp16, gradients back re-sparsified to half of
// the sent positions in bf16.
class CompressedEndToEndTest : public TrainingEndToEndTest {
 protected:
  server::SplitServerOptions ServerOptions() const override {
    server::SplitServerOptions options = CnnServer();
    auto* act = options.compression.mutable_activations();
    act->set_method("gaussiank+");
    act->set_density(0.05);
    act->set_value_precision("fp16");
    auto* grad = options.compression.mutable_gradients();
    grad->set_method("gaussiank");
    grad->set_density(0.5);
    grad->set_value_precision("bf16");
    return options;
  }
};

TEST_P(CompressedEndToEndTest, TrainsWithFarFewerBytes) {
  SplitTrainer trainer(Trainer(), *link_);
  const v1::JoinReply joined = trainer.Join(SmallTrainSet().size());
  EXPECT_EQ(joined.compression().activations().method(), "gaussiank+");
  trainer.TrainEpoch(SmallTrainSet(), 0, 1, nullptr);
  const auto& losses = trainer.step_losses();
  const auto [first, last] = FirstAndLastLoss(losses);
  EXPECT_LT(last, 0.7 * first) << "first " << first << " last " << last;
  const auto& counters = trainer.counters();
  // 5% of the elements, 2-byte values plus delta-varint indices: well over 10x less than dense.
  EXPECT_GT(static_cast<double>(counters.dense_fp32_bytes) / counters.bytes_sent, 10.0);
  EXPECT_NEAR(static_cast<double>(counters.elements_sent) / counters.elements_total, 0.05, 0.005);
  EXPECT_LT(counters.bytes_received, counters.bytes_sent);
  // Both ends count the same protobuf bytes (the server from the session Join opened).
  const client::LinkBytes& link_bytes = trainer.link_bytes();
  EXPECT_EQ(split_server_->bytes_received(), counters.bytes_sent - link_bytes.session.sent);
  EXPECT_EQ(split_server_->bytes_sent(), counters.bytes_received - link_bytes.session.received);
  EXPECT_GT(link_bytes.session.received, 0);
  const client::EvalStats eval = trainer.Evaluate(HeldOutSet(), 500);
  std::printf("[ e2e      ] held-out accuracy after 250 compressed steps: %.3f\n", eval.accuracy);
  EXPECT_GT(eval.accuracy, 0.75);
}

// Activations chosen per sample (5% of each sample in fp16), gradients back in bf16 at exactly
// the sent positions: the configuration of the accuracy goal.
class PerSampleEndToEndTest : public TrainingEndToEndTest {
 protected:
  server::SplitServerOptions ServerOptions() const override {
    server::SplitServerOptions options = CnnServer();
    auto* act = options.compression.mutable_activations();
    act->set_method("gaussiank+");
    act->set_density(0.05);
    act->set_value_precision("fp16");
    act->set_per_sample(true);
    options.compression.mutable_gradients()->set_value_precision("bf16");
    return options;
  }
};

TEST_P(PerSampleEndToEndTest, ServerAdvertisesItAndEverySampleGetsItsShare) {
  SplitTrainer trainer(Trainer(), *link_);
  const v1::JoinReply joined = trainer.Join(SmallTrainSet().size());
  EXPECT_TRUE(joined.compression().activations().per_sample());
  EXPECT_EQ(joined.compression().gradients().method(), "none");
  trainer.TrainEpoch(SmallTrainSet(), 0, 1, nullptr);
  const auto [first, last] = FirstAndLastLoss(trainer.step_losses());
  EXPECT_LT(last, 0.7 * first) << "first " << first << " last " << last;
  const auto& counters = trainer.counters();
  // round(0.05 * 6272) = 314 of each sample's 6272 cut-layer elements, whatever the batch.
  EXPECT_EQ(counters.elements_sent * 6272, counters.elements_total * 314);
  EXPECT_GT(static_cast<double>(counters.dense_fp32_bytes) / counters.bytes_sent, 10.0);
  EXPECT_EQ(split_server_->bytes_received(),
            counters.bytes_sent - trainer.link_bytes().session.sent);
  const client::EvalStats eval = trainer.Evaluate(HeldOutSet(), 500);
  std::printf("[ e2e      ] held-out accuracy after 250 per-sample steps: %.3f\n", eval.accuracy);
  EXPECT_GT(eval.accuracy, 0.75);
}

const auto kLinks = ::testing::Values(LinkKind::kGrpc, LinkKind::kInProcess);
const auto kLinkName = [](const ::testing::TestParamInfo<LinkKind>& info) {
  return test_support::LinkName(info.param);
};
INSTANTIATE_TEST_SUITE_P(Links, TrainingEndToEndTest, kLinks, kLinkName);
INSTANTIATE_TEST_SUITE_P(Links, CompressedEndToEndTest, kLinks, kLinkName);
INSTANTIATE_TEST_SUITE_P(Links, PerSampleEndToEndTest, kLinks, kLinkName);

// Over loopback gRPC with mutual TLS only: what the tests below check is the wire and its
// certificates. None needs Fashion-MNIST.
class EndToEndTest : public ::testing::Test {
 protected:
  virtual server::SplitServerOptions ServerOptions() const { return CnnServer(); }

  void SetUp() override {
    server_ = std::make_unique<TestServer>(ServerOptions(), LinkKind::kGrpc);
    split_server_ = &server_->split_server();
  }

  ConnectOptions Connect(const TlsFiles& tls) const {
    ConnectOptions connect;
    connect.target = "localhost:" + std::to_string(server_->port());
    connect.tls = tls;
    connect.max_message_bytes = 4 << 20;
    connect.connect_timeout_seconds = 2;
    return connect;
  }

  // A raw stub with a client certificate, for sending hand-made (bad) messages.
  std::unique_ptr<v1::SplitLearning::Stub> RawStub(const std::string& name) const {
    return test_support::RawStub(server_->port(), name);
  }

  std::string RawJoin(v1::SplitLearning::Stub& stub) const {
    return test_support::RawJoin(stub, split_server_->fingerprint());
  }

  // A well-formed request for `batch` samples; tests then break one thing in it.
  v1::TrainRequest GoodRequest(const std::string& session, int64_t batch = 4) const {
    v1::TrainRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session);
    protocol::EncodeDense(at::rand({batch, 32, 14, 14}), request.mutable_activations());
    protocol::EncodeDense(at::zeros({batch}, at::kLong), request.mutable_labels());
    return request;
  }

  // Sends one request on a fresh stream and returns the stream's status.
  grpc::Status SendOne(v1::SplitLearning::Stub& stub, const v1::TrainRequest& request) const {
    grpc::ClientContext context;
    auto stream = stub.Train(&context);
    stream->Write(request);
    stream->WritesDone();
    v1::TrainReply reply;
    while (stream->Read(&reply)) {
    }
    return stream->Finish();
  }

  std::unique_ptr<TestServer> server_;
  server::SplitServer* split_server_ = nullptr;
};

TEST_F(EndToEndTest, ClientWithoutCertificateIsRefusedByTheHandshake) {
  const int64_t refused_before = server::RefusedHandshakes();
  ConnectOptions connect = Connect({});
  connect.tls.ca_pem = Pki().ca.certificate_pem;  // trusts the server, presents nothing
  GrpcLink link(connect);
  TrainerOptions options;
  options.model = CnnSpec();
  SplitTrainer trainer(options, link);
  try {
    trainer.Join(1);
    FAIL() << "Join succeeded without a client certificate";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::UNAVAILABLE) << error.what();
  }
  EXPECT_GT(server::RefusedHandshakes(), refused_before);  // and the server logged it
  EXPECT_EQ(split_server_->active_sessions(), 0u);
}

TEST_F(EndToEndTest, ClientSignedByAnotherCaIsRefused) {
  const int64_t refused_before = server::RefusedHandshakes();
  const PemPair other_ca = CreateCertificateAuthority("someone else's CA");
  const PemPair impostor = IssueClientCertificate(other_ca, "st-mary");
  GrpcLink link(
      Connect({Pki().ca.certificate_pem, impostor.certificate_pem, impostor.private_key_pem}));
  TrainerOptions options;
  options.model = CnnSpec();
  SplitTrainer trainer(options, link);
  EXPECT_THROW(trainer.Join(1), StatusError);
  EXPECT_GT(server::RefusedHandshakes(), refused_before);
  EXPECT_EQ(split_server_->active_sessions(), 0u);
}

// A valid certificate is not enough when the server has an allowlist.
class AllowlistEndToEndTest : public EndToEndTest {
 protected:
  server::SplitServerOptions ServerOptions() const override {
    server::SplitServerOptions options = EndToEndTest::ServerOptions();
    options.allowed_clients = {"st-mary"};
    return options;
  }
};

TEST_F(AllowlistEndToEndTest, UnlistedClientIsPermissionDenied) {
  GrpcLink link(Connect(Pki().ClientFiles("mallory")));
  TrainerOptions options;
  options.model = CnnSpec();
  SplitTrainer trainer(options, link);
  try {
    trainer.Join(1);
    FAIL() << "an unlisted client joined";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::PERMISSION_DENIED) << error.what();
  }
  GrpcLink listed(Connect(Pki().ClientFiles("st-mary")));
  SplitTrainer allowed(options, listed);
  EXPECT_EQ(allowed.Join(1).client_name(), "st-mary");
}

TEST_F(EndToEndTest, WrongFingerprintIsFailedPreconditionNamingBoth) {
  GrpcLink link(Connect(Pki().ClientFiles("st-mary")));
  TrainerOptions options;
  options.model = CnnSpec();
  options.model.cut = 2;
  SplitTrainer trainer(options, link);
  try {
    trainer.Join(1);
    FAIL() << "Join accepted a different model";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::FAILED_PRECONDITION);
    const std::string message = error.what();
    EXPECT_NE(message.find(trainer.fingerprint()), std::string::npos) << message;
    EXPECT_NE(message.find(split_server_->fingerprint()), std::string::npos) << message;
  }
}

struct BadTensorCase {
  const char* name;
  void (*breaker)(v1::TrainRequest*);
};

class BadTensorTest : public EndToEndTest, public ::testing::WithParamInterface<BadTensorCase> {};

TEST_P(BadTensorTest, IsInvalidArgumentAndOthersKeepTraining) {
  auto stub = RawStub("mallory");
  const std::string session = RawJoin(*stub);
  v1::TrainRequest request = GoodRequest(session);
  GetParam().breaker(&request);
  const grpc::Status status = SendOne(*stub, request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(split_server_->step(), 0);

  // Another hospital is still served.
  GrpcLink link(Connect(Pki().ClientFiles("st-mary")));
  TrainerOptions options;
  options.model = CnnSpec();
  options.max_steps_per_epoch = 3;
  SplitTrainer trainer(options, link);
  const Dataset images = test_support::NoiseImages(3 * options.batch_size, 1);
  trainer.Join(images.size());
  trainer.TrainEpoch(images, 0, 1, nullptr);
  EXPECT_EQ(split_server_->step(), 3);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadTensorTest,
    ::testing::Values(
        BadTensorCase{"WrongShape",
                      [](v1::TrainRequest* r) {
                        protocol::EncodeDense(at::rand({4, 32, 14, 13}), r->mutable_activations());
                      }},
        BadTensorCase{"WrongRank",
                      [](v1::TrainRequest* r) {
                        protocol::EncodeDense(at::rand({4, 6272}), r->mutable_activations());
                      }},
        BadTensorCase{
            "WrongDtype",
            [](v1::TrainRequest* r) { r->mutable_activations()->set_dtype(v1::Tensor::INT64); }},
        BadTensorCase{
            "TooFewBytes",
            [](v1::TrainRequest* r) { r->mutable_activations()->mutable_dense()->resize(100); }},
        BadTensorCase{"LabelCountMismatch",
                      [](v1::TrainRequest* r) {
                        protocol::EncodeDense(at::zeros({3}, at::kLong), r->mutable_labels());
                      }},
        BadTensorCase{"LabelOutOfRange",
                      [](v1::TrainRequest* r) {
                        protocol::EncodeDense(at::full({4}, 10, at::kLong), r->mutable_labels());
                      }},
        BadTensorCase{"NaN",
                      [](v1::TrainRequest* r) {
                        at::Tensor t = at::rand({4, 32, 14, 14});
                        t[1][2][3][4] = std::numeric_limits<float>::quiet_NaN();
                        protocol::EncodeDense(t, r->mutable_activations());
                      }},
        BadTensorCase{"Inf",
                      [](v1::TrainRequest* r) {
                        at::Tensor t = at::rand({4, 32, 14, 14});
                        t[0][0][0][0] = std::numeric_limits<float>::infinity();
                        protocol::EncodeDense(t, r->mutable_activations());
                      }},
        BadTensorCase{"BatchOverTheLimit",
                      [](v1::TrainRequest* r) {
                        protocol::EncodeDense(at::rand({65, 32, 14, 14}), r->mutable_activations());
                        protocol::EncodeDense(at::zeros({65}, at::kLong), r->mutable_labels());
                      }},
        BadTensorCase{"NegativeDimension",
                      [](v1::TrainRequest* r) { r->mutable_activations()->set_shape(0, -4); }},
        BadTensorCase{"NoPayload",
                      [](v1::TrainRequest* r) { r->mutable_activations()->clear_dense(); }},
        BadTensorCase{
            "UnexpectedSparsePayload",
            [](v1::TrainRequest* r) { r->mutable_activations()->set_sparse("\x01\x02\x03"); }}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(EndToEndTest, MessageOverTheSizeLimitIsAClearError) {
  auto stub = RawStub("mallory");
  const std::string session = RawJoin(*stub);
  v1::TrainRequest request = GoodRequest(session, 200);  // ~5 MB > 4 MiB limit
  const grpc::Status status = SendOne(*stub, request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST_F(EndToEndTest, AnotherClientCannotUseASession) {
  auto owner = RawStub("st-mary");
  const std::string session = RawJoin(*owner);
  auto thief = RawStub("mallory");
  const grpc::Status status = SendOne(*thief, GoodRequest(session));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext context;
  v1::LeaveRequest leave;
  leave.set_protocol_version(protocol::kProtocolVersion);
  leave.set_session_id(session);
  v1::LeaveReply reply;
  EXPECT_EQ(thief->Leave(&context, leave, &reply).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(split_server_->active_sessions(), 1u);
}

TEST_F(EndToEndTest, VanishingClientReleasesItsSession) {
  auto stub = RawStub("st-mary");
  const std::string session = RawJoin(*stub);
  ASSERT_EQ(split_server_->active_sessions(), 1u);
  // Mid-epoch: one step on an open stream, then the connection dies without closing it.
  grpc::ClientContext context;
  auto stream = stub->Train(&context);
  ASSERT_TRUE(stream->Write(GoodRequest(session)));
  v1::TrainReply reply;
  ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(split_server_->step(), 1);
  context.TryCancel();
  stream->Finish();
  EXPECT_TRUE(split_server_->WaitForActiveSessions(0, std::chrono::seconds(10)))
      << split_server_->active_sessions() << " sessions still active";
}

// The standard health service's Check, by hand (this system has no generated health stubs):
// HealthCheckRequest {string service = 1}, HealthCheckResponse {ServingStatus status = 1}.
grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int* serving_status) {
  std::string request = {0x0a, static_cast<char>(service.size())};
  request += service;
  std::string response;
  const grpc::Status status =
      test_support::RawUnary(channel, "/grpc.health.v1.Health/Check", request, &response);
  *serving_status = -1;
  if (status.ok()) {
    // An empty message is status UNKNOWN (0); otherwise field 1, varint.
    *serving_status =
        response.empty() ? 0 : (response.size() == 2 && response[0] == 0x08 ? response[1] : -2);
  }
  return status;
}

TEST_F(EndToEndTest, TheHealthServiceSaysTheSplitLearningServiceIsServing) {
  const auto channel = test_support::RawChannel(server_->port(), "monitor");
  constexpr int kServing = 1;
  int serving = -1;
  ASSERT_TRUE(HealthCheck(channel, "cleave.v1.SplitLearning", &serving).ok());
  EXPECT_EQ(serving, kServing);
  ASSERT_TRUE(HealthCheck(channel, "", &serving).ok());  // the server as a whole
  EXPECT_EQ(serving, kServing);
  EXPECT_EQ(HealthCheck(channel, "no.such.Service", &serving).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(EndToEndTest, ClientRefusesAServerCertificateFromAnotherCa) {
  // The client trusts only another CA: the real server's certificate must not do.
  const PemPair other_ca = CreateCertificateAuthority("someone else's CA");
  TlsFiles tls = Pki().ClientFiles("st-mary");
  tls.ca_pem = other_ca.certificate_pem;
  ConnectOptions connect = Connect(tls);
  connect.connect_timeout_seconds = 1;
  GrpcLink link(connect);
  TrainerOptions options;
  options.model = CnnSpec();
  SplitTrainer trainer(options, link);
  try {
    trainer.Join(1);
    FAIL() << "Join succeeded with a server certificate from an untrusted CA";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::UNAVAILABLE) << error.what();
  }
  EXPECT_EQ(split_server_->active_sessions(), 0u);
}

// Rounds that cannot start (two hospitals are needed), so that a Sync waits; the server holds a
// Sync at most one second.
class WaitingRoundsEndToEndTest : public EndToEndTest {
 protected:
  server::SplitServerOptions ServerOptions() const override {
    server::SplitServerOptions options = EndToEndTest::ServerOptions();
    options.rounds.schedule = server::Schedule::kSplitFed;
    options.rounds.min_clients = 2;
    options.max_sync_wait = std::chrono::milliseconds(1000);
    return options;
  }

  v1::SyncRequest SyncFor(const std::string& session, int64_t wait_ms) const {
    v1::SyncRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session);
    request.set_have_version(-1);
    request.set_wait_ms(wait_ms);
    return request;
  }
};

TEST_F(WaitingRoundsEndToEndTest, ACancelledSyncReleasesItsSessionAndAnAnsweredOneDoesNot) {
  auto stub = RawStub("st-mary");
  const std::string session = RawJoin(*stub);
  {
    grpc::ClientContext context;
    v1::SyncReply reply;
    ASSERT_TRUE(stub->Sync(&context, SyncFor(session, 0), &reply).ok());
    EXPECT_EQ(reply.action(), v1::SyncReply::WAIT);
    EXPECT_EQ(split_server_->active_sessions(), 1u);
  }
  // The hospital gives up (or dies) long before the server's wait is over.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  v1::SyncReply reply;
  EXPECT_EQ(stub->Sync(&context, SyncFor(session, 60000), &reply).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(split_server_->WaitForActiveSessions(0, std::chrono::seconds(10)))
      << split_server_->active_sessions() << " sessions still active";
}

}  // namespace
}  // namespace cleave
