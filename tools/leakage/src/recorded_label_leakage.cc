#include "cleave/leakage/recorded_label_leakage.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <string>

#include "cleave/client/split_trainer.h"
#include "cleave/client/vertical_features.h"
#include "cleave/core/error.h"
#include "cleave/leakage/wire_recorder.h"
#include "cleave/privacy/label_inference.h"
#include "cleave/server/in_process_link.h"
#include "cleave/server/split_server.h"

namespace cleave::leakage {
namespace {

// How a run of about options.steps steps is laid out: whole epochs of equal length.
struct StepPlan {
  int64_t epochs = 1;
  int64_t steps_per_epoch = 1;
};

StepPlan PlanSteps(const Dataset& train, const LabelLeakageOptions& options) {
  const int64_t per_epoch = (train.size() + options.batch_size - 1) / options.batch_size;
  CLEAVE_CHECK_USER(per_epoch >= 1, "label leakage: the training set is empty");
  StepPlan plan;
  plan.epochs = (options.steps + per_epoch - 1) / per_epoch;
  plan.steps_per_epoch = (options.steps + plan.epochs - 1) / plan.epochs;
  return plan;
}

// The labels of the batches a trainer drew with `seed` under `plan` (BatchIterator's order
// depends on the seed and the epoch only).
std::vector<at::Tensor> ReplayLabels(const Dataset& train, int64_t batch_size, uint64_t seed,
                                     const StepPlan& plan) {
  std::vector<at::Tensor> labels;
  BatchIterator batches(train, batch_size, seed);
  at::Tensor x, y;
  for (int64_t epoch = 0; epoch < plan.epochs; ++epoch) {
    batches.StartEpoch(epoch);
    for (int64_t step = 0; step < plan.steps_per_epoch && batches.Next(&x, &y); ++step) {
      labels.push_back(y);
    }
  }
  return labels;
}

server::SplitServerOptions ServerOptions(const LabelLeakageOptions& options, const ModelSpec& spec,
                                         SplitConfig config) {
  server::SplitServerOptions server;
  server.model = spec;
  server.config = config;
  server.seed = options.seed;
  server.optimizer = options.optimizer;
  server.learning_rate = options.learning_rate;
  server.max_batch = std::max<int64_t>(4096, options.batch_size);
  server.vertical.parties = 2;
  server.vertical.join = server::JoinMode::kSum;
  server.vertical.label_holder = 1;
  server.vertical.party_timeout = std::chrono::milliseconds(120000);
  return server;  // a dense link: what the attacker receives is the gradient itself
}

client::TrainerOptions TrainerOptions(const LabelLeakageOptions& options, const ModelSpec& spec,
                                      SplitConfig config, const StepPlan& plan, int party = 0) {
  client::TrainerOptions trainer;
  trainer.model = spec;
  trainer.config = config;
  trainer.party = party;
  trainer.seed = options.seed + static_cast<uint64_t>(party);
  trainer.optimizer = options.optimizer;
  trainer.learning_rate = options.learning_rate;
  trainer.batch_size = options.batch_size;
  trainer.max_steps_per_epoch = plan.steps_per_epoch;
  return trainer;
}

void Train(client::SplitTrainer& trainer, const Dataset& train, const StepPlan& plan) {
  for (int64_t epoch = 0; epoch < plan.epochs; ++epoch) {
    trainer.TrainEpoch(train, epoch, plan.epochs, nullptr);
  }
}

std::string DefenceName(const privacy::GradientDefence& defence) {
  if (defence.kind == privacy::GradientDefenceKind::kNone) return "none";
  char text[64];
  std::snprintf(text, sizeof text, "%s %g", privacy::GradientDefenceName(defence.kind),
                defence.strength);
  return text;
}

// The attacks on `received` (one tensor per step) against the batches' `labels`.
LabelLeakageRow Attack(const char* configuration, const char* observer,
                       const privacy::GradientDefence& defence,
                       const std::vector<at::Tensor>& received,
                       const std::vector<at::Tensor>& labels, int64_t num_classes,
                       double accuracy) {
  CLEAVE_ENFORCE(received.size() == labels.size(), configuration, ": ", received.size(),
                 " gradients recorded for ", labels.size(), " batches");
  privacy::LabelInference inference(num_classes);
  for (size_t i = 0; i < received.size(); ++i) inference.Observe(received[i], labels[i]);
  const privacy::LabelInferenceReport report = inference.Report();
  LabelLeakageRow row;
  row.configuration = configuration;
  row.observer = observer;
  row.defence = DefenceName(defence);
  row.norm_auc = report.norm_auc;
  row.cosine_auc = report.cosine_auc;
  row.test_accuracy = accuracy;
  row.observed_batches = report.batches;
  return row;
}

LabelLeakageRow VanillaRun(const Dataset& train, const Dataset& test,
                           const LabelLeakageOptions& options, const StepPlan& plan) {
  server::SplitServer server(ServerOptions(options, options.model, SplitConfig::kVanilla));
  server::InProcessLink in_process(server, "hospital");
  WireRecord record;
  WireRecorder wire(in_process, {}, &record);
  client::SplitTrainer trainer(
      TrainerOptions(options, options.model, SplitConfig::kVanilla, plan), wire);
  trainer.Join(train.size());
  Train(trainer, train, plan);
  const double accuracy = trainer.Evaluate(test).accuracy;
  trainer.Leave();
  CLEAVE_ENFORCE(record.train_requests_with_labels == record.train_requests,
                 "a vanilla Train request went without labels");
  LabelLeakageRow row;
  row.configuration = "vanilla";
  row.observer = "server (labels in " + std::to_string(record.train_requests_with_labels) +
                 " of " + std::to_string(record.train_requests) + " Train requests)";
  row.defence = "none";
  row.holds_labels = true;
  row.test_accuracy = accuracy;
  row.observed_batches = record.train_requests;
  return row;
}

ModelSpec UShapedSpec(const LabelLeakageOptions& options) {
  ModelSpec spec = options.model;
  const int tail_cut = options.tail_cut > 0 ? options.tail_cut : NumBlocks(spec) - 1;
  spec.tail_layers = NumBlocks(spec) - tail_cut;
  return spec;
}

LabelLeakageRow UShapedRun(const Dataset& train, const Dataset& test,
                           const LabelLeakageOptions& options, const StepPlan& plan,
                           const privacy::GradientDefence& defence) {
  const ModelSpec spec = UShapedSpec(options);
  server::SplitServer server(ServerOptions(options, spec, SplitConfig::kUShaped));
  std::mutex mutex;
  std::vector<at::Tensor> received;  // dL/da2 as the server has validated it
  server.u_shaped()->SetGradientObserver(
      [&](const std::string&, int64_t, const at::Tensor& gradient) {
        std::lock_guard<std::mutex> lock(mutex);
        received.push_back(gradient.detach().to(at::kCPU).clone());
      });
  server::InProcessLink in_process(server, "hospital");
  WireRecorder::Options wire_options;
  wire_options.defend_middle_gradient = defence;  // the hospital defends what it sends
  wire_options.seed = options.seed;
  WireRecord record;
  WireRecorder wire(in_process, wire_options, &record);
  client::SplitTrainer trainer(TrainerOptions(options, spec, SplitConfig::kUShaped, plan), wire);
  trainer.Join(train.size());
  Train(trainer, train, plan);
  const double accuracy = trainer.Evaluate(test).accuracy;
  trainer.Leave();
  CLEAVE_ENFORCE(record.train_requests_with_labels == 0, "a U-shaped request carried labels");
  return Attack("u-shaped", "server (dL/da2 from the hospital)", defence, received,
                ReplayLabels(train, options.batch_size, options.seed, plan),
                spec.num_classes, accuracy);
}

// Party `party`'s share of the features: image halves (the other pixels zero) or column halves.
client::FeaturePartFlags PartFlags(const Dataset& data, int party) {
  client::FeaturePartFlags flags;
  if (data.inputs.dim() == 4) {
    flags.image_part = party == 0 ? "left" : "right";
  } else {
    const int64_t half = data.inputs.size(1) / 2;
    flags.columns = party == 0 ? "0:" + std::to_string(half)
                               : std::to_string(half) + ":" + std::to_string(data.inputs.size(1));
  }
  return flags;
}

Dataset PartOf(const Dataset& data, int party) {
  return client::ApplyFeaturePart(data, PartFlags(data, party), /*align=*/false);
}

ModelSpec PartySpec(const ModelSpec& model, const Dataset& part) {
  ModelSpec spec = model;
  spec.input_shape.assign(part.inputs.sizes().begin() + 1, part.inputs.sizes().end());
  return spec;
}

struct PartyResult {
  double accuracy = 0;
  uint64_t batch_seed = 0;
};

// One vertical party: joins, trains, evaluates (every party evaluates each test batch), leaves.
// Party 0 builds its model first (`built` is set then), party 1 after it (`wait_for` has it):
// each seeds LibTorch's global generator, so two built at once would draw each other's weights,
// and the order decides the generator's state that the server's dropout draws from.
PartyResult RunParty(server::SplitServer& server, const WireRecorder::Options& wire_options,
                     WireRecord* record, const Dataset& train, const Dataset& test,
                     const LabelLeakageOptions& options, const StepPlan& plan, int party,
                     std::promise<void>* built, std::shared_future<void> wait_for) {
  const Dataset mine = PartOf(train, party);
  server::InProcessLink in_process(server, "party-" + std::to_string(party));
  WireRecorder wire(in_process, wire_options, record);
  if (wait_for.valid()) wait_for.get();  // rethrows if party 0 could not build its model
  std::unique_ptr<client::SplitTrainer> built_trainer;
  try {
    built_trainer = std::make_unique<client::SplitTrainer>(
        TrainerOptions(options, PartySpec(options.model, mine), SplitConfig::kVertical, plan,
                       party),
        wire);
  } catch (...) {
    if (built != nullptr) built->set_exception(std::current_exception());
    throw;
  }
  if (built != nullptr) built->set_value();
  client::SplitTrainer& trainer = *built_trainer;
  PartyResult result;
  result.batch_seed = trainer.Join(mine.size()).server().vertical_batch_seed();
  Train(trainer, mine, plan);
  result.accuracy = trainer.Evaluate(PartOf(test, party)).accuracy;
  trainer.Leave();
  return result;
}

LabelLeakageRow VerticalRun(const Dataset& train, const Dataset& test,
                            const LabelLeakageOptions& options, const StepPlan& plan,
                            const privacy::GradientDefence& defence) {
  server::SplitServer server(ServerOptions(options, options.model, SplitConfig::kVertical));
  WireRecorder::Options passive_options;
  passive_options.record_reply_gradients = true;
  passive_options.defend_reply_gradient = defence;  // the server defends the passive slice
  passive_options.seed = options.seed;
  WireRecorder::Options holder_options;
  holder_options.record_labels = true;
  WireRecord passive_wire, holder_wire;
  std::promise<void> passive_built;
  const std::shared_future<void> after_passive = passive_built.get_future().share();
  auto passive = std::async(std::launch::async, [&] {
    return RunParty(server, passive_options, &passive_wire, train, test, options, plan, 0,
                    &passive_built, {});
  });
  const PartyResult holder = RunParty(server, holder_options, &holder_wire, train, test, options,
                                      plan, 1, nullptr, after_passive);
  passive.get();
  const std::vector<at::Tensor> labels =
      ReplayLabels(train, options.batch_size, holder.batch_seed, plan);
  CLEAVE_ENFORCE(holder_wire.labels.size() == labels.size(), "the label holder sent ",
                 holder_wire.labels.size(), " label batches, ", labels.size(), " replayed");
  for (size_t i = 0; i < labels.size(); ++i) {
    CLEAVE_ENFORCE(at::equal(holder_wire.labels[i], labels[i]),
                   "the replayed batch order differs from the label holder's at step ", i);
  }
  return Attack("vertical (2 parties, sum)", "passive party 0 (its gradient from the server)",
                defence, passive_wire.reply_gradients, labels, options.model.num_classes,
                holder.accuracy);
}

void AddDefended(const Dataset& train, const Dataset& test, const LabelLeakageOptions& options,
                 const StepPlan& plan, const privacy::GradientDefence& defence,
                 std::vector<LabelLeakageRow>* rows) {
  rows->push_back(UShapedRun(train, test, options, plan, defence));
  rows->push_back(VerticalRun(train, test, options, plan, defence));
}

}  // namespace

void CheckRecordedLabelLeakageOptions(const LabelLeakageOptions& options) {
  CheckLabelLeakageOptions(options);
}

std::vector<LabelLeakageRow> MeasureRecordedLabelLeakage(const Dataset& train, const Dataset& test,
                                                         const LabelLeakageOptions& options) {
  CheckRecordedLabelLeakageOptions(options);
  const StepPlan plan = PlanSteps(train, options);
  std::vector<LabelLeakageRow> rows = {VanillaRun(train, test, options, plan)};
  AddDefended(train, test, options, plan, {}, &rows);
  if (options.defence.kind != privacy::GradientDefenceKind::kNone) {
    AddDefended(train, test, options, plan, options.defence, &rows);
  }
  return rows;
}

}  // namespace cleave::leakage
