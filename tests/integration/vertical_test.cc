// Vertical split learning end to end: two and three parties (SplitTrainers, each on its own
// thread with its own certificate) hold different columns of the same samples and train one
// model through a real SplitServer, over loopback gRPC with mutual TLS and in process; a party
// that never sends makes the others' step fail with a clear status, and the server serves on.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <future>
#include <numeric>
#include <thread>

#include "cleave/client/split_trainer.h"
#include "cleave/client/vertical_features.h"
#include "cleave/protocol/status_error.h"
#include "cleave/server/split_server.h"
#include "cleave/test_support/script_halves.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/test_server.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

using client::SplitTrainer;
using client::TrainerOptions;
using test_support::LinkKind;
using test_support::TestServer;

constexpr int64_t kFeatures = 12;
constexpr int64_t kWidth = 8;  // each party's cut-layer units

// The parties' column ranges of the 12 features.
std::vector<std::string> Columns(int parties) {
  return parties == 2 ? std::vector<std::string>{"0:6", "6:12"}
                      : std::vector<std::string>{"0:4", "4:8", "8:12"};
}

server::SplitServerOptions VerticalServer(int parties, std::chrono::milliseconds timeout) {
  server::SplitServerOptions options;
  options.model = test_support::MlpSpec(kFeatures, {kWidth * parties, 16}, 3);
  options.max_batch = 64;
  options.config = SplitConfig::kVertical;
  options.vertical.parties = parties;
  options.vertical.join = server::JoinMode::kConcat;
  options.vertical.label_holder = parties - 1;  // not party 0: any party may hold them
  options.vertical.party_timeout = timeout;
  return options;
}

TrainerOptions Party(int party, int64_t columns) {
  TrainerOptions options;
  options.model = test_support::MlpSpec(columns, {kWidth, 16}, 3);
  options.seed = 100 + party;  // its own weights; the batch order comes from the server
  options.batch_size = 32;
  options.max_steps_per_epoch = 150;
  options.config = SplitConfig::kVertical;
  options.party = party;
  return options;
}

Dataset PartOf(const Dataset& data, const std::string& columns) {
  client::FeaturePartFlags flags;
  flags.columns = columns;
  return client::ApplyFeaturePart(data, flags, /*align=*/false);
}

double Mean(const std::vector<double>& values, size_t from, size_t count) {
  return std::accumulate(values.begin() + from, values.begin() + from + count, 0.0) / count;
}

class VerticalTrainingTest : public ::testing::TestWithParam<std::tuple<LinkKind, int>> {};

TEST_P(VerticalTrainingTest, PartiesTrainOneModelAndTheLabelHolderEvaluatesIt) {
  const auto [kind, parties] = GetParam();
  TestServer server(VerticalServer(parties, std::chrono::milliseconds(20000)), kind);
  const Dataset train = test_support::LinearRuleData(4800, 1, kFeatures);
  const Dataset test = test_support::LinearRuleData(1000, 2, kFeatures);
  std::vector<std::future<client::EvalStats>> results;
  std::vector<std::vector<double>> losses(parties);
  for (int p = 0; p < parties; ++p) {
    results.push_back(std::async(std::launch::async, [&, p] {
      const Dataset mine = PartOf(train, Columns(parties)[p]);
      auto link = server.Link("party-" + std::to_string(p));
      SplitTrainer trainer(Party(p, mine.inputs.size(1)), *link);
      const v1::JoinReply joined = trainer.Join(mine.size());
      EXPECT_EQ(joined.server().config(), "vertical");
      for (int epoch = 0; epoch < 2; ++epoch) trainer.TrainEpoch(mine, epoch, 2, nullptr);
      losses[p] = trainer.step_losses();
      const client::EvalStats eval = trainer.Evaluate(PartOf(test, Columns(parties)[p]), 250);
      trainer.Leave();
      return eval;
    }));
  }
  std::vector<client::EvalStats> evals;
  for (auto& result : results) evals.push_back(result.get());
  EXPECT_EQ(server.split_server().step(), 300);  // one step per batch, not per party
  const std::vector<double>& holder = losses[parties - 1];
  ASSERT_EQ(holder.size(), 300u);
  const double first = Mean(holder, 0, 25), last = Mean(holder, 275, 25);
  std::printf("[ vertical ] %d parties over %s: loss %.3f -> %.3f, accuracy %.3f\n", parties,
              test_support::LinkName(kind).c_str(), first, last, evals[parties - 1].accuracy);
  EXPECT_LT(last, 0.6 * first);
  EXPECT_GT(evals[parties - 1].accuracy, 0.8);
  for (int p = 0; p + 1 < parties; ++p) {
    EXPECT_EQ(Mean(losses[p], 0, 300), 0) << "party " << p << " learned the loss";
    EXPECT_EQ(evals[p].accuracy, 0) << "party " << p << " learned the accuracy";
    EXPECT_EQ(evals[p].samples, test.size());
  }
}

INSTANTIATE_TEST_SUITE_P(LinksAndParties, VerticalTrainingTest,
                         ::testing::Combine(::testing::Values(LinkKind::kGrpc,
                                                              LinkKind::kInProcess),
                                            ::testing::Values(2, 3)),
                         [](const ::testing::TestParamInfo<std::tuple<LinkKind, int>>& info) {
                           return test_support::LinkName(std::get<0>(info.param)) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "Parties";
                         });

// Party 1 joins and never trains: party 0's first step ends with DEADLINE_EXCEEDED naming it,
// after the party timeout; the server keeps serving (a later step with both parties works).
TEST(VerticalMissingPartyTest, TheWaitingPartyGetsAClearStatusAndTheServerServesOn) {
  TestServer server(VerticalServer(2, std::chrono::milliseconds(300)), LinkKind::kGrpc);
  const Dataset train = test_support::LinearRuleData(256, 1, kFeatures);
  auto link0 = server.Link("party-0");
  auto link1 = server.Link("party-1");
  TrainerOptions options0 = Party(0, 6), options1 = Party(1, 6);
  options0.max_steps_per_epoch = options1.max_steps_per_epoch = 2;
  SplitTrainer party0(options0, *link0), party1(options1, *link1);
  party0.Join(train.size());
  party1.Join(train.size());
  const auto started = std::chrono::steady_clock::now();
  try {
    party0.TrainEpoch(PartOf(train, "0:6"), 0, 1, nullptr);
    FAIL() << "the step went through without party 1";
  } catch (const protocol::StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_NE(std::string(error.what()).find("step 0: party 1 sent nothing within 300 ms"),
              std::string::npos)
        << error.what();
  }
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(300));
  EXPECT_EQ(server.split_server().step(), 0);
  // Both parties now: the server was not harmed (party 0 joins again: its stream ended).
  auto relink0 = server.Link("party-0");
  SplitTrainer again(options0, *relink0);
  again.Join(train.size());
  auto other = std::async(std::launch::async,
                          [&] { return party1.TrainEpoch(PartOf(train, "6:12"), 0, 1, nullptr); });
  again.TrainEpoch(PartOf(train, "0:6"), 0, 1, nullptr);
  EXPECT_EQ(other.get().steps, 2);
  EXPECT_EQ(server.split_server().step(), 2);
}

// A party that brings its own bottom (a TorchScript --bottom, 6 columns -> 4 units) beside a zoo
// party (6 -> 8): the server's top takes the 12 joined units, and the two train one model over
// loopback mutual TLS. A top that takes 16 instead: the second party to join is refused at Join
// with FAILED_PRECONDITION naming the widths, before any step.
TEST(VerticalScriptBottomTest, APartyWithItsOwnBottomTrainsAndAWrongWidthIsRefusedAtJoin) {
  test_support::TempDir dir;
  const auto own = test_support::WriteScriptHalves(dir.path(), "party0", "party-0-model", 6, 3);
  server::SplitServerOptions options = VerticalServer(2, std::chrono::milliseconds(20000));
  options.model = test_support::MlpSpec(kFeatures, {4 + kWidth, 16}, 3);
  TestServer server(options, LinkKind::kGrpc);
  const Dataset train = test_support::LinearRuleData(4800, 1, kFeatures);
  TrainerOptions script_party = Party(0, 6);
  script_party.model = TorchScriptSpec(own.bottom, "");
  script_party.learning_rate = 1e-2;
  std::vector<double> holder_losses;
  auto run = [&](int p, const TrainerOptions& party_options) {
    const Dataset mine = PartOf(train, Columns(2)[p]);
    auto link = server.Link("party-" + std::to_string(p));
    SplitTrainer trainer(party_options, *link);
    trainer.Join(mine.size());
    trainer.TrainEpoch(mine, 0, 1, nullptr);
    if (p == 1) holder_losses = trainer.step_losses();
    trainer.Leave();
  };
  auto party0 = std::async(std::launch::async, run, 0, script_party);
  run(1, Party(1, 6));
  party0.get();
  ASSERT_EQ(holder_losses.size(), 150u);
  const double first = Mean(holder_losses, 0, 25), last = Mean(holder_losses, 125, 25);
  std::printf("[ vertical ] TorchScript party 0 + zoo party 1: loss %.3f -> %.3f\n", first, last);
  EXPECT_LT(last, 0.7 * first);

  options.model = test_support::MlpSpec(kFeatures, {16, 16}, 3);
  TestServer wide(options, LinkKind::kGrpc);
  auto link0 = wide.Link("party-0"), link1 = wide.Link("party-1");
  SplitTrainer first_party(script_party, *link0), second_party(Party(1, 6), *link1);
  first_party.Join(train.size());  // 4 of 16, room left for party 1
  try {
    second_party.Join(train.size());
    FAIL() << "4 + 8 units were joined into a top that takes 16";
  } catch (const protocol::StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(std::string(error.what()).find("give 12 (party 0: 4, party 1: 8)"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace cleave
