// Vertical split learning on the server, driven without sockets: the join and the gradient
// slices, the rendezvous of the parties (and its deadline), admission at Join, and one step of
// two and three parties against a single-process reference step with the same weights.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>

#include <future>
#include <thread>

#include "cleave/core/split_model.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/protocol/vertical_fingerprint.h"
#include "cleave/server/party_rendezvous.h"
#include "cleave/server/split_server.h"
#include "cleave/server/vertical_join.h"

namespace cleave::server {
namespace {

TEST(VerticalJoinTest, ConcatJoinsAlongTheFirstSampleDimensionAndSlicesTheGradientBack) {
  const at::Tensor a = at::randn({4, 3}), b = at::randn({4, 5});
  const at::Tensor joined = JoinActivations(JoinMode::kConcat, {a, b}, {8});
  EXPECT_TRUE(at::equal(joined.narrow(1, 0, 3), a));
  EXPECT_TRUE(at::equal(joined.narrow(1, 3, 5), b));
  const at::Tensor gradient = at::randn({4, 8});
  const std::vector<at::Tensor> shares = SplitGradient(JoinMode::kConcat, gradient, {a, b});
  ASSERT_EQ(shares.size(), 2u);
  EXPECT_TRUE(at::equal(shares[0], gradient.narrow(1, 0, 3)));
  EXPECT_TRUE(at::equal(shares[1], gradient.narrow(1, 3, 5)));
}

TEST(VerticalJoinTest, SumAddsAndEveryPartyGetsTheWholeGradient) {
  const at::Tensor a = at::randn({2, 6}), b = at::randn({2, 6});
  EXPECT_TRUE(at::allclose(JoinActivations(JoinMode::kSum, {a, b}, {6}), a + b));
  const at::Tensor gradient = at::randn({2, 6});
  for (const at::Tensor& share : SplitGradient(JoinMode::kSum, gradient, {a, b})) {
    EXPECT_TRUE(at::equal(share, gradient));
  }
}

TEST(VerticalJoinTest, ShapesThatCannotJoinAreRefused) {
  EXPECT_THROW(JoinActivations(JoinMode::kConcat, {at::zeros({4, 3}), at::zeros({3, 5})}, {8}),
               InvalidInput);  // different batches
  EXPECT_THROW(JoinActivations(JoinMode::kConcat, {at::zeros({4, 3}), at::zeros({4, 4})}, {8}),
               InvalidInput);  // widths do not add up
  EXPECT_THROW(CheckPartyCutShape(JoinMode::kSum, {5}, {6}, 0), Refusal);
  EXPECT_THROW(CheckPartyCutShape(JoinMode::kConcat, {6}, {6}, 0), Refusal);
  EXPECT_THROW(CheckPartyCutShape(JoinMode::kConcat, {2, 3}, {6}, 0), Refusal);
  EXPECT_NO_THROW(CheckPartyCutShape(JoinMode::kConcat, {16, 14, 14}, {32, 14, 14}, 1));
}

// Concat at Join: the widths so far must leave 1 for each party to come and, all in, add up.
TEST(VerticalJoinTest, ConcatWidthsThatCannotAddUpAreRefusedAtJoin) {
  EXPECT_NO_THROW(CheckConcatWidths({{0, 4}}, 2, {12}, 0));
  EXPECT_NO_THROW(CheckConcatWidths({{0, 4}, {1, 8}}, 2, {12}, 1));
  EXPECT_NO_THROW(CheckConcatWidths({{2, 10}}, 3, {12}, 2));
  EXPECT_THROW(CheckConcatWidths({{2, 11}}, 3, {12}, 2), Refusal);  // no room for 2 more
  try {
    CheckConcatWidths({{0, 4}, {1, 8}}, 2, {16}, 1);
    FAIL() << "4 + 8 was taken for 16";
  } catch (const Refusal& refusal) {
    EXPECT_EQ(refusal.kind(), RefusalKind::kMismatch);
    EXPECT_NE(std::string(refusal.what())
                  .find("the top's input has 16 along its first dimension, the parties' cut "
                        "layers give 12 (party 0: 4, party 1: 8)"),
              std::string::npos)
        << refusal.what();
  }
}

TEST(PartyRendezvousTest, TheLastPartyRunsTheStepOnceAndEachGetsItsResult) {
  PartyRendezvous<int, int> rendezvous(3, std::chrono::milliseconds(5000), "step");
  std::atomic<int> runs{0};
  auto compute = [&](std::vector<int>& in) {
    ++runs;
    return std::vector<int>{in[0] + in[1] + in[2], 10 * in[1], 100 * in[2]};
  };
  auto party = [&](int p) { return rendezvous.Meet(7, p, p + 1, compute); };
  auto f1 = std::async(std::launch::async, party, 1);
  auto f2 = std::async(std::launch::async, party, 2);
  EXPECT_EQ(party(0), 6);
  EXPECT_EQ(f1.get(), 20);
  EXPECT_EQ(f2.get(), 300);
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(rendezvous.pending(), 0u);
}

TEST(PartyRendezvousTest, AMissingPartyFailsTheStepWithPartyMissingNamingIt) {
  PartyRendezvous<int, int> rendezvous(3, std::chrono::milliseconds(100), "step");
  auto compute = [](std::vector<int>&) -> std::vector<int> {
    ADD_FAILURE() << "ran without every party";
    return {0, 0, 0};
  };
  auto f0 = std::async(std::launch::async, [&] { return rendezvous.Meet(3, 0, 1, compute); });
  try {
    rendezvous.Meet(3, 2, 1, compute);
    FAIL() << "no error";
  } catch (const Refusal& refusal) {
    EXPECT_EQ(refusal.kind(), RefusalKind::kPartyMissing);
    EXPECT_NE(std::string(refusal.what()).find("step 3: party 1 sent nothing within 100 ms"),
              std::string::npos)
        << refusal.what();
  }
  EXPECT_THROW(f0.get(), Refusal);
  EXPECT_EQ(rendezvous.pending(), 0u);
}

TEST(PartyRendezvousTest, AnErrorOfTheStepReachesEveryParty) {
  PartyRendezvous<int, int> rendezvous(2, std::chrono::milliseconds(5000), "step");
  auto compute = [](std::vector<int>&) -> std::vector<int> { throw InvalidInput("bad batch"); };
  auto f1 = std::async(std::launch::async, [&] { return rendezvous.Meet(0, 1, 0, compute); });
  EXPECT_THROW(rendezvous.Meet(0, 0, 0, compute), InvalidInput);
  EXPECT_THROW(f1.get(), InvalidInput);
}

// The parties of a test: each party's bottom is an mlp over its own columns, with `widths[p]`
// cut-layer units; the server's top takes their concatenation (or, for sum, any one of them).
struct Layout {
  JoinMode join;
  std::vector<int64_t> columns;  // per party
  std::vector<int64_t> widths;   // per party
};

ModelSpec ServerSpec(const Layout& setup) {
  int64_t top_width = 0;
  for (int64_t w : setup.widths) top_width = setup.join == JoinMode::kSum ? w : top_width + w;
  ModelSpec spec;
  spec.architecture = "mlp";
  spec.input_shape = {10};  // unused by the top
  spec.hidden = {top_width, 6};
  spec.num_classes = 3;
  spec.cut = 1;
  return spec;
}

SplitServerOptions VerticalOptions(const Layout& setup) {
  SplitServerOptions options;
  options.model = ServerSpec(setup);
  options.optimizer = "sgd";
  options.learning_rate = 0.1;
  options.max_batch = 16;
  options.config = SplitConfig::kVertical;
  options.vertical.parties = static_cast<int>(setup.columns.size());
  options.vertical.join = setup.join;
  options.vertical.label_holder = 0;
  options.vertical.party_timeout = std::chrono::milliseconds(10000);
  return options;
}

v1::JoinRequest PartyJoin(int party, std::vector<int64_t> cut_shape) {
  v1::JoinRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_model_fingerprint(protocol::VerticalFingerprint(3));
  request.set_vertical_party(party);
  request.mutable_vertical_cut_shape()->Add(cut_shape.begin(), cut_shape.end());
  return request;
}

class VerticalStepTest : public ::testing::TestWithParam<Layout> {};

// One step through SplitServer (each party on its own thread, as its gRPC stream would be)
// returns each party the gradient, and moves the top, exactly as one process doing the whole
// forward and backward pass on the joined activations.
TEST_P(VerticalStepTest, MatchesASingleProcessReferenceStep) {
  const Layout setup = GetParam();
  const int parties = static_cast<int>(setup.columns.size());
  SplitServer server(VerticalOptions(setup));
  const int64_t batch = 8;
  const at::Tensor labels = at::tensor({0, 1, 2, 0, 1, 2, 2, 1}, at::kLong);
  std::vector<at::Tensor> activations;
  std::vector<std::string> sessions;
  for (int p = 0; p < parties; ++p) {
    activations.push_back(at::rand({batch, setup.widths[p]}));
    sessions.push_back(
        server.Join("party" + std::to_string(p), PartyJoin(p, {setup.widths[p]})).session_id());
  }
  // The reference: the same top (same spec, same seed), one SGD step on the joined input.
  SplitModel reference = BuildSplitModel(ServerSpec(setup), server.options().seed);
  std::vector<at::Tensor> inputs;
  for (const at::Tensor& a : activations) inputs.push_back(a.clone().requires_grad_(true));
  at::Tensor joined = inputs[0];
  for (int p = 1; p < parties; ++p) {
    joined = setup.join == JoinMode::kSum ? joined + inputs[p] : at::cat({joined, inputs[p]}, 1);
  }
  const at::Tensor loss =
      torch::nn::functional::cross_entropy(reference.top->forward(joined), labels);
  loss.backward();

  std::vector<std::future<v1::TrainReply>> replies;
  for (int p = 0; p < parties; ++p) {
    v1::TrainRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(sessions[p]);
    request.set_step(0);
    protocol::EncodeDense(activations[p], request.mutable_activations());
    if (p == 0) protocol::EncodeDense(labels, request.mutable_labels());
    replies.push_back(std::async(std::launch::async, [&server, p, request] {
      return server.Train("party" + std::to_string(p), request);
    }));
  }
  for (int p = 0; p < parties; ++p) {
    const v1::TrainReply reply = replies[p].get();
    protocol::TensorSpec spec;
    spec.sample_shape = {setup.widths[p]};
    const at::Tensor gradient = protocol::DecodeTensor(reply.gradients(), spec).dense;
    EXPECT_TRUE(at::allclose(gradient, inputs[p].grad(), 1e-5, 1e-5)) << "party " << p;
    if (p == 0) {
      EXPECT_NEAR(reply.loss(), loss.item<double>(), 1e-5);
    } else {
      EXPECT_EQ(reply.loss(), 0) << "only the label holder learns the loss";
    }
  }
  // SGD, lr 0.1: the server's top moved by -0.1 x the reference's gradients.
  const std::vector<at::Tensor> after = server.top_parameters();
  const std::vector<at::Tensor> before = reference.top->parameters();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(at::allclose(after[i], before[i] - 0.1 * before[i].grad(), 1e-5, 1e-5)) << i;
  }
  EXPECT_EQ(server.step(), 1);
}

INSTANTIATE_TEST_SUITE_P(PartiesAndJoins, VerticalStepTest,
                         ::testing::Values(Layout{JoinMode::kConcat, {5, 3}, {4, 4}},
                                           Layout{JoinMode::kConcat, {3, 3, 4}, {2, 3, 4}},
                                           Layout{JoinMode::kSum, {5, 3}, {6, 6}},
                                           Layout{JoinMode::kSum, {3, 3, 4}, {5, 5, 5}}));

TEST(VerticalAdmissionTest, JoinChecksThePartyItsCutLayerAndWhoHoldsIt) {
  const Layout setup{JoinMode::kConcat, {5, 3}, {4, 4}};
  SplitServer server(VerticalOptions(setup));
  EXPECT_EQ(server.Join("lab", PartyJoin(1, {4})).server().config(), "vertical");
  auto kind_of = [&](const std::string& who, const v1::JoinRequest& request) {
    try {
      server.Join(who, request);
    } catch (const Refusal& refusal) {
      return refusal.reason();
    }
    return "admitted";
  };
  EXPECT_STREQ(kind_of("radiology", PartyJoin(2, {4})), "mismatch");     // no party 2
  EXPECT_STREQ(kind_of("radiology", PartyJoin(0, {8})), "mismatch");     // too wide to join
  EXPECT_STREQ(kind_of("radiology", PartyJoin(1, {4})), "not_allowed");  // the lab is party 1
  EXPECT_STREQ(kind_of("lab", PartyJoin(0, {4})), "not_allowed");        // the lab cannot switch
  v1::JoinRequest vanilla = PartyJoin(0, {4});
  vanilla.set_model_fingerprint(server.fingerprint());
  EXPECT_STREQ(kind_of("radiology", vanilla), "mismatch");  // a vanilla client
  EXPECT_STREQ(kind_of("radiology", PartyJoin(0, {4})), "admitted");
}

TEST(VerticalAdmissionTest, RoundsAreRefusedWithVertical) {
  SplitServerOptions options = VerticalOptions(Layout{JoinMode::kConcat, {5, 3}, {4, 4}});
  options.model.hidden = {8, 6};
  options.rounds.schedule = Schedule::kSplitFed;
  EXPECT_THROW(SplitServer{options}, UserError);
}

}  // namespace
}  // namespace cleave::server
