// KfacPreconditioner on small tops: the preconditioned gradient of a Linear and of a Conv2d layer
// against the damped Kronecker solve with factors computed directly, running averages and update
// intervals, the KL clip's value, non-finite inputs skipped, the replica interface, refusals,
// and its state in the server checkpoint.
#include "cleave/server/kfac_preconditioner.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/optimizer.h>

#include <cmath>

#include "cleave/core/script_half.h"
#include "cleave/server/server_checkpoint.h"
#include "cleave/server/split_server.h"
#include "cleave/server/top_model.h"
#include "cleave/test_support/script_halves.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/user_error.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

namespace nn = torch::nn;

KfacOptions EveryStep(double kl_clip = 1e9) {
  KfacOptions options;
  options.factor_every = 1;
  options.inverse_every = 1;
  options.damping = 0.01;
  options.kl_clip = kl_clip;
  return options;
}

// One forward and backward of the mean cross-entropy through the preconditioner.
at::Tensor Backward(KfacPreconditioner& kfac, const nn::Sequential& top, const at::Tensor& x,
                    const at::Tensor& labels) {
  for (at::Tensor& p : top->parameters()) p.mutable_grad() = at::Tensor();
  const at::Tensor logits = kfac.Forward(x);
  at::cross_entropy_loss(logits, labels).backward();
  return logits.detach();
}

// (G ⊗ A + λI)⁻¹ vec(∇W), in double.
at::Tensor DampedSolve(const at::Tensor& g, const at::Tensor& a, const at::Tensor& gradient,
                       double damping) {
  const int64_t n = g.size(0) * a.size(0);
  const at::Tensor system =
      at::kron(g.to(at::kDouble), a.to(at::kDouble)) + damping * at::eye(n, at::kDouble);
  return at::linalg_solve(system, gradient.to(at::kDouble).reshape({n, 1}))
      .reshape(gradient.sizes());
}

at::Tensor FlatGradients(const nn::Sequential& top) {
  std::vector<at::Tensor> parts;
  for (const at::Tensor& p : top->parameters()) parts.push_back(p.grad().reshape({-1}).clone());
  return at::cat(parts);
}

at::Tensor Running(const at::Tensor& batch, double decay) {
  return decay * at::eye(batch.size(0), at::kDouble) + (1 - decay) * batch.to(at::kDouble);
}

TEST(KfacPreconditionerTest, LinearGradientMatchesTheDirectFormula) {
  torch::manual_seed(7);
  nn::Linear linear(4, 3);
  nn::Sequential top(linear);
  KfacPreconditioner kfac(top, EveryStep());
  const at::Tensor x = at::randn({8, 4});
  const at::Tensor labels = at::randint(0, 3, {8}, at::kLong);
  const at::Tensor logits = Backward(kfac, top, x, labels);
  const at::Tensor gradient = at::cat({linear->weight.grad(), linear->bias.grad().unsqueeze(1)}, 1);

  // Factors by hand: inputs with a ones column; each sample's gradient of its own loss is
  // softmax - onehot (the batch-mean loss's output gradient times B).
  const at::Tensor a_rows = at::cat({x, at::ones({8, 1})}, 1).to(at::kDouble);
  const at::Tensor per_sample =
      (at::softmax(logits, 1) - at::one_hot(labels, 3).to(at::kFloat)).to(at::kDouble);
  const at::Tensor a = Running(a_rows.t().matmul(a_rows) / 8, 0.95);
  const at::Tensor g = Running(per_sample.t().matmul(per_sample) / 8, 0.95);
  const at::Tensor expected = DampedSolve(g, a, gradient, 0.01);

  const KfacStepReport report = kfac.Precondition(0.1);
  EXPECT_TRUE(report.factors_updated && report.eigen_updated);
  EXPECT_EQ(report.kl_scale, 1.0);
  const at::Tensor got = at::cat({linear->weight.grad(), linear->bias.grad().unsqueeze(1)}, 1);
  EXPECT_TRUE(at::allclose(got.to(at::kDouble), expected, 1e-3, 1e-5)) << got << "\n" << expected;
  EXPECT_FALSE(at::allclose(got, gradient));  // it did change the gradient
  EXPECT_EQ(kfac.steps(), 1);
}

TEST(KfacPreconditionerTest, ConvGradientMatchesTheDirectFormula) {
  torch::manual_seed(8);
  nn::Conv2d conv(nn::Conv2dOptions(2, 3, 3).padding(1));
  nn::Linear linear(3 * 4 * 4, 2);
  nn::Sequential top(conv, nn::Flatten(), linear);
  KfacPreconditioner kfac(top, EveryStep());
  ASSERT_EQ(kfac.layers().size(), 2u);
  EXPECT_TRUE(kfac.layers()[0]->conv);
  const at::Tensor x = at::randn({5, 2, 4, 4});
  const at::Tensor labels = at::randint(0, 2, {5}, at::kLong);
  Backward(kfac, top, x, labels);
  const at::Tensor gradient = GradientMatrix(conv->weight.grad(), conv->bias.grad());

  // The conv output's gradient, from a second forward without the preconditioner (the
  // parameters' gradients of the first are put back after it).
  std::vector<at::Tensor> first_grads;
  for (const at::Tensor& p : top->parameters()) first_grads.push_back(p.grad().clone());
  const at::Tensor out = conv->forward(x);
  out.retain_grad();
  at::cross_entropy_loss(linear->forward(out.flatten(1)), labels).backward();
  size_t i = 0;
  for (at::Tensor& p : top->parameters()) p.mutable_grad() = first_grads[i++];
  ConvGeometry geometry;
  geometry.kernel = {3, 3};
  geometry.padding = {1, 1};
  const at::Tensor a = Running(ConvInputFactor(x, geometry, true), 0.95);
  const at::Tensor g = Running(ConvOutputGradientFactor(out.grad()), 0.95);
  const at::Tensor expected = DampedSolve(g, a, gradient, 0.01);

  kfac.Precondition(0.1);
  const at::Tensor got = GradientMatrix(conv->weight.grad(), conv->bias.grad());
  EXPECT_TRUE(at::allclose(got.to(at::kDouble), expected, 1e-3, 1e-5));
}

TEST(KfacPreconditionerTest, RunningAveragesAndIntervals) {
  torch::manual_seed(9);
  nn::Linear linear(3, 2);
  nn::Sequential top(linear);
  KfacOptions options = EveryStep();
  options.factor_every = 2;
  options.inverse_every = 3;
  options.factor_decay = 0.9;
  KfacPreconditioner kfac(top, options);
  const KfacLayer& layer = *kfac.layers()[0];
  at::Tensor expected_a = at::eye(4, at::kDouble);
  for (int step = 0; step < 7; ++step) {
    const at::Tensor x = at::randn({6, 3});
    Backward(kfac, top, x, at::randint(0, 2, {6}, at::kLong));
    const KfacStepReport report = kfac.Precondition(0.1);
    EXPECT_EQ(report.factors_updated, step % 2 == 0) << step;
    EXPECT_EQ(report.eigen_updated, step % 3 == 0) << step;
    if (step % 2 == 0)
      expected_a = 0.9 * expected_a + 0.1 * LinearInputFactor(x, true).to(at::kDouble);
    EXPECT_TRUE(at::allclose(layer.a.to(at::kDouble), expected_a, 1e-4, 1e-6)) << step;
    if (step == 3) {  // eigenbasis of the factor as it stands (last updated at step 2)
      const at::Tensor rebuilt = layer.qa.matmul(at::diag(layer.da)).matmul(layer.qa.t());
      EXPECT_TRUE(at::allclose(rebuilt.to(at::kDouble), expected_a, 1e-4, 1e-5));
    }
  }
  EXPECT_EQ(kfac.steps(), 7);
}

TEST(KfacPreconditionerTest, KlClipScalesToTheBound) {
  const at::Tensor x = at::randn({8, 4});
  const at::Tensor labels = at::randint(0, 3, {8}, at::kLong);
  const auto run = [&](double kl_clip, at::Tensor* original, KfacStepReport* report) {
    torch::manual_seed(10);
    nn::Sequential top(nn::Linear(4, 5), nn::ReLU(), nn::Linear(5, 3));
    KfacPreconditioner kfac(top, EveryStep(kl_clip));
    Backward(kfac, top, x, labels);
    if (original) *original = FlatGradients(top);
    *report = kfac.Precondition(0.1);
    return FlatGradients(top);
  };
  at::Tensor original;
  KfacStepReport unclipped_report, clipped_report;
  const at::Tensor unclipped = run(1e9, &original, &unclipped_report);
  const at::Tensor clipped = run(1e-6, nullptr, &clipped_report);
  const double dot = (unclipped * original).sum().item<double>();
  const double expected = std::min(1.0, std::sqrt(1e-6 / (0.01 * std::abs(dot))));
  EXPECT_LT(expected, 1.0);
  EXPECT_NEAR(clipped_report.kl_scale, expected, 1e-5 * expected);
  EXPECT_TRUE(at::allclose(clipped, unclipped * expected, 1e-4, 1e-8));
}

TEST(KfacPreconditionerTest, NonFiniteFactorsAreSkipped) {
  torch::manual_seed(11);
  nn::Linear linear(4, 3);
  nn::Sequential top(linear);
  KfacPreconditioner kfac(top, EveryStep());
  Backward(kfac, top, at::randn({8, 4}), at::randint(0, 3, {8}, at::kLong));
  kfac.Precondition(0.1);
  const KfacLayer& layer = *kfac.layers()[0];
  const at::Tensor a = layer.a.clone(), g = layer.g.clone(), qa = layer.qa.clone();

  // Finite inputs whose factor overflows float (1e30² = inf); the loss ignores them.
  for (at::Tensor& p : top->parameters()) p.mutable_grad() = at::Tensor();
  (kfac.Forward(at::full({8, 4}, 1e30)) * 0).sum().backward();
  KfacStepReport report = kfac.Precondition(0.1);
  EXPECT_EQ(report.factors_skipped, 1);
  EXPECT_TRUE(layer.a.equal(a) && layer.g.equal(g));
  EXPECT_TRUE(layer.qa.isfinite().all().item<bool>());

  // A NaN output gradient (a hostile label or loss): factors, eigenbases and gradient all kept.
  for (at::Tensor& p : top->parameters()) p.mutable_grad() = at::Tensor();
  (kfac.Forward(at::randn({8, 4})) * std::nan("")).sum().backward();
  report = kfac.Precondition(0.1);
  EXPECT_EQ(report.factors_skipped, 1);
  EXPECT_EQ(report.gradients_skipped, 1);
  EXPECT_TRUE(layer.a.equal(a) && layer.g.equal(g) && layer.qa.equal(qa));
}

// A replica of rank 1 of 2: layer 0's eigenbases come from rank 0 by broadcast, layer 1's are
// computed here; the factors go through ReduceFactors once per factor step.
class FakeReplicas : public KfacCommunicator {
 public:
  void ReduceFactors(std::vector<at::Tensor>& factors) override {
    ++reduce_calls;
    reduced = factors.size();
  }
  int EigenOwner(int layer, int) const override { return layer % 2; }
  int rank() const override { return 1; }
  void Broadcast(std::vector<at::Tensor>& tensors, int owner) override {
    if (owner == rank()) return;
    for (at::Tensor& t : tensors) t.fill_(0.5);  // what rank 0 "sent"
  }
  int reduce_calls = 0;
  size_t reduced = 0;
};

TEST(KfacPreconditionerTest, EigendecompositionsAreSpreadOverReplicas) {
  torch::manual_seed(12);
  nn::Sequential top(nn::Linear(4, 5), nn::ReLU(), nn::Linear(5, 3));
  auto replicas = std::make_shared<FakeReplicas>();
  KfacPreconditioner kfac(top, EveryStep(), replicas);
  Backward(kfac, top, at::randn({8, 4}), at::randint(0, 3, {8}, at::kLong));
  kfac.Precondition(0.1);
  EXPECT_EQ(replicas->reduce_calls, 1);
  EXPECT_EQ(replicas->reduced, 4u);  // a and g of two layers
  const KfacLayer& first = *kfac.layers()[0];
  const KfacLayer& second = *kfac.layers()[1];
  EXPECT_TRUE(first.qa.eq(0.5).all().item<bool>());
  const at::Tensor rebuilt = second.qa.matmul(at::diag(second.da)).matmul(second.qa.t());
  EXPECT_TRUE(at::allclose(rebuilt, second.a, 1e-4, 1e-5));
}

TEST(KfacPreconditionerTest, RefusesATorchScriptTopAndTopsWithoutLayers) {
  test_support::TempDir dir;
  const auto halves = test_support::WriteScriptHalves(dir.path(), "k", "split-k");
  const SplitModel model = BuildSplitModel(TorchScriptSpec("", halves.top), 1);
  EXPECT_NE(
      test_support::UserErrorOf([&] { KfacPreconditioner(model.top, {}); }).find("TorchScript"),
      std::string::npos);
  KfacOptions small;
  small.max_dim = 5;
  EXPECT_NE(test_support::UserErrorOf([&] {
              KfacPreconditioner(nn::Sequential(nn::Linear(10, 3)), small);
            }).find("--kfac-max-dim"),
            std::string::npos);
  const KfacPreconditioner partial(nn::Sequential(nn::Linear(10, 3), nn::Linear(3, 2)), small);
  EXPECT_EQ(partial.layers().size(), 1u);
  EXPECT_EQ(partial.left_out().size(), 1u);
  KfacOptions bad;
  bad.factor_decay = 1.5;
  EXPECT_NE(test_support::UserErrorOf([&] { CheckKfacOptions(bad); }).find("--kfac-factor-decay"),
            std::string::npos);
}

std::unique_ptr<TopModel> KfacTop() {
  torch::manual_seed(13);
  TopOptimizerOptions options{"kfac", 0.1, 0.9, EveryStep(0.001)};
  return MakeTopModel(nn::Sequential(nn::Linear(4, 8), nn::ReLU(), nn::Linear(8, 3)), options);
}

TEST(KfacPreconditionerTest, TopModelTrainsWithKfac) {
  std::unique_ptr<TopModel> top = KfacTop();
  ASSERT_NE(top->kfac(), nullptr);
  const at::Tensor x = at::randn({32, 4});
  const at::Tensor labels = at::argmax(x.narrow(1, 0, 3), 1);
  const double first = top->Train(x, labels, [] { return 1.0; }).loss;
  double last = first;
  for (int i = 0; i < 40; ++i) last = top->Train(x, labels, [] { return 1.0; }).loss;
  EXPECT_LT(last, 0.5 * first);
  EXPECT_EQ(top->kfac()->steps(), 41);
}

TEST(KfacPreconditionerTest, StateGoesIntoTheServerCheckpoint) {
  test_support::TempDir dir;
  const std::string path = dir.File("server.ckpt");
  std::unique_ptr<TopModel> trained = KfacTop();
  const at::Tensor x = at::randn({16, 4});
  const at::Tensor labels = at::randint(0, 3, {16}, at::kLong);
  for (int i = 0; i < 3; ++i) trained->Train(x, labels, [] { return 1.0; });
  SaveServerCheckpoint(path, "fp", trained->layers(), trained->optimizer(), 0, 3, nullptr,
                       trained->kfac_state());

  std::unique_ptr<TopModel> resumed = KfacTop();
  LoadServerCheckpoint(path, "fp", resumed->layers(), &resumed->optimizer(), 0,
                       resumed->kfac_state());
  EXPECT_EQ(resumed->kfac()->steps(), 3);
  for (size_t i = 0; i < trained->kfac()->layers().size(); ++i) {
    EXPECT_TRUE(resumed->kfac()->layers()[i]->a.equal(trained->kfac()->layers()[i]->a));
    EXPECT_TRUE(resumed->kfac()->layers()[i]->qg.equal(trained->kfac()->layers()[i]->qg));
  }
  // A checkpoint without K-FAC state does not fit a K-FAC top.
  const std::string plain = dir.File("plain.ckpt");
  SaveServerCheckpoint(plain, "fp", trained->layers(), trained->optimizer(), 0, 3, nullptr);
  std::unique_ptr<TopModel> other = KfacTop();
  EXPECT_NE(test_support::UserErrorOf([&] {
              LoadServerCheckpoint(plain, "fp", other->layers(), &other->optimizer(), 0,
                                   other->kfac_state());
            }).find("does not fit"),
            std::string::npos);
}

v1::TrainRequest TrainBatch(const std::string& session) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  protocol::EncodeDense(at::rand({8, 128}), request.mutable_activations());
  protocol::EncodeDense(at::randint(0, 3, {8}, at::kLong), request.mutable_labels());
  return request;
}

// cleave-server --optimizer kfac end to end in process: trains, checkpoints its K-FAC state with
// the model, resumes from it; a checkpoint of a server without K-FAC does not fit.
TEST(KfacPreconditionerTest, SplitServerCheckpointsAndResumesKfac) {
  test_support::TempDir dir;
  SplitServerOptions options = test::MlpOptions();
  options.optimizer = "kfac";
  options.learning_rate = 0.05;
  options.kfac.factor_every = 2;
  options.checkpoint_path = dir.File("kfac.ckpt");
  options.checkpoint_every = 5;
  {
    SplitServer server(options);
    const std::vector<at::Tensor> before = server.top_parameters();
    const std::string session = server.Join("a", test::JoinFor(server)).session_id();
    for (int i = 0; i < 7; ++i) server.Train("a", TrainBatch(session));
    EXPECT_FALSE(server.top_parameters()[0].equal(before[0]));
  }
  options.resume = true;
  SplitServer resumed(options);
  EXPECT_EQ(resumed.step(), 5);

  SplitServerOptions plain = test::MlpOptions();
  plain.checkpoint_path = dir.File("plain.ckpt");
  { SplitServer(plain).SaveCheckpoint(); }
  options.checkpoint_path = plain.checkpoint_path;
  EXPECT_NE(test_support::UserErrorOf([&] { SplitServer refused(options); }).find("does not fit"),
            std::string::npos);
}

}  // namespace
}  // namespace cleave::server
