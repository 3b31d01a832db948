// Private set intersection over loopback gRPC with mutual TLS (cleave-server's relay, each party a
// RunPsiParty with its own certificate): two and three parties get exactly the shared ids, and
// nothing a party receives on the wire maps to an id outside the intersection.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cleave/client/psi_party.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/version.h"
#include "cleave/psi/blinding_key.h"
#include "cleave/psi/hash_to_curve.h"
#include "cleave/server/grpc_server.h"
#include "cleave/server/psi_relay.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/test_pki.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using test_support::Pki;

// A server with the relay for `parties`, on a free loopback port.
struct PsiServer {
  explicit PsiServer(int parties) {
    server::SplitServerOptions options;
    options.model = test_support::MlpSpec(4, {8}, 2);
    split = std::make_unique<server::SplitServer>(options);
    server::ListenOptions listen;
    listen.address = "127.0.0.1:0";
    listen.tls = Pki().ServerFiles();
    listen.psi_parties = parties;
    grpc = std::make_unique<server::GrpcServer>(*split, listen);
  }
  client::ConnectOptions Connect(const std::string& name) const {
    client::ConnectOptions connect;
    connect.target = "localhost:" + std::to_string(grpc->port());
    connect.tls = Pki().ClientFiles(name);
    connect.connect_timeout_seconds = 10;
    return connect;
  }
  std::unique_ptr<server::SplitServer> split;
  std::unique_ptr<server::GrpcServer> grpc;
};

// The gRPC transport, keeping every point the party received from the server.
class RecordingTransport final : public client::PsiTransport {
 public:
  explicit RecordingTransport(const client::ConnectOptions& connect) : inner_(connect) {}
  v1::PsiSubmitReply Submit(const v1::PsiSubmitRequest& request) override {
    return inner_.Submit(request);
  }
  v1::PsiAwaitReply Await(const v1::PsiAwaitRequest& request) override {
    v1::PsiAwaitReply reply = inner_.Await(request);
    const std::string& points = reply.blind().points();
    for (size_t at = 0; at + psi::kPointBytes <= points.size(); at += psi::kPointBytes) {
      received.push_back(points.substr(at, psi::kPointBytes));
    }
    return reply;
  }
  std::vector<std::string> received;

 private:
  client::GrpcPsiTransport inner_;
};

std::vector<std::string> Ids(const std::string& prefix, int from, int to) {
  std::vector<std::string> ids;
  for (int i = from; i < to; ++i) ids.push_back(prefix + std::to_string(100 + i));
  return ids;
}

struct PartyRun {
  client::PsiOutcome outcome;
  std::vector<std::string> received;
};

std::vector<PartyRun> RunOverGrpc(const PsiServer& server,
                                  const std::vector<std::vector<std::string>>& sets,
                                  const std::vector<psi::BlindingKey>& keys) {
  std::vector<std::future<PartyRun>> running;
  for (size_t i = 0; i < sets.size(); ++i) {
    running.push_back(std::async(std::launch::async, [&, i] {
      RecordingTransport transport(server.Connect("party-" + std::to_string(i)));
      client::PsiPartyOptions options;
      options.timeout = std::chrono::seconds(60);
      PartyRun run;
      run.outcome = client::RunPsiParty(transport, sets[i], options, keys[i]);
      run.received = transport.received;
      return run;
    }));
  }
  std::vector<PartyRun> runs;
  for (auto& party : running) runs.push_back(party.get());
  return runs;
}

class PsiOverGrpcTest : public ::testing::TestWithParam<int> {};

TEST_P(PsiOverGrpcTest, SharedIdsAndNoOtherIdInAnyMessage) {
  const int n = GetParam();
  // Every party holds 100..139; each also has ids of its own, and the first two share 40 more
  // that the others lack.
  std::vector<std::vector<std::string>> sets;
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> set = Ids("patient-", 0, 40);
    for (const auto& id : Ids("own-" + std::to_string(i) + "-", 0, 30)) set.push_back(id);
    if (i < 2) {
      for (const auto& id : Ids("pair-", 0, 40)) set.push_back(id);
    }
    sets.push_back(set);
  }
  std::vector<psi::BlindingKey> keys;
  for (int i = 0; i < n; ++i) keys.push_back(psi::BlindingKey::Random());
  const PsiServer server(n);
  const std::vector<PartyRun> runs = RunOverGrpc(server, sets, keys);
  std::vector<std::string> expected = Ids("patient-", 0, 40);
  if (n == 2) {
    for (const auto& id : Ids("pair-", 0, 40)) expected.push_back(id);
  }
  std::sort(expected.begin(), expected.end());
  std::set<std::string> universe;
  for (const auto& set : sets) universe.insert(set.begin(), set.end());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(runs[i].outcome.shared_ids, expected) << "party " << i;
    EXPECT_EQ(runs[i].outcome.sets_blinded, n - 1);
    // Everything this party received, against every id it might guess: hashed, or hashed and
    // blinded with its own key. Nothing maps.
    const std::set<std::string> seen(runs[i].received.begin(), runs[i].received.end());
    size_t others = 0;  // it blinded every other party's whole set
    for (int j = 0; j < n; ++j) others += j == i ? 0 : sets[j].size();
    EXPECT_EQ(runs[i].received.size(), others) << "party " << i;
    EXPECT_EQ(seen.size(), others);
    for (const std::string& id : universe) {
      const std::string hashed = psi::HashToCurve(id);
      EXPECT_EQ(seen.count(hashed) + seen.count(keys[i].Blind({hashed})[0]), 0u) << id;
    }
  }
  EXPECT_EQ(server.grpc->psi_relay()->last_intersection_size(),
            static_cast<int64_t>(expected.size()));
}

INSTANTIATE_TEST_SUITE_P(Parties, PsiOverGrpcTest, ::testing::Values(2, 3));

TEST(PsiOverGrpc, AServerWithoutTheRelayIsUnimplementedAndAFullRingRefuses) {
  server::SplitServerOptions options;
  options.model = test_support::MlpSpec(4, {8}, 2);
  server::SplitServer split(options);
  server::ListenOptions listen;
  listen.address = "127.0.0.1:0";
  listen.tls = Pki().ServerFiles();
  server::GrpcServer plain(split, listen);
  client::ConnectOptions connect;
  connect.target = "localhost:" + std::to_string(plain.port());
  connect.tls = Pki().ClientFiles("lab");
  client::GrpcPsiTransport transport(connect);
  try {
    client::RunPsiParty(transport, {"a"});
    FAIL() << "no error";
  } catch (const protocol::StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::UNIMPLEMENTED);
  }

  const PsiServer two(2);
  v1::PsiSubmitRequest own;
  own.set_protocol_version(protocol::kProtocolVersion);
  own.mutable_set()->set_hops(1);
  own.mutable_set()->set_points(psi::HashToCurve("a"));
  client::GrpcPsiTransport first(two.Connect("lab")), second(two.Connect("radiology")),
      third(two.Connect("icu"));
  first.Submit(own);
  second.Submit(own);
  try {
    third.Submit(own);
    FAIL() << "no error";
  } catch (const protocol::StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_NE(std::string(error.what()).find("full"), std::string::npos);
  }
}

}  // namespace
}  // namespace cleave
