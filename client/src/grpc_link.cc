#include "cleave/client/grpc_link.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>

#include <chrono>

#include "cleave/client/grpc_channel.h"
#include "cleave/core/error.h"
#include "cleave/protocol/cleave.grpc.pb.h"
#include "cleave/protocol/status_error.h"

namespace cleave::client {

using protocol::StatusError;
using protocol::ThrowIfError;

struct GrpcLink::Impl {
  std::string target;
  int connect_timeout_seconds = 30;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::SplitLearning::Stub> stub;
  std::unique_ptr<grpc::ClientContext> stream_context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::TrainRequest, v1::TrainReply>> stream;

  // Ends the stream and turns its final status into an exception.
  [[noreturn]] void FailStream(const char* what) {
    grpc::Status status = stream->Finish();
    stream.reset();
    stream_context.reset();
    ThrowIfError(status, what);
    throw StatusError(grpc::StatusCode::UNAVAILABLE,
                      std::string(what) + " failed: the server closed the Train stream");
  }
};

GrpcLink::GrpcLink(const ConnectOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->target = options.target;
  impl_->connect_timeout_seconds = options.connect_timeout_seconds;
  impl_->channel = MakeChannel(options);
  impl_->stub = v1::SplitLearning::NewStub(impl_->channel);
}

GrpcLink::~GrpcLink() {
  if (impl_->stream) {
    impl_->stream_context->TryCancel();
    impl_->stream->Finish();
  }
}

v1::JoinReply GrpcLink::Join(const v1::JoinRequest& request) {
  grpc::ClientContext context;
  // The server may still be starting: wait for the channel instead of failing at once.
  context.set_wait_for_ready(true);
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(impl_->connect_timeout_seconds));
  v1::JoinReply reply;
  const grpc::Status status = impl_->stub->Join(&context, request, &reply);
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
      status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    throw StatusError(
        grpc::StatusCode::UNAVAILABLE,
        "cannot reach cleave-server at " + impl_->target + " within " +
            std::to_string(impl_->connect_timeout_seconds) +
            " s (is it running? do the certificates match?): " + status.error_message());
  }
  ThrowIfError(status, "Join");
  return reply;
}

void GrpcLink::OpenTrainStream() {
  CLEAVE_ENFORCE(!impl_->stream, "a Train stream is already open");
  impl_->stream_context = std::make_unique<grpc::ClientContext>();
  impl_->stream = impl_->stub->Train(impl_->stream_context.get());
}

v1::TrainReply GrpcLink::TrainStep(const v1::TrainRequest& request) {
  CLEAVE_ENFORCE(impl_->stream, "no Train stream is open");
  if (!impl_->stream->Write(request)) impl_->FailStream("Train");
  v1::TrainReply reply;
  if (!impl_->stream->Read(&reply)) impl_->FailStream("Train");
  return reply;
}

void GrpcLink::CloseTrainStream() {
  if (!impl_->stream) return;
  impl_->stream->WritesDone();
  const grpc::Status status = impl_->stream->Finish();
  impl_->stream.reset();
  impl_->stream_context.reset();
  ThrowIfError(status, "Train");
}

void GrpcLink::AbortTrainStream() {
  if (!impl_->stream) return;
  impl_->stream_context->TryCancel();
  impl_->stream->Finish();
  impl_->stream.reset();
  impl_->stream_context.reset();
}

v1::EvaluateReply GrpcLink::Evaluate(const v1::EvaluateRequest& request) {
  grpc::ClientContext context;
  v1::EvaluateReply reply;
  ThrowIfError(impl_->stub->Evaluate(&context, request, &reply), "Evaluate");
  return reply;
}

void GrpcLink::Leave(const v1::LeaveRequest& request) {
  grpc::ClientContext context;
  v1::LeaveReply reply;
  ThrowIfError(impl_->stub->Leave(&context, request, &reply), "Leave");
}

v1::SyncReply GrpcLink::Sync(const v1::SyncRequest& request) {
  grpc::ClientContext context;
  // The server holds the call up to wait_ms; allow that plus the connect timeout.
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(request.wait_ms()) +
                       std::chrono::seconds(impl_->connect_timeout_seconds));
  v1::SyncReply reply;
  ThrowIfError(impl_->stub->Sync(&context, request, &reply), "Sync");
  return reply;
}

v1::UpdateReply GrpcLink::SubmitUpdate(const v1::UpdateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(impl_->connect_timeout_seconds));
  v1::UpdateReply reply;
  ThrowIfError(impl_->stub->SubmitUpdate(&context, request, &reply), "SubmitUpdate");
  return reply;
}

}  // namespace cleave::client
