// GrpcServer over loopback mutual TLS (port 0, throwaway certificates) in front of a real
// SplitServer: what a hostile hospital, or a stranger with a certificate from our CA, can make it
// do. Raw bytes go through grpc::GenericStub, so that requests no typed stub would send can be
// sent.
#include "cleave/server/grpc_server.h"

#include <ATen/ATen.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/protocol/cleave.grpc.pb.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/protocol/version.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/raw_channel.h"
#include "cleave/test_support/test_pki.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using test_support::Pki;

constexpr char kJoinPath[] = "/cleave.v1.SplitLearning/Join";
constexpr char kTrainPath[] = "/cleave.v1.SplitLearning/Train";
// Tag 0 with wire type 7: no protobuf parser accepts it.
const std::string kGarbage("\x07\x07\x07 not a protobuf message", 27);

// The unit tests' tiny server, with a small message limit.
SplitServerOptions SmallMessageOptions() {
  SplitServerOptions options = test::MlpOptions();
  options.max_message_bytes = 4 << 20;
  return options;
}

grpc::ByteBuffer Bytes(const std::string& bytes) {
  const grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// Kilobytes of this process's resident memory: "VmRSS" now, "VmHWM" the peak.
int64_t MemoryKb(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

class GrpcServerTest : public ::testing::Test {
 protected:
  void SetUp() override { RouteGrpcLogsToSpdlog(); }
  void TearDown() override {
    if (grpc_server_) grpc_server_->Shutdown(0);
  }

  void Start(ListenOptions listen = {}, const SplitServerOptions& options = SmallMessageOptions()) {
    split_server_ = std::make_unique<SplitServer>(options);
    listen.address = "127.0.0.1:0";
    listen.tls = Pki().ServerFiles();
    listen.max_message_bytes = options.max_message_bytes;
    listen.allowed_clients = options.allowed_clients;
    grpc_server_ = std::make_unique<GrpcServer>(*split_server_, listen);
  }

  // A new connection with `name`'s certificate.
  std::shared_ptr<grpc::Channel> Channel(const std::string& name) const {
    return test_support::RawChannel(grpc_server_->port(), name);
  }

  std::string Join(v1::SplitLearning::Stub& stub) const {
    return test_support::RawJoin(stub, split_server_->fingerprint());
  }

  static v1::TrainRequest Batch(const std::string& session, int64_t width = 128) {
    v1::TrainRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session);
    protocol::EncodeDense(at::randn({4, width}), request.mutable_activations());
    protocol::EncodeDense(at::randint(0, 3, {4}, at::kLong), request.mutable_labels());
    return request;
  }

  // A stream that sends `messages` raw, reads whatever comes back, and returns its status.
  static grpc::Status RawStream(const std::shared_ptr<grpc::Channel>& channel, const char* path,
                                const std::vector<grpc::ByteBuffer>& messages) {
    grpc::CompletionQueue queue;
    grpc::GenericStub stub(channel);
    grpc::ClientContext context;
    const auto await = [&queue] {
      void* tag = nullptr;
      bool ok = false;
      EXPECT_TRUE(queue.Next(&tag, &ok));
      return ok;
    };
    auto call = stub.PrepareCall(&context, path, &queue);
    call->StartCall(nullptr);
    await();
    for (const grpc::ByteBuffer& message : messages) {
      call->Write(message, nullptr);
      if (!await()) break;  // the server ended the stream
      grpc::ByteBuffer reply;
      call->Read(&reply, nullptr);
      if (!await()) break;
    }
    call->WritesDone(nullptr);
    await();
    grpc::Status status;
    call->Finish(&status, nullptr);
    await();
    return status;
  }

  static grpc::ByteBuffer Serialized(const google::protobuf::Message& message) {
    return Bytes(message.SerializeAsString());
  }

  std::unique_ptr<SplitServer> split_server_;
  std::unique_ptr<GrpcServer> grpc_server_;
};

TEST_F(GrpcServerTest, SecondServerOnAnOccupiedPortThrows) {
  Start();
  SplitServer other(SmallMessageOptions());
  ListenOptions listen;
  listen.address = "127.0.0.1:" + std::to_string(grpc_server_->port());
  listen.tls = Pki().ServerFiles();
  try {
    GrpcServer second(other, listen);
    FAIL() << "a second server started on port " << grpc_server_->port();
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("address in use"), std::string::npos) << error.what();
  }
  // The first one still serves.
  auto stub = v1::SplitLearning::NewStub(Channel("st-mary"));
  EXPECT_FALSE(Join(*stub).empty());
}

TEST_F(GrpcServerTest, LimitsBelowOneMessageAreRefused) {
  ListenOptions listen;
  listen.max_client_request_bytes = 1 << 20;  // below the 4 MiB messages
  EXPECT_THROW(Start(listen), UserError);
  listen = {};
  listen.max_threads = 1;
  EXPECT_THROW(Start(listen), UserError);
}

TEST_F(GrpcServerTest, UnparseableJoinIsInvalidArgument) {
  Start();
  const auto channel = Channel("mallory");
  const grpc::Status status = test_support::RawUnary(channel, kJoinPath, kGarbage);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("cannot parse JoinRequest"), std::string::npos)
      << status.error_message();
  const GrpcServer::Stats stats = grpc_server_->stats();
  EXPECT_EQ(stats.unparseable, 1);
  EXPECT_EQ(stats.requests_handled, 1);
  EXPECT_EQ(split_server_->active_sessions(), 0u);
}

TEST_F(GrpcServerTest, UnparseableTrainMessageIsInvalidArgumentAndEndsTheSession) {
  Start();
  const auto channel = Channel("mallory");
  auto stub = v1::SplitLearning::NewStub(channel);
  const std::string session = Join(*stub);
  // A garbage stream on its own first...
  grpc::Status status = RawStream(channel, kTrainPath, {Bytes(kGarbage)});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("cannot parse TrainRequest"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(split_server_->active_sessions(), 1u);  // no session named, none ended
  // ...then after a good step on the same stream: the stream's session is released.
  status = RawStream(channel, kTrainPath, {Serialized(Batch(session)), Bytes(kGarbage)});
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_EQ(split_server_->step(), 1);
  EXPECT_TRUE(split_server_->WaitForActiveSessions(0, std::chrono::seconds(10)));
  EXPECT_EQ(grpc_server_->stats().unparseable, 2);
}

TEST_F(GrpcServerTest, TrainErrorReleasesTheSession) {
  Start();
  auto stub = v1::SplitLearning::NewStub(Channel("st-mary"));
  const std::string session = Join(*stub);
  ASSERT_EQ(split_server_->active_sessions(), 1u);
  grpc::ClientContext context;
  auto stream = stub->Train(&context);
  ASSERT_TRUE(stream->Write(Batch(session)));
  v1::TrainReply reply;
  ASSERT_TRUE(stream->Read(&reply));
  stream->Write(Batch(session, 127));  // wrong shape
  while (stream->Read(&reply)) {
  }
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_TRUE(split_server_->WaitForActiveSessions(0, std::chrono::seconds(10)))
      << split_server_->active_sessions() << " sessions still active";
  EXPECT_EQ(split_server_->step(), 1);
}

TEST_F(GrpcServerTest, StrangerFloodIsRefusedBeforeAnyRequestIsRead) {
  SplitServerOptions options = test::MlpOptions();
  options.max_message_bytes = 64 << 20;
  options.allowed_clients = {"st-mary"};
  Start({}, options);
  // A valid JoinRequest of ~60 MiB: before the fix each was received and parsed, then refused.
  v1::JoinRequest big;
  big.set_protocol_version(protocol::kProtocolVersion);
  big.set_model_fingerprint(std::string(60 << 20, 'x'));
  const grpc::ByteBuffer flood = Serialized(big);
  big.Clear();
  std::ofstream("/proc/self/clear_refs") << "5";  // peak RSS := current RSS
  const int64_t rss_before_kb = MemoryKb("VmRSS");
  const int64_t handled_before = grpc_server_->stats().requests_handled;

  constexpr int kConnections = 4, kCallsEach = 4;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<grpc::ByteBuffer> replies(kConnections * kCallsEach);
  std::vector<std::promise<grpc::Status>> done(kConnections * kCallsEach);
  for (int c = 0; c < kConnections; ++c) {
    channels.push_back(Channel("mallory"));
    stubs.push_back(std::make_unique<grpc::GenericStub>(channels.back()));
    for (int i = 0; i < kCallsEach; ++i) {
      const int index = c * kCallsEach + i;
      contexts.push_back(std::make_unique<grpc::ClientContext>());
      stubs.back()->UnaryCall(
          contexts.back().get(), kJoinPath, grpc::StubOptions(), &flood, &replies[index],
          [&done, index](grpc::Status status) { done[index].set_value(std::move(status)); });
    }
  }
  // Meanwhile an allowlisted hospital joins and trains.
  auto hospital = v1::SplitLearning::NewStub(Channel("st-mary"));
  const std::string session = Join(*hospital);
  {
    grpc::ClientContext context;
    auto stream = hospital->Train(&context);
    for (int step = 0; step < 3; ++step) {
      ASSERT_TRUE(stream->Write(Batch(session)));
      v1::TrainReply reply;
      ASSERT_TRUE(stream->Read(&reply));
    }
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }
  for (auto& call : done) {
    const grpc::Status status = call.get_future().get();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  }
  EXPECT_EQ(split_server_->step(), 3);
  const GrpcServer::Stats stats = grpc_server_->stats();
  EXPECT_EQ(stats.refused_unauthorized, kConnections * kCallsEach);
  EXPECT_EQ(stats.requests_handled, handled_before + 1 + 3);  // the hospital's Join and steps
  EXPECT_EQ(stats.unparseable, 0);
  // 16 x 60 MiB received would be 960 MiB; refused from their headers, next to nothing is read.
  const int64_t growth_mb = (MemoryKb("VmHWM") - rss_before_kb) / 1024;
  EXPECT_LT(growth_mb, 200) << "peak RSS grew by " << growth_mb << " MiB during the flood";
  std::printf("peak RSS growth during the flood: %lld MiB\n", static_cast<long long>(growth_mb));
}

TEST_F(GrpcServerTest, ClientOverItsCallLimitIsResourceExhausted) {
  ListenOptions listen;
  listen.max_calls_per_client = 2;
  Start(listen);
  const auto channel = Channel("st-mary");
  auto stub = v1::SplitLearning::NewStub(channel);
  const std::string session = Join(*stub);
  // Two streams, each with a step done: both calls are open in the service.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::TrainRequest, v1::TrainReply>>> open;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    open.push_back(stub->Train(contexts.back().get()));
    ASSERT_TRUE(open.back()->Write(Batch(session)));
    v1::TrainReply reply;
    ASSERT_TRUE(open.back()->Read(&reply));
  }
  const grpc::Status refused = RawStream(channel, kTrainPath, {Serialized(Batch(session))});
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("per-client call limit"), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(grpc_server_->stats().refused_limits, 1);
  EXPECT_EQ(split_server_->step(), 2);
  // Another hospital is not held back by st-mary's limit.
  auto other = v1::SplitLearning::NewStub(Channel("riverside"));
  EXPECT_FALSE(Join(*other).empty());
  // Closing one stream frees its place.
  open.back()->WritesDone();
  EXPECT_TRUE(open.back()->Finish().ok());
  EXPECT_TRUE(RawStream(channel, kTrainPath, {Serialized(Batch(session))}).ok());
  EXPECT_EQ(split_server_->step(), 3);
  open.front()->WritesDone();
  EXPECT_TRUE(open.front()->Finish().ok());
}

TEST_F(GrpcServerTest, CallsBeyondTheThreadCapAreResourceExhausted) {
  ListenOptions listen;
  listen.max_threads = 4;
  Start(listen);
  // Streams from different hospitals (no per-client limit in play), each holding a thread.
  struct OpenStream {
    std::unique_ptr<v1::SplitLearning::Stub> stub;
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::TrainRequest, v1::TrainReply>> stream;
  };
  std::vector<OpenStream> open;
  grpc::Status refused;
  for (int i = 0; i < 8 && refused.ok(); ++i) {
    OpenStream s;
    s.stub = v1::SplitLearning::NewStub(Channel("hospital-" + std::to_string(i)));
    grpc::ClientContext join_context;
    v1::JoinRequest join;
    join.set_protocol_version(protocol::kProtocolVersion);
    join.set_model_fingerprint(split_server_->fingerprint());
    v1::JoinReply joined;
    refused = s.stub->Join(&join_context, join, &joined);
    if (!refused.ok()) break;
    s.context = std::make_unique<grpc::ClientContext>();
    s.stream = s.stub->Train(s.context.get());
    v1::TrainReply reply;
    if (s.stream->Write(Batch(joined.session_id())) && s.stream->Read(&reply)) {
      open.push_back(std::move(s));
    } else {
      refused = s.stream->Finish();
    }
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_GE(open.size(), 1u);
  EXPECT_LT(open.size(), 4u);
  for (OpenStream& s : open) {
    s.stream->WritesDone();
    EXPECT_TRUE(s.stream->Finish().ok());
  }
}

}  // namespace
}  // namespace cleave::server
