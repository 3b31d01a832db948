// A link over a list of servers that are replicas of one server (cleave-server --replicas):
// calls go to the current one; when it is unavailable (unreachable, or its replica group ended:
// UNAVAILABLE) the link joins the next one with the hospital's Join request, reopens the Train
// stream if one was open, and retries the call there (each server at most once per call).
// Requests carry the current server's session id (the one the caller holds from the first Join
// is replaced). A failover tries every server once, starting after the one that failed; when
// none answers, the last error is thrown (UNAVAILABLE). Other errors (refusals, mismatches)
// pass through untouched.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cleave/protocol/split_link.h"
#include "cleave/protocol/status_error.h"

namespace cleave::client {

// "host:port,host:port" as addresses (UserError naming --server for an empty one).
std::vector<std::string> ParseServerList(const std::string& text);

class FailoverLink final : public protocol::SplitLink {
 public:
  // Makes the link to one server (a GrpcLink in cleave-client).
  using Connect = std::function<std::unique_ptr<protocol::SplitLink>(const std::string& target)>;
  FailoverLink(std::vector<std::string> targets, Connect connect);

  v1::JoinReply Join(const v1::JoinRequest& request) override;
  void OpenTrainStream() override;
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override;
  void CloseTrainStream() override;
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override;
  void Leave(const v1::LeaveRequest& request) override;
  v1::SyncReply Sync(const v1::SyncRequest& request) override;
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override;

  const std::string& target() const { return targets_[current_]; }
  int failovers() const { return failovers_; }

 private:
  // Joins targets first, first+1, ... (each once, wrapping); throws the last UNAVAILABLE.
  v1::JoinReply JoinFrom(size_t first);
  // `call` on the current link with `request` (its session id replaced); again on the next
  // server after an UNAVAILABLE, until every server had its chance.
  template <typename Request, typename Call>
  auto Retry(Request request, Call&& call);

  std::vector<std::string> targets_;
  Connect connect_;
  std::unique_ptr<protocol::SplitLink> link_;
  size_t current_ = 0;
  v1::JoinRequest join_;
  std::string session_;
  bool joined_ = false;
  bool stream_open_ = false;
  int failovers_ = 0;
};

}  // namespace cleave::client
