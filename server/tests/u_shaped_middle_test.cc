// The server's U-shaped middle without a link: what it refuses in a step's two messages, and that
// a refused gradient gives the middle up at once.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/refusal.h"
#include "cleave/server/split_server.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

// The unit tests' MLP (8 -> 128 | 128 -> 64 | 64 -> 3) with its last block at the hospital.
SplitServerOptions UShapedOptions() {
  SplitServerOptions options = test::MlpOptions();
  options.model.tail_layers = 1;
  options.config = SplitConfig::kUShaped;
  return options;
}

v1::TrainRequest Activations(const std::string& session, int64_t step) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_step(step);
  protocol::EncodeDense(at::rand({4, 128}), request.mutable_activations());
  return request;
}

v1::TrainRequest Gradient(const std::string& session, int64_t step, const at::Tensor& gradient) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_step(step);
  protocol::EncodeDense(gradient, request.mutable_middle_gradient());
  return request;
}

class UShapedMiddleTest : public ::testing::Test {
 protected:
  UShapedMiddleTest() : server_(UShapedOptions()) {
    session_ = server_.Join("st-mary", test::JoinFor(server_)).session_id();
  }

  // A first message, then `gradient` as the second: refused with `Expected`.
  template <typename Expected>
  void ExpectGradientRefused(const at::Tensor& gradient) {
    const v1::TrainReply middle = server_.Train("st-mary", Activations(session_, step_));
    EXPECT_TRUE(middle.has_middle_output());
    EXPECT_THROW(server_.Train("st-mary", Gradient(session_, step_, gradient)), Expected);
    ++step_;
  }

  SplitServer server_;
  std::string session_;
  int64_t step_ = 0;
};

TEST_F(UShapedMiddleTest, AdvertisesTheConfigAndTheMiddleOutputShape) {
  EXPECT_EQ(server_.Join("riverside", test::JoinFor(server_)).server().config(), "u-shaped");
  const v1::TrainReply middle = server_.Train("st-mary", Activations(session_, 0));
  EXPECT_EQ(std::vector<int64_t>(middle.middle_output().shape().begin(),
                                 middle.middle_output().shape().end()),
            (std::vector<int64_t>{4, 64}));
  EXPECT_FALSE(middle.has_gradients());
  const v1::TrainReply done = server_.Train("st-mary", Gradient(session_, 0, at::ones({4, 64})));
  EXPECT_EQ(std::vector<int64_t>(done.gradients().shape().begin(), done.gradients().shape().end()),
            (std::vector<int64_t>{4, 128}));
  EXPECT_EQ(done.server_step(), 1);
  EXPECT_EQ(server_.step(), 1);
}

TEST_F(UShapedMiddleTest, RefusesBadMiddleGradientsAndGivesTheMiddleUp) {
  const std::vector<float> nan(4 * 64, std::numeric_limits<float>::quiet_NaN());
  ExpectGradientRefused<InvalidInput>(at::tensor(nan).reshape({4, 64}));
  ExpectGradientRefused<OutOfBounds>(at::full({4, 64}, 1e7));
  ExpectGradientRefused<InvalidInput>(at::ones({4, 65}));  // another shape
  ExpectGradientRefused<InvalidInput>(at::ones({3, 64}));  // another batch
  EXPECT_EQ(server_.step(), 0);
  EXPECT_EQ(server_.counters().refused_steps, 4);
  // Each refusal freed the middle: a good step goes through at once.
  server_.Train("st-mary", Activations(session_, step_));
  EXPECT_EQ(server_.Train("st-mary", Gradient(session_, step_, at::ones({4, 64}))).server_step(),
            1);
  // A gradient for a step that is not pending (already done) is stale.
  EXPECT_THROW(server_.Train("st-mary", Gradient(session_, step_, at::ones({4, 64}))), Refusal);
}

TEST_F(UShapedMiddleTest, RefusesMessagesThatAreNeitherOrBoth) {
  v1::TrainRequest both = Activations(session_, 0);
  protocol::EncodeDense(at::ones({4, 64}), both.mutable_middle_gradient());
  EXPECT_THROW(server_.Train("st-mary", both), InvalidInput);
  v1::TrainRequest neither = Activations(session_, 0);
  neither.clear_activations();
  EXPECT_THROW(server_.Train("st-mary", neither), InvalidInput);
  v1::EvaluateRequest labelled;
  labelled.set_protocol_version(protocol::kProtocolVersion);
  labelled.set_session_id(session_);
  protocol::EncodeDense(at::rand({4, 128}), labelled.mutable_activations());
  protocol::EncodeDense(at::zeros({4}, at::kLong), labelled.mutable_labels());
  EXPECT_THROW(server_.Evaluate("st-mary", labelled), InvalidInput);
  labelled.clear_labels();
  const v1::EvaluateReply evaluated = server_.Evaluate("st-mary", labelled);
  EXPECT_EQ(evaluated.count(), 4);
  EXPECT_TRUE(evaluated.has_middle_output());
}

TEST(VanillaServerTest, RefusesAMiddleGradient) {
  SplitServer server(test::MlpOptions());
  const std::string session = server.Join("st-mary", test::JoinFor(server)).session_id();
  v1::TrainRequest request = Gradient(session, 0, at::ones({4, 64}));
  protocol::EncodeDense(at::rand({4, 128}), request.mutable_activations());
  protocol::EncodeDense(at::zeros({4}, at::kLong), request.mutable_labels());
  EXPECT_THROW(server.Train("st-mary", request), InvalidInput);
  EXPECT_EQ(server.step(), 0);
}

TEST(SplitServerConfigTest, ATailExactlyWhenUShaped) {
  SplitServerOptions tail_without_config = UShapedOptions();
  tail_without_config.config = SplitConfig::kVanilla;
  EXPECT_THROW(SplitServer{tail_without_config}, UserError);
  SplitServerOptions config_without_tail = UShapedOptions();
  config_without_tail.model.tail_layers = 0;
  EXPECT_THROW(SplitServer{config_without_tail}, UserError);
}

}  // namespace
}  // namespace cleave::server
