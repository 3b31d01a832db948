// Merged steps: the merger's grouping and wait bound, TopModel::TrainMerged against a reference
// computation, and SplitServer with merging on (concurrent hospitals, a hostile batch, staleness).
#include "cleave/server/step_merger.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/nn/functional/loss.h>

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/metrics_exporter.h"
#include "cleave/server/refusal.h"
#include "cleave/server/split_server.h"
#include "cleave/server/top_model.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

using Clock = std::chrono::steady_clock;
using test::JoinFor;
using test::SyncFor;

constexpr int64_t kWidth = 128;  // cut width of test::MlpOptions()'s model

struct Batch {
  at::Tensor activations, labels;
};

Batch MakeBatch(int64_t rows, uint64_t seed, double magnitude = 1.0) {
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  return {at::randn({rows, kWidth}, generator, at::kFloat) * magnitude,
          at::randint(0, 3, {rows}, generator, at::kLong)};
}

v1::TrainRequest TrainFor(const std::string& session, const Batch& batch, int64_t version = 0) {
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  request.set_model_version(version);
  protocol::EncodeDense(batch.activations, request.mutable_activations());
  protocol::EncodeDense(batch.labels, request.mutable_labels());
  return request;
}

at::Tensor GradientOf(const v1::TrainReply& reply) {
  protocol::TensorSpec spec;
  spec.sample_shape = {kWidth};
  return protocol::DecodeTensor(reply.gradients(), spec).dense;
}

// The server's top (test::MlpOptions's) holding `parameters`.
torch::nn::Sequential TopWith(const std::vector<at::Tensor>& parameters) {
  const SplitServerOptions options = test::MlpOptions();
  torch::nn::Sequential top = BuildSplitModel(options.model, options.seed).top;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> own = top->parameters();
  for (size_t i = 0; i < own.size(); ++i) own[i].copy_(parameters[i]);
  return top;
}

std::vector<at::Tensor> Copies(const torch::nn::Sequential& top) {
  std::vector<at::Tensor> copies;
  for (const at::Tensor& parameter : top->parameters()) copies.push_back(parameter.detach().clone());
  return copies;
}

// What each hospital's own step returns: L_i, correct_i and d L_i / d x_i on `top`.
struct Own {
  double loss = 0;
  int64_t correct = 0;
  at::Tensor cut_gradient;
};
Own OwnStep(torch::nn::Sequential top, const Batch& batch) {
  const at::Tensor x = batch.activations.clone().requires_grad_(true);
  const at::Tensor logits = top->forward(x);
  const at::Tensor loss = torch::nn::functional::cross_entropy(logits, batch.labels);
  loss.backward();
  Own own{loss.item<double>(), logits.argmax(1).eq(batch.labels).sum().item<int64_t>(),
          x.grad().clone()};
  top->zero_grad();
  return own;
}

// The reference: plain SGD (no momentum) on sum_i scale_i (rows_i / N) L_i.
std::vector<at::Tensor> ReferenceSgd(torch::nn::Sequential top, const std::vector<Batch>& batches,
                                     const std::vector<double>& scales, double learning_rate) {
  int64_t total = 0;
  for (const Batch& batch : batches) total += batch.labels.size(0);
  at::Tensor loss = at::zeros({}, at::kDouble);
  for (size_t i = 0; i < batches.size(); ++i) {
    const double weight = scales[i] * batches[i].labels.size(0) / static_cast<double>(total);
    loss = loss + weight * torch::nn::functional::cross_entropy(top->forward(batches[i].activations),
                                                                batches[i].labels);
  }
  top->zero_grad();
  loss.backward();
  std::vector<at::Tensor> after;
  for (const at::Tensor& parameter : top->parameters()) {
    after.push_back(parameter.detach() - learning_rate * parameter.grad());
  }
  return after;
}

void ExpectClose(const std::vector<at::Tensor>& x, const std::vector<at::Tensor>& y, double tol) {
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE((x[i] - y[i]).abs().max().item<double>(), tol) << "parameter " << i;
  }
}

at::Tensor Cat(const std::vector<Batch>& batches, bool labels) {
  std::vector<at::Tensor> parts;
  for (const Batch& batch : batches) parts.push_back(labels ? batch.labels : batch.activations);
  return at::cat(parts);
}

// ---- TopModel::TrainMerged ----

TEST(TrainMergedTest, EqualsSgdOnTheSumOfSampleAndStalenessWeightedLosses) {
  const torch::nn::Sequential initial = BuildSplitModel(test::MlpOptions().model, 1).top;
  const std::vector<at::Tensor> start = Copies(initial);
  const std::vector<Batch> batches = {MakeBatch(3, 11), MakeBatch(5, 12), MakeBatch(2, 13)};
  const std::vector<double> scales = {1.0, 0.5, 0.25};
  constexpr double kLearningRate = 0.1;

  TopOptimizerOptions sgd;
  sgd.name = "sgd";
  sgd.learning_rate = kLearningRate;
  sgd.momentum = 0;
  const auto merged = MakeTopModel(TopWith(start), sgd);
  std::vector<TopModel::Slice> slices;
  for (size_t i = 0; i < batches.size(); ++i) slices.push_back({batches[i].labels.size(0), scales[i]});
  const std::vector<TopModel::Step> steps =
      merged->TrainMerged(Cat(batches, false), Cat(batches, true), slices);

  ExpectClose(merged->ParameterCopies(), ReferenceSgd(TopWith(start), batches, scales, kLearningRate),
              1e-5);
  ASSERT_EQ(steps.size(), batches.size());
  for (size_t i = 0; i < batches.size(); ++i) {
    const Own own = OwnStep(TopWith(start), batches[i]);
    EXPECT_NEAR(steps[i].loss, own.loss, 1e-5) << "hospital " << i;
    EXPECT_EQ(steps[i].correct, own.correct) << "hospital " << i;
    ASSERT_EQ(steps[i].cut_gradient.sizes(), own.cut_gradient.sizes());
    EXPECT_LE((steps[i].cut_gradient - own.cut_gradient).abs().max().item<double>(), 1e-6)
        << "hospital " << i << " did not get its own slice of the cut gradient";
  }
}

class TrainMergedOptimizerTest : public ::testing::TestWithParam<std::string> {};

// With every scale 1 the merged loss is the mean over the concatenated batch: a merged step is
// the step of one bigger batch, for every optimizer the top may use.
TEST_P(TrainMergedOptimizerTest, WithoutStalenessIsOneStepOfTheConcatenatedBatch) {
  const std::vector<at::Tensor> start = Copies(BuildSplitModel(test::MlpOptions().model, 1).top);
  const std::vector<Batch> batches = {MakeBatch(4, 21), MakeBatch(6, 22)};
  TopOptimizerOptions options;
  options.name = GetParam();
  options.learning_rate = 0.01;
  const auto merged = MakeTopModel(TopWith(start), options);
  const auto whole = MakeTopModel(TopWith(start), options);
  for (int step = 0; step < 3; ++step) {
    merged->TrainMerged(Cat(batches, false), Cat(batches, true), {{4, 1.0}, {6, 1.0}});
    whole->Train(Cat(batches, false), Cat(batches, true), [] { return 1.0; });
  }
  ExpectClose(merged->ParameterCopies(), whole->ParameterCopies(), 1e-5);
  EXPECT_GT((merged->ParameterCopies()[0] - start[0]).abs().max().item<double>(), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, TrainMergedOptimizerTest,
                         ::testing::Values("adam", "adamw", "sgd", "kfac"));

// The replicas' hook sits between the checked gradients and the optimizer step, and is told the
// merged step's weight.
TEST(TrainMergedTest, GradientReducerSeesTheStepsWeightBeforeTheOptimizerSteps) {
  struct Zeroing : GradientReducer {
    StepWeight Reduce(const std::vector<at::Tensor>& gradients, StepWeight local) override {
      seen = local;
      count = gradients.size();
      for (const at::Tensor& gradient : gradients) gradient.zero_();
      return local;
    }
    StepWeight seen;
    size_t count = 0;
  } reducer;
  TopOptimizerOptions sgd;
  sgd.name = "sgd";
  sgd.momentum = 0;
  const auto top = MakeTopModel(BuildSplitModel(test::MlpOptions().model, 1).top, sgd);
  top->SetGradientReducer(&reducer);
  const std::vector<at::Tensor> before = top->ParameterCopies();
  const std::vector<Batch> batches = {MakeBatch(4, 31), MakeBatch(2, 32)};
  top->TrainMerged(Cat(batches, false), Cat(batches, true), {{4, 1.0}, {2, 0.5}});
  EXPECT_DOUBLE_EQ(reducer.seen.samples, 6);
  EXPECT_DOUBLE_EQ(reducer.seen.scaled_samples, 5);
  EXPECT_EQ(reducer.count, before.size());
  ExpectClose(top->ParameterCopies(), before, 0);  // the reduced (zero) gradients were applied
}

// ---- StepMerger ----

TEST(StepMergerTest, GroupsStayWithinMaxBatchAndEveryEntryRunsOnce) {
  std::mutex mutex;
  std::vector<int64_t> group_samples;
  std::atomic<int> runs{0};
  StepMerger merger(
      {25, std::chrono::microseconds(200000)},
      [&](const std::vector<StepMerger::Entry*>& group) {
        int64_t samples = 0;
        for (const StepMerger::Entry* entry : group) samples += entry->samples;
        std::lock_guard<std::mutex> lock(mutex);
        group_samples.push_back(samples);
        runs += static_cast<int>(group.size());
      },
      [] { return size_t{6}; });
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      StepMerger::Entry entry(10);
      merger.Run(entry);
      EXPECT_FALSE(entry.error);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(runs.load(), 6);
  for (int64_t samples : group_samples) EXPECT_LE(samples, 25);
  EXPECT_LT(merger.stats().groups, 6);
  EXPECT_EQ(merger.stats().entries, 6);
}

TEST(StepMergerTest, ALoneStepWaitsAboutMaxWaitForCompany) {
  constexpr auto kWait = std::chrono::milliseconds(60);
  StepMerger merger({64, kWait}, [](const std::vector<StepMerger::Entry*>&) {},
                    [] { return size_t{2}; });  // a second hospital that does not come
  for (int i = 0; i < 3; ++i) {
    StepMerger::Entry entry(4);
    const auto started = Clock::now();
    merger.Run(entry);
    const auto waited = Clock::now() - started;
    EXPECT_GE(waited, kWait);
    EXPECT_LT(waited, kWait + std::chrono::milliseconds(250));
  }
  // Alone and expected alone: no wait at all.
  StepMerger alone({64, kWait}, [](const std::vector<StepMerger::Entry*>&) {},
                   [] { return size_t{1}; });
  StepMerger::Entry entry(4);
  const auto started = Clock::now();
  alone.Run(entry);
  EXPECT_LT(Clock::now() - started, kWait / 2);
}

TEST(StepMergerTest, AnEscapingErrorReachesEveryStepOfTheGroup) {
  StepMerger merger({64, std::chrono::microseconds(0)},
                    [](const std::vector<StepMerger::Entry*>&) { throw InvalidInput("broken"); });
  StepMerger::Entry entry(4);
  merger.Run(entry);
  EXPECT_TRUE(entry.error);
}

TEST(StepMergerTest, BadOptionsAreRefusedNamingTheFlag) {
  EXPECT_THROW(ValidateStepMergerOptions({-1, std::chrono::microseconds(0)}), UserError);
  EXPECT_THROW(ValidateStepMergerOptions({16, std::chrono::microseconds(-5)}), UserError);
  EXPECT_THROW(ValidateStepMergerOptions({16, std::chrono::microseconds(5000000)}), UserError);
  EXPECT_THROW(ValidateStepMergerOptions({0, std::chrono::microseconds(100)}), UserError);
  EXPECT_NO_THROW(ValidateStepMergerOptions({0, std::chrono::microseconds(0)}));
  SplitServerOptions u_shaped = test::MlpOptions();
  u_shaped.model.tail_layers = 1;
  u_shaped.config = SplitConfig::kUShaped;
  u_shaped.merge = {64, std::chrono::microseconds(100)};
  EXPECT_THROW(SplitServer server(u_shaped), UserError);
}

// ---- SplitServer with merging on ----

SplitServerOptions MergingOptions(std::chrono::microseconds wait) {
  SplitServerOptions options = test::MlpOptions();
  options.optimizer = "sgd";
  options.momentum = 0;
  options.learning_rate = 1e-12;  // replies can be checked against the initial layers
  options.session_idle_timeout = std::chrono::milliseconds(0);
  options.merge = {64, wait};
  return options;
}

TEST(MergedServerTest, ConcurrentHospitalsGetTheirOwnRepliesFromFewerTopSteps) {
  SplitServer server(MergingOptions(std::chrono::microseconds(500000)));
  MetricsExporter metrics("");
  server.SetObserver(&metrics);
  const torch::nn::Sequential initial = TopWith(server.top_parameters());
  constexpr int kHospitals = 4, kSteps = 5;
  std::vector<std::string> sessions;
  for (int h = 0; h < kHospitals; ++h) {
    sessions.push_back(server.Join("h" + std::to_string(h), JoinFor(server)).session_id());
  }
  std::mutex mutex;
  std::set<int64_t> server_steps;
  std::vector<std::thread> threads;
  for (int h = 0; h < kHospitals; ++h) {
    threads.emplace_back([&, h] {
      for (int s = 0; s < kSteps; ++s) {
        const Batch batch = MakeBatch(2 + h, 100 + 10 * h + s);  // sizes tell hospitals apart
        const v1::TrainReply reply =
            server.Train("h" + std::to_string(h), TrainFor(sessions[h], batch));
        Own own;
        {
          std::lock_guard<std::mutex> lock(mutex);  // the reference layers are shared
          own = OwnStep(initial, batch);
        }
        EXPECT_NEAR(reply.loss(), own.loss, 1e-5);
        EXPECT_EQ(reply.correct(), own.correct);
        const at::Tensor gradient = GradientOf(reply);
        ASSERT_EQ(gradient.sizes(), own.cut_gradient.sizes());
        EXPECT_LE((gradient - own.cut_gradient).abs().max().item<double>(), 1e-6);
        std::lock_guard<std::mutex> lock(mutex);
        server_steps.insert(reply.server_step());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const ServerCounters counters = server.counters();
  EXPECT_EQ(counters.steps, kHospitals * kSteps);
  EXPECT_EQ(static_cast<int64_t>(server_steps.size()), kHospitals * kSteps);  // one number each
  EXPECT_EQ(counters.samples, kSteps * (2 + 3 + 4 + 5));
  EXPECT_LT(counters.top_steps, counters.steps);
  EXPECT_GE(counters.merged_steps, 1);
  EXPECT_EQ(counters.refused_steps, 0);
  const std::string text = metrics.Text();
  for (const std::string& line :
       {"cleave_top_step_hospitals_count " + std::to_string(counters.top_steps),
        "cleave_top_step_hospitals_sum " + std::to_string(counters.steps),
        "cleave_top_step_samples_sum " + std::to_string(counters.samples)}) {
    EXPECT_NE(text.find(line), std::string::npos) << "missing '" << line << "' in\n" << text;
  }
}

TEST(MergedServerTest, AHostileBatchIsRefusedAloneAndTheOthersStillTrain) {
  SplitServerOptions options = MergingOptions(std::chrono::microseconds(1000000));
  options.max_activation_abs = 1e30;  // its values pass decoding; its step overflows
  SplitServer server(options);
  const torch::nn::Sequential initial = TopWith(server.top_parameters());
  const std::vector<std::string> names = {"a", "evil", "c"};
  std::vector<std::string> sessions;
  for (const std::string& name : names) sessions.push_back(server.Join(name, JoinFor(server)).session_id());
  std::vector<Batch> batches = {MakeBatch(4, 41), MakeBatch(4, 42, 1e25), MakeBatch(4, 43)};
  std::vector<v1::TrainReply> replies(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      try {
        replies[i] = server.Train(names[i], TrainFor(sessions[i], batches[i]));
      } catch (const InvalidInput& error) {
        errors[i] = error.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_FALSE(errors[1].empty()) << "the hostile step was taken";
  for (size_t i : {size_t{0}, size_t{2}}) {
    EXPECT_TRUE(errors[i].empty()) << names[i] << ": " << errors[i];
    const Own own = OwnStep(initial, batches[i]);
    EXPECT_NEAR(replies[i].loss(), own.loss, 1e-5);
    EXPECT_LE((GradientOf(replies[i]) - own.cut_gradient).abs().max().item<double>(), 1e-6);
  }
  const ServerCounters counters = server.counters();
  EXPECT_EQ(counters.steps, 2);
  EXPECT_EQ(counters.top_steps, 2);  // the merged step failed; the two honest ones went alone
  EXPECT_EQ(counters.merged_steps, 0);
  EXPECT_EQ(counters.refused_steps, 1);
  for (const at::Tensor& parameter : server.top_parameters()) {
    EXPECT_TRUE(parameter.isfinite().all().item<bool>());
  }
}

// Rounds: hospital a trains version 0 after b closed a round alone (staleness 1, scale 1/2); its
// step and b's fresh one merge, each weighted by its own scale.
TEST(MergedServerTest, EachHospitalsStalenessScalesItsOwnShare) {
  SplitServerOptions options = MergingOptions(std::chrono::microseconds(1000000));
  constexpr double kLearningRate = 0.05;
  options.learning_rate = kLearningRate;
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.min_clients = 2;
  options.rounds.round_samples = 1000;
  options.rounds.max_staleness = 2;
  options.compression.mutable_updates()->set_method("none");
  SplitServer server(options);
  std::string a = server.Join("a", JoinFor(server)).session_id();
  const std::string b = server.Join("b", JoinFor(server)).session_id();
  ASSERT_EQ(server.Sync("a", SyncFor(a, -1)).action(), v1::SyncReply::TRAIN);
  ASSERT_EQ(server.Sync("b", SyncFor(b, -1)).action(), v1::SyncReply::TRAIN);
  a = server.Join("a", JoinFor(server)).session_id();  // a restarts; its assignment stays
  server.Train("b", TrainFor(b, MakeBatch(4, 51), 0));
  const at::Tensor delta = at::full({server.rounds()->num_parameters()}, 1e-3);
  server.SubmitUpdate("b", test::UpdateFor(b, 0, 1, 4, delta));
  ASSERT_EQ(server.rounds()->version(), 1);
  ASSERT_EQ(server.Sync("b", SyncFor(b, 0)).action(), v1::SyncReply::TRAIN);

  const std::vector<at::Tensor> before = server.top_parameters();
  const std::vector<Batch> batches = {MakeBatch(3, 52), MakeBatch(5, 53)};
  v1::TrainReply stale, fresh;
  std::thread ta([&] { stale = server.Train("a", TrainFor(a, batches[0], 0)); });
  std::thread tb([&] { fresh = server.Train("b", TrainFor(b, batches[1], 1)); });
  ta.join();
  tb.join();
  ASSERT_EQ(server.counters().merged_steps, 1) << "the two steps did not merge";
  EXPECT_TRUE(stale.round_closing());
  ExpectClose(server.top_parameters(),
              ReferenceSgd(TopWith(before), batches, {0.5, 1.0}, kLearningRate), 1e-5);
  // Not what equal weights would give.
  const std::vector<at::Tensor> unscaled =
      ReferenceSgd(TopWith(before), batches, {1.0, 1.0}, kLearningRate);
  double differs = 0;
  const std::vector<at::Tensor> after = server.top_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    differs = std::max(differs, (after[i] - unscaled[i]).abs().max().item<double>());
  }
  EXPECT_GT(differs, 1e-5);
}

// A step the rounds refuse (c was never told to train) leaves the group; a and b still merge.
TEST(MergedServerTest, AStepTheRoundsRefuseLeavesTheGroupAndTheOthersMerge) {
  SplitServerOptions options = MergingOptions(std::chrono::microseconds(1000000));
  constexpr double kLearningRate = 0.05;
  options.learning_rate = kLearningRate;
  options.rounds.schedule = Schedule::kSplitFed;
  options.rounds.min_clients = 2;
  options.rounds.round_samples = 1000;
  options.compression.mutable_updates()->set_method("none");
  SplitServer server(options);
  const std::vector<std::string> names = {"a", "b", "c"};
  std::vector<std::string> sessions;
  for (const std::string& name : names) {
    sessions.push_back(server.Join(name, JoinFor(server)).session_id());
  }
  ASSERT_EQ(server.Sync("a", SyncFor(sessions[0], -1)).action(), v1::SyncReply::TRAIN);
  ASSERT_EQ(server.Sync("b", SyncFor(sessions[1], -1)).action(), v1::SyncReply::TRAIN);
  const std::vector<at::Tensor> before = server.top_parameters();
  const std::vector<Batch> batches = {MakeBatch(4, 71), MakeBatch(6, 72), MakeBatch(5, 73)};
  std::vector<std::thread> threads;
  std::vector<std::string> errors(3);
  for (size_t i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      try {
        server.Train(names[i], TrainFor(sessions[i], batches[i], 0));
      } catch (const Refusal& error) {
        errors[i] = error.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(errors[0].empty()) << errors[0];
  EXPECT_TRUE(errors[1].empty()) << errors[1];
  EXPECT_FALSE(errors[2].empty()) << "c's step was admitted";
  const ServerCounters counters = server.counters();
  EXPECT_EQ(counters.merged_steps, 1);
  EXPECT_EQ(counters.top_steps, 1);
  EXPECT_EQ(counters.refused_steps, 1);
  ExpectClose(server.top_parameters(),
              ReferenceSgd(TopWith(before), {batches[0], batches[1]}, {1.0, 1.0}, kLearningRate),
              1e-5);
}

TEST(MergedServerTest, ALoneHospitalIsNotHeldMuchBeyondTheWait) {
  constexpr auto kWait = std::chrono::milliseconds(50);
  SplitServer server(MergingOptions(kWait));
  const std::string a = server.Join("a", JoinFor(server)).session_id();
  server.Join("b", JoinFor(server));  // joined, but sends nothing
  for (int s = 0; s < 3; ++s) {
    const auto started = Clock::now();
    server.Train("a", TrainFor(a, MakeBatch(4, 60 + s)));
    const auto took = Clock::now() - started;
    EXPECT_GE(took, kWait);
    EXPECT_LT(took, kWait + std::chrono::milliseconds(300));
  }
  EXPECT_EQ(server.counters().top_steps, 3);
}

}  // namespace
}  // namespace cleave::server
