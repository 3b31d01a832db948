#include "cleave/client/failover_link.h"

#include <spdlog/spdlog.h>

#include "cleave/core/error.h"

namespace cleave::client {

using protocol::StatusError;

std::vector<std::string> ParseServerList(const std::string& text) {
  std::vector<std::string> targets;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string target = text.substr(start, comma - start);
    CLEAVE_CHECK_USER(!target.empty(), "--server: an empty address in '", text, "'");
    targets.push_back(target);
    if (comma == std::string::npos) return targets;
    start = comma + 1;
  }
}

FailoverLink::FailoverLink(std::vector<std::string> targets, Connect connect)
    : targets_(std::move(targets)), connect_(std::move(connect)) {
  CLEAVE_ENFORCE(!targets_.empty(), "no server to connect to");
}

v1::JoinReply FailoverLink::JoinFrom(size_t first) {
  std::string last_error;
  for (size_t tried = 0; tried < targets_.size(); ++tried) {
    const size_t index = (first + tried) % targets_.size();
    try {
      std::unique_ptr<protocol::SplitLink> link = connect_(targets_[index]);
      v1::JoinReply reply = link->Join(join_);
      if (stream_open_) link->OpenTrainStream();
      link_ = std::move(link);
      current_ = index;
      session_ = reply.session_id();
      joined_ = true;
      return reply;
    } catch (const StatusError& error) {
      if (error.code() != grpc::StatusCode::UNAVAILABLE) throw;
      spdlog::warn("server {} unavailable: {}", targets_[index], error.what());
      last_error = error.what();
    }
  }
  throw StatusError(grpc::StatusCode::UNAVAILABLE,
                    detail::Concat("none of the ", targets_.size(),
                                   " servers answered; the last: ", last_error));
}

v1::JoinReply FailoverLink::Join(const v1::JoinRequest& request) {
  join_ = request;
  return JoinFrom(current_);
}

template <typename Request, typename Call>
auto FailoverLink::Retry(Request request, Call&& call) {
  CLEAVE_ENFORCE(joined_, "a call before Join");
  for (size_t failovers = 0;; ++failovers) {
    request.set_session_id(session_);
    try {
      return call(*link_, request);
    } catch (const StatusError& error) {
      // Each server gets one chance per call: a group that went away everywhere ends it.
      if (error.code() != grpc::StatusCode::UNAVAILABLE || failovers + 1 >= targets_.size()) {
        throw;
      }
      spdlog::warn("server {} unavailable ({}); joining the next one", target(), error.what());
      const std::string failed = target();
      JoinFrom(current_ + 1);
      ++failovers_;
      spdlog::info("joined {} after {} failed (session {})", target(), failed,
                   session_.substr(0, 8));
    }
  }
}

void FailoverLink::OpenTrainStream() {
  CLEAVE_ENFORCE(joined_, "a Train stream before Join");
  link_->OpenTrainStream();
  stream_open_ = true;
}

v1::TrainReply FailoverLink::TrainStep(const v1::TrainRequest& request) {
  return Retry(request, [](protocol::SplitLink& link, const v1::TrainRequest& r) {
    return link.TrainStep(r);
  });
}

void FailoverLink::CloseTrainStream() {
  stream_open_ = false;
  if (link_) link_->CloseTrainStream();
}

v1::EvaluateReply FailoverLink::Evaluate(const v1::EvaluateRequest& request) {
  return Retry(request, [](protocol::SplitLink& link, const v1::EvaluateRequest& r) {
    return link.Evaluate(r);
  });
}

void FailoverLink::Leave(const v1::LeaveRequest& request) {
  Retry(request, [](protocol::SplitLink& link, const v1::LeaveRequest& r) {
    link.Leave(r);
    return 0;
  });
}

v1::SyncReply FailoverLink::Sync(const v1::SyncRequest& request) {
  return Retry(request,
               [](protocol::SplitLink& link, const v1::SyncRequest& r) { return link.Sync(r); });
}

v1::UpdateReply FailoverLink::SubmitUpdate(const v1::UpdateRequest& request) {
  return Retry(request, [](protocol::SplitLink& link, const v1::UpdateRequest& r) {
    return link.SubmitUpdate(r);
  });
}

}  // namespace cleave::client
