// FailoverLink over scripted servers: the first reachable server is joined, requests carry its
// session, an UNAVAILABLE server is left for the next one (joined with the same request, Train
// stream reopened, the call retried once), other errors pass through, and when none answers
// the error says so.
#include "cleave/client/failover_link.h"

#include <gtest/gtest.h>

#include <map>

#include "cleave/core/error.h"

namespace cleave::client {
namespace {

using protocol::StatusError;

// One scripted server: `down` makes every call UNAVAILABLE; `refuse` makes steps
// INVALID_ARGUMENT.
struct Server {
  bool down = false;
  bool refuse = false;
  bool steps_down = false;  // only the steps are UNAVAILABLE
  int joins = 0;
  int streams = 0;
  std::vector<std::string> step_sessions;
  std::string last_join_name;
};

class ScriptedLink final : public protocol::SplitLink {
 public:
  ScriptedLink(Server& server, std::string name) : server_(server), name_(std::move(name)) {}
  v1::JoinReply Join(const v1::JoinRequest& request) override {
    Check();
    ++server_.joins;
    server_.last_join_name = request.model_description();
    v1::JoinReply reply;
    reply.set_session_id(name_ + "-session-" + std::to_string(server_.joins));
    return reply;
  }
  void OpenTrainStream() override {
    Check();
    ++server_.streams;
  }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    Check();
    if (server_.steps_down) throw StatusError(grpc::StatusCode::UNAVAILABLE, name_ + " broke");
    if (server_.refuse) throw StatusError(grpc::StatusCode::INVALID_ARGUMENT, "refused");
    server_.step_sessions.push_back(request.session_id());
    return v1::TrainReply();
  }
  void CloseTrainStream() override {}
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest&) override {
    Check();
    return v1::EvaluateReply();
  }
  void Leave(const v1::LeaveRequest&) override { Check(); }
  v1::SyncReply Sync(const v1::SyncRequest&) override { return v1::SyncReply(); }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest&) override { return v1::UpdateReply(); }

 private:
  void Check() const {
    if (server_.down) throw StatusError(grpc::StatusCode::UNAVAILABLE, name_ + " is down");
  }
  Server& server_;
  std::string name_;
};

struct Servers {
  std::map<std::string, Server> by_name{{"a:1", {}}, {"b:2", {}}};
  FailoverLink Link() {
    return FailoverLink({"a:1", "b:2"}, [this](const std::string& target) {
      return std::make_unique<ScriptedLink>(by_name.at(target), target);
    });
  }
};

v1::JoinRequest Hospital() {
  v1::JoinRequest request;
  request.set_model_description("hospital-7");
  return request;
}

v1::TrainRequest Step(const std::string& session) {
  v1::TrainRequest request;
  request.set_session_id(session);
  return request;
}

TEST(FailoverLink, AnUnavailableServerIsLeftForTheNextWithTheSameJoin) {
  Servers servers;
  FailoverLink link = servers.Link();
  const std::string session = link.Join(Hospital()).session_id();
  EXPECT_EQ(session, "a:1-session-1");
  link.OpenTrainStream();
  link.TrainStep(Step(session));
  servers.by_name["a:1"].down = true;
  link.TrainStep(Step(session));  // the caller still holds a's session
  EXPECT_EQ(link.target(), "b:2");
  EXPECT_EQ(link.failovers(), 1);
  const Server& b = servers.by_name["b:2"];
  EXPECT_EQ(b.joins, 1);
  EXPECT_EQ(b.last_join_name, "hospital-7");
  EXPECT_EQ(b.streams, 1);  // the stream was reopened there
  EXPECT_EQ(b.step_sessions, std::vector<std::string>{"b:2-session-1"});
  EXPECT_EQ(servers.by_name["a:1"].step_sessions, std::vector<std::string>{"a:1-session-1"});
}

TEST(FailoverLink, JoinSkipsAnUnreachableFirstServer) {
  Servers servers;
  servers.by_name["a:1"].down = true;
  FailoverLink link = servers.Link();
  EXPECT_EQ(link.Join(Hospital()).session_id(), "b:2-session-1");
  link.Evaluate(v1::EvaluateRequest());
  EXPECT_EQ(link.failovers(), 0);
}

TEST(FailoverLink, WhenNoServerAnswersTheErrorSaysSo) {
  Servers servers;
  FailoverLink link = servers.Link();
  link.Join(Hospital());
  servers.by_name["a:1"].down = true;
  servers.by_name["b:2"].down = true;
  try {
    link.TrainStep(Step("x"));
    ADD_FAILURE() << "a step went through with every server down";
  } catch (const StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(std::string(error.what()).find("none of the 2 servers"), std::string::npos)
        << error.what();
  }
}

TEST(FailoverLink, AServerThatFailsDuringTheRetryIsLeftToo) {
  Servers servers;
  servers.by_name["c:3"] = {};
  FailoverLink link({"a:1", "b:2", "c:3"}, [&](const std::string& target) {
    return std::make_unique<ScriptedLink>(servers.by_name.at(target), target);
  });
  link.Join(Hospital());
  link.OpenTrainStream();
  servers.by_name["a:1"].down = true;
  servers.by_name["b:2"].steps_down = true;  // b takes the Join, then fails the step
  link.TrainStep(Step("x"));
  EXPECT_EQ(link.target(), "c:3");
  EXPECT_EQ(link.failovers(), 2);
  EXPECT_EQ(servers.by_name["b:2"].joins, 1);
  EXPECT_EQ(servers.by_name["c:3"].step_sessions, std::vector<std::string>{"c:3-session-1"});
}

TEST(FailoverLink, OtherErrorsPassThroughWithoutFailover) {
  Servers servers;
  FailoverLink link = servers.Link();
  link.Join(Hospital());
  servers.by_name["a:1"].refuse = true;
  EXPECT_THROW(link.TrainStep(Step("x")), StatusError);
  EXPECT_EQ(link.target(), "a:1");
  EXPECT_EQ(servers.by_name["b:2"].joins, 0);
}

TEST(FailoverLink, ServerListsAreParsed) {
  EXPECT_EQ(ParseServerList("a:1,b:2"), (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(ParseServerList("a:1"), std::vector<std::string>{"a:1"});
  EXPECT_THROW(ParseServerList("a:1,,b:2"), UserError);
  EXPECT_THROW(ParseServerList(""), UserError);
}

}  // namespace
}  // namespace cleave::client
