// The client learns from the gradient the server sends, in every encoding the server can send:
// dense; values only, at the positions the client sent; re-sparsified with indices relative to the
// sent positions (protocol::GradientDecoder); and sparsified over the whole tensor when the
// activations went dense. After one SGD step the bottom's weights must be W - lr * dL/dW with
// L = <activations, G>, G the gradient the server meant. The test knows G (it plays the server
// over a fake link and encodes G with the server's encoders) and computes the reference on its
// own copy of the bottom; the code under test never decodes the reference.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "cleave/client/split_trainer.h"
#include "cleave/core/dataset.h"
#include "cleave/core/error.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/split_link.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave {
namespace {

constexpr int64_t kRows = 16;   // one batch
constexpr int64_t kWidth = 64;  // cut width of the mlp below
constexpr double kLearningRate = 0.1;

ModelSpec Mlp() { return test_support::MlpSpec(8, {kWidth, 16}, 3); }

enum class Encoding {
  kDense,         // activations dense, gradient dense
  kValuesAtSent,  // activations sparse, gradient values at the sent positions (no indices)
  kSparseOfSent,  // activations sparse, gradient re-sparsified: indices into the sent positions
  kSparseOfAll,   // activations dense, gradient sparsified: flat indices of the whole tensor
};

struct EncodingCase {
  const char* name;
  Encoding encoding;
};
void PrintTo(const EncodingCase& c, std::ostream* out) { *out << c.name; }

// Plays the server: answers Join with the compression of the case and each step with the
// gradient G, encoded as the case says. Records what arrived and the gradient the client should
// have applied (G at the positions the encoding carries, zero elsewhere).
class FakeServerLink final : public protocol::SplitLink {
 public:
  FakeServerLink(Encoding encoding, at::Tensor gradient)
      : encoding_(encoding), gradient_(std::move(gradient)) {}

  v1::JoinReply Join(const v1::JoinRequest&) override {
    v1::JoinReply reply;
    reply.set_protocol_version(protocol::kProtocolVersion);
    reply.set_session_id("fake");
    reply.mutable_server()->set_max_batch(64);
    reply.mutable_server()->set_max_message_bytes(64 << 20);
    reply.mutable_server()->set_schedule("single");
    auto* activations = reply.mutable_compression()->mutable_activations();
    const bool sparse_up =
        encoding_ == Encoding::kValuesAtSent || encoding_ == Encoding::kSparseOfSent;
    activations->set_method(sparse_up ? "topk" : "none");
    activations->set_density(sparse_up ? 0.25 : 1.0);
    activations->set_value_precision("fp32");
    auto* gradients = reply.mutable_compression()->mutable_gradients();
    gradients->set_method(
        encoding_ == Encoding::kSparseOfSent || encoding_ == Encoding::kSparseOfAll ? "topk"
                                                                                    : "none");
    gradients->set_density(0.5);
    gradients->set_value_precision("fp32");
    return reply;
  }
  void OpenTrainStream() override {}
  void CloseTrainStream() override {}

  v1::TrainReply TrainStep(const v1::TrainRequest& request) override {
    protocol::TensorSpec spec;
    spec.sample_shape = {kWidth};
    spec.max_batch = 64;
    spec.allow_sparse = true;
    const protocol::DecodedTensor received = protocol::DecodeTensor(request.activations(), spec);
    received_ = received.dense;
    sent_ = received.sent_indices;
    v1::TrainReply reply;
    reply.set_protocol_version(reply_version);
    reply.set_step(request.step());
    reply.set_model_version(request.model_version());
    reply.set_loss(1.0);
    const at::Tensor flat = gradient_.reshape({-1});
    at::Tensor applied = at::zeros_like(flat);
    // Every other position of the set the gradient is chosen from.
    const auto every_other = [](int64_t n) {
      std::vector<uint32_t> chosen;
      for (int64_t i = 0; i < n; i += 2) chosen.push_back(static_cast<uint32_t>(i));
      return chosen;
    };
    switch (encoding_) {
      case Encoding::kDense:
        protocol::EncodeDense(gradient_, reply.mutable_gradients());
        applied = flat;
        break;
      case Encoding::kValuesAtSent:
        protocol::EncodeValuesAt(gradient_, sent_, ValuePrecision::kFp32,
                                 reply.mutable_gradients());
        for (uint32_t index : sent_) applied[index] = flat[index];
        break;
      case Encoding::kSparseOfSent: {
        std::vector<int64_t> sent(sent_.begin(), sent_.end());
        const at::Tensor values = flat.index_select(0, at::tensor(sent, at::kLong));
        const std::vector<uint32_t> chosen = every_other(values.numel());
        protocol::EncodeSparse(values, chosen, ValuePrecision::kFp32, reply.mutable_gradients());
        for (uint32_t i : chosen) applied[sent_[i]] = flat[sent_[i]];
        break;
      }
      case Encoding::kSparseOfAll: {
        const std::vector<uint32_t> chosen = every_other(flat.numel());
        protocol::EncodeSparse(flat, chosen, ValuePrecision::kFp32, reply.mutable_gradients());
        for (uint32_t i : chosen) applied[i] = flat[i];
        break;
      }
    }
    if (encoding_ == Encoding::kSparseOfSent || encoding_ == Encoding::kSparseOfAll) {
      // As the server does: the message's shape is the full gradient's.
      reply.mutable_gradients()->clear_shape();
      for (int64_t d : gradient_.sizes()) reply.mutable_gradients()->add_shape(d);
    }
    applied_ = applied.view(gradient_.sizes());
    return reply;
  }

  // Answers every evaluation batch with `evaluate_correct` and `evaluate_per_class`.
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override {
    v1::EvaluateReply reply;
    reply.set_protocol_version(protocol::kProtocolVersion);
    reply.set_count(request.labels().shape(0));
    reply.set_correct(evaluate_correct);
    for (int64_t count : evaluate_per_class) reply.add_correct_per_class(count);
    return reply;
  }
  void Leave(const v1::LeaveRequest&) override {}
  v1::SyncReply Sync(const v1::SyncRequest&) override { return {}; }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest&) override { return {}; }

  uint32_t reply_version = protocol::kProtocolVersion;  // what the Train replies say
  int64_t evaluate_correct = 0;
  std::vector<int64_t> evaluate_per_class;
  const at::Tensor& received() const { return received_; }
  const std::vector<uint32_t>& sent() const { return sent_; }
  const at::Tensor& applied() const { return applied_; }

 private:
  Encoding encoding_;
  at::Tensor gradient_;
  at::Tensor received_, applied_;
  std::vector<uint32_t> sent_;
};

Dataset Data() { return test_support::RandomData(kRows, 8, 3, 11); }

class GradientStepTest : public ::testing::TestWithParam<EncodingCase> {};

TEST(ReplyVersionTest, ATrainReplyOfAnotherProtocolVersionIsNotApplied) {
  const Dataset data = Data();
  FakeServerLink link(Encoding::kDense, at::ones({kRows, kWidth}));
  link.reply_version = protocol::kProtocolVersion + 1;
  client::TrainerOptions options;
  options.model = Mlp();
  options.optimizer = "sgd";
  options.batch_size = kRows;
  options.max_steps_per_epoch = 1;
  client::SplitTrainer trainer(options, link);
  trainer.Join(data.size());
  const at::Tensor before = trainer.ClientWeights();
  EXPECT_THROW(trainer.TrainEpoch(data, 0, 1, nullptr), InvalidInput);
  EXPECT_TRUE(at::equal(before, trainer.ClientWeights()));
}

// An Evaluate reply's per-class counts are checked against the labels sent before they are
// used: one per class, each within the batch's samples of that class, summing to the correct
// count. A reply that fails is refused (InvalidInput), like any other malformed reply.
TEST(EvaluateReplyTest, PerClassCountsAreCheckedAgainstTheLabelsSent) {
  const Dataset data = Data();
  std::vector<int64_t> n(3, 0);  // samples of each class in the one evaluation batch
  for (int64_t row = 0; row < kRows; ++row) ++n[data.labels[row].item<int64_t>()];
  ASSERT_GT(n[0], 0);
  ASSERT_GT(n[1], 0);
  ASSERT_GT(n[2], 0);
  struct Case {
    const char* what;
    std::vector<int64_t> per_class;
    int64_t correct;
    bool accepted;
  };
  const std::vector<Case> cases = {
      {"all correct", n, kRows, true},
      {"none correct", {0, 0, 0}, 0, true},
      {"one of class 1 wrong", {n[0], n[1] - 1, n[2]}, kRows - 1, true},
      {"a class missing", {n[0], n[1]}, n[0] + n[1], false},
      {"a class too many", {n[0], n[1], n[2], 0}, kRows, false},
      {"more than class 0 has", {n[0] + 1, n[1] - 1, n[2]}, kRows, false},
      {"negative", {-1, n[1], n[2]}, kRows - n[0] - 1, false},
      {"sum is not the correct count", {n[0], 0, 0}, n[0] + 1, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    FakeServerLink link(Encoding::kDense, at::zeros({kRows, kWidth}));
    link.evaluate_per_class = c.per_class;
    link.evaluate_correct = c.correct;
    client::TrainerOptions options;
    options.model = Mlp();
    client::SplitTrainer trainer(options, link);
    trainer.Join(data.size());
    if (!c.accepted) {
      EXPECT_THROW(trainer.Evaluate(data, kRows), InvalidInput);
      continue;
    }
    const client::EvalStats stats = trainer.Evaluate(data, kRows);
    EXPECT_EQ(stats.correct_per_class, c.per_class);
    EXPECT_EQ(stats.samples_per_class, n);
    EXPECT_EQ(stats.samples, kRows);
    EXPECT_DOUBLE_EQ(stats.accuracy, static_cast<double>(c.correct) / kRows);
  }
}

TEST_P(GradientStepTest, OneSgdStepMovesTheBottomByLearningRateTimesTheSentGradient) {
  const Encoding encoding = GetParam().encoding;
  const Dataset data = Data();
  const at::Generator generator = at::detail::createCPUGenerator(5);
  const at::Tensor gradient = at::randn({kRows, kWidth}, generator, at::kFloat);
  FakeServerLink link(encoding, gradient);

  client::TrainerOptions options;
  options.model = Mlp();
  options.seed = 3;
  options.optimizer = "sgd";
  options.learning_rate = kLearningRate;
  options.batch_size = kRows;
  options.max_steps_per_epoch = 1;
  client::SplitTrainer trainer(options, link);
  trainer.Join(data.size());
  const at::Tensor before = trainer.ClientWeights();
  trainer.TrainEpoch(data, 0, 1, nullptr);
  const at::Tensor after = trainer.ClientWeights();

  // The batch the trainer drew (its order comes from the seed and the epoch).
  BatchIterator batches(data, kRows, options.seed);
  batches.StartEpoch(0);
  at::Tensor inputs, labels;
  ASSERT_TRUE(batches.Next(&inputs, &labels));

  // The reference: a bottom with the same starting weights, the gradient the server meant.
  SplitModel reference = BuildSplitModel(options.model, 99);
  AssignFlatParameters(*reference.bottom, before);
  const at::Tensor activations = reference.bottom->forward(inputs);
  {
    // What arrived is these activations (at the positions sent): the pairing of inputs and
    // gradient rows is the trainer's.
    at::NoGradGuard no_grad;
    at::Tensor expected_received = activations.detach().clone();
    if (!link.sent().empty()) {
      at::Tensor mask = at::zeros({activations.numel()});
      for (uint32_t index : link.sent()) mask[index] = 1;
      expected_received = expected_received * mask.view(activations.sizes());
    }
    ASSERT_TRUE(at::allclose(link.received(), expected_received, 1e-5, 1e-6))
        << "the activations that arrived are not those of the drawn batch";
  }
  activations.backward(link.applied());
  std::vector<at::Tensor> grads;
  for (const at::Tensor& parameter : reference.bottom->parameters()) {
    grads.push_back(parameter.grad().reshape({-1}));
  }
  const at::Tensor expected = before - kLearningRate * at::cat(grads);
  ASSERT_GT((expected - before).norm().item<double>(), 1e-2) << "the reference does not move";
  EXPECT_TRUE(at::allclose(after, expected, 1e-4, 1e-6))
      << "largest difference " << (after - expected).abs().max().item<double>()
      << ", reference step " << (expected - before).abs().max().item<double>() << ", client step "
      << (after - before).abs().max().item<double>();
}

INSTANTIATE_TEST_SUITE_P(
    Encodings, GradientStepTest,
    ::testing::Values(EncodingCase{"Dense", Encoding::kDense},
                      EncodingCase{"ValuesAtSentPositions", Encoding::kValuesAtSent},
                      EncodingCase{"SparseRelativeToSentPositions", Encoding::kSparseOfSent},
                      EncodingCase{"SparseOfTheWholeTensor", Encoding::kSparseOfAll}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace cleave
