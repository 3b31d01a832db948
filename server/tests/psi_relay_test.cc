// The PSI relay as a plain class: parties (RunPsiParty, in threads) over an in-process transport
// get the intersection; what the relay refuses, and how it hands out work.
#include "cleave/server/psi_relay.h"

#include <gtest/gtest.h>

#include <future>
#include <string>
#include <vector>

#include "cleave/client/psi_party.h"
#include "cleave/core/error.h"
#include "cleave/protocol/version.h"
#include "cleave/psi/hash_to_curve.h"
#include "cleave/server/refusal.h"

namespace cleave::server {
namespace {

// A party's calls straight into the relay, under its identity.
class RelayTransport final : public client::PsiTransport {
 public:
  RelayTransport(PsiRelay& relay, std::string identity)
      : relay_(relay), identity_(std::move(identity)) {}
  v1::PsiSubmitReply Submit(const v1::PsiSubmitRequest& request) override {
    return relay_.Submit(identity_, request);
  }
  v1::PsiAwaitReply Await(const v1::PsiAwaitRequest& request) override {
    return relay_.Await(identity_, request);
  }

 private:
  PsiRelay& relay_;
  std::string identity_;
};

std::vector<std::string> Range(int from, int to) {
  std::vector<std::string> ids;
  for (int i = from; i < to; ++i) ids.push_back("patient-" + std::to_string(1000 + i));
  return ids;
}

PsiRelayOptions Options(int parties) {
  PsiRelayOptions options;
  options.parties = parties;
  options.max_wait = std::chrono::milliseconds(2000);
  return options;
}

std::vector<client::PsiOutcome> RunParties(PsiRelay& relay,
                                           const std::vector<std::vector<std::string>>& sets) {
  std::vector<std::future<client::PsiOutcome>> running;
  for (size_t i = 0; i < sets.size(); ++i) {
    running.push_back(std::async(std::launch::async, [&relay, &sets, i] {
      RelayTransport transport(relay, "party-" + std::to_string(i));
      client::PsiPartyOptions options;
      options.timeout = std::chrono::seconds(60);
      return client::RunPsiParty(transport, sets[i], options);
    }));
  }
  std::vector<client::PsiOutcome> outcomes;
  for (auto& party : running) outcomes.push_back(party.get());
  return outcomes;
}

TEST(PsiRelayTest, TwoAndThreePartiesGetTheIntersectionAndTheRelayResets) {
  PsiRelay two(Options(2));
  auto outcomes = RunParties(two, {Range(0, 50), Range(20, 90)});
  for (const auto& outcome : outcomes) {
    EXPECT_EQ(outcome.shared_ids, Range(20, 50));
    EXPECT_EQ(outcome.parties, 2u);
    EXPECT_EQ(outcome.sets_blinded, 1);
  }
  EXPECT_EQ(two.last_intersection_size(), 30);
  EXPECT_EQ(two.runs_completed(), 1);
  outcomes = RunParties(two, {Range(0, 5), Range(5, 10)});  // a second run, disjoint sets
  EXPECT_TRUE(outcomes[0].shared_ids.empty());
  EXPECT_EQ(two.runs_completed(), 2);

  PsiRelay three(Options(3));
  outcomes = RunParties(three, {Range(0, 50), Range(20, 90), Range(40, 45)});
  for (const auto& outcome : outcomes) {
    EXPECT_EQ(outcome.shared_ids, Range(40, 45));
    EXPECT_EQ(outcome.sets_blinded, 2);
  }
}

v1::PsiSubmitRequest OwnSet(size_t points, uint32_t hops = 1) {
  v1::PsiSubmitRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.mutable_set()->set_hops(hops);
  std::string bytes;
  for (size_t i = 0; i < points; ++i) bytes += psi::HashToCurve("x" + std::to_string(i));
  request.mutable_set()->set_points(bytes);
  return request;
}

v1::PsiAwaitRequest AwaitRequest(uint32_t max_wait_ms = 1) {
  v1::PsiAwaitRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_max_wait_ms(max_wait_ms);
  return request;
}

RefusalKind KindOf(const std::function<void()>& call) {
  try {
    call();
  } catch (const Refusal& refusal) {
    return refusal.kind();
  }
  ADD_FAILURE() << "no refusal";
  return RefusalKind::kOutOfBounds;
}

TEST(PsiRelayTest, RefusesWhatDoesNotFit) {
  PsiRelay relay(Options(2));
  EXPECT_EQ(KindOf([&] { relay.Await("a", AwaitRequest()); }), RefusalKind::kMismatch);
  v1::PsiSubmitRequest old_version = OwnSet(1);
  old_version.set_protocol_version(protocol::kProtocolVersion + 1);
  EXPECT_EQ(KindOf([&] { relay.Submit("a", old_version); }), RefusalKind::kMismatch);
  v1::PsiSubmitRequest ragged = OwnSet(2);
  ragged.mutable_set()->mutable_points()->pop_back();
  EXPECT_THROW(relay.Submit("a", ragged), InvalidInput);
  EXPECT_THROW(relay.Submit("a", OwnSet(2, 2)), InvalidInput);  // an own set has hops 1
  PsiRelayOptions small = Options(2);
  small.max_points = 3;
  PsiRelay limited(small);
  EXPECT_THROW(limited.Submit("a", OwnSet(4)), InvalidInput);

  relay.Submit("a", OwnSet(3));
  EXPECT_THROW(relay.Submit("a", OwnSet(3)), InvalidInput);  // nothing was handed to a
  relay.Submit("b", OwnSet(2));
  EXPECT_EQ(KindOf([&] { relay.Submit("c", OwnSet(1)); }), RefusalKind::kNotAllowed);  // full
  // b is handed a's set (owner 0, hops 1); the same again if it asks again (a lost reply).
  const v1::PsiAwaitReply handed = relay.Await("b", AwaitRequest());
  ASSERT_TRUE(handed.has_blind());
  EXPECT_EQ(handed.blind().owner(), 0u);
  EXPECT_EQ(handed.blind().hops(), 1u);
  EXPECT_EQ(handed.blind().points().size(), 3 * psi::kPointBytes);
  EXPECT_EQ(handed.party(), 1u);
  EXPECT_EQ(relay.Await("b", AwaitRequest()).blind().points(), handed.blind().points());
  // An answer that does not match what was handed out.
  v1::PsiSubmitRequest wrong = OwnSet(2, 2);
  wrong.mutable_set()->set_owner(0);
  EXPECT_THROW(relay.Submit("b", wrong), InvalidInput);
  // Nothing for a yet besides b's set; once a answers, a has no work until the end.
  const v1::PsiAwaitReply for_a = relay.Await("a", AwaitRequest());
  ASSERT_TRUE(for_a.has_blind());
  EXPECT_EQ(for_a.blind().owner(), 1u);
}

TEST(PsiRelayTest, AnAbandonedRunGivesWayToANewParty) {
  auto now = std::chrono::steady_clock::time_point{};
  PsiRelayOptions options = Options(2);
  options.now = [&now] { return now; };
  PsiRelay relay(options);
  relay.Submit("a", OwnSet(2));
  relay.Submit("b", OwnSet(2));
  now += std::chrono::minutes(9);
  EXPECT_EQ(KindOf([&] { relay.Submit("c", OwnSet(1)); }), RefusalKind::kNotAllowed);
  now += std::chrono::minutes(2);  // 11 minutes since b's set; c's refused call was no progress
  EXPECT_EQ(relay.Submit("c", OwnSet(1)).party(), 0u);  // a new run
  EXPECT_EQ(KindOf([&] { relay.Await("a", AwaitRequest()); }), RefusalKind::kMismatch);
  EXPECT_FALSE(relay.Await("c", AwaitRequest()).has_blind());  // a's and b's sets are gone
}

TEST(PsiRelayTest, NothingYetIsAnEmptyReplyAndOptionsAreChecked) {
  PsiRelay relay(Options(3));
  relay.Submit("a", OwnSet(1));
  const v1::PsiAwaitReply reply = relay.Await("a", AwaitRequest(1));
  EXPECT_FALSE(reply.has_blind());
  EXPECT_FALSE(reply.has_result());
  EXPECT_EQ(reply.parties(), 3u);
  EXPECT_THROW(PsiRelay(Options(1)), UserError);
  PsiRelayOptions no_wait = Options(2);
  no_wait.max_wait = std::chrono::milliseconds(0);
  EXPECT_THROW(PsiRelay{no_wait}, UserError);
}

}  // namespace
}  // namespace cleave::server
