#include "cleave/leakage/label_leakage.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/optimizer.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "cleave/core/error.h"
#include "cleave/core/optimizer_factory.h"
#include "cleave/privacy/label_inference.h"

namespace cleave::leakage {
namespace {

using torch::nn::Sequential;

int TailCut(const LabelLeakageOptions& options) {
  return options.tail_cut > 0 ? options.tail_cut : NumBlocks(options.model) - 1;
}

std::vector<Sequential> VanillaStages(const LabelLeakageOptions& options) {
  SplitModel model = BuildSplitModel(options.model, options.seed);
  return {model.bottom, model.top};
}

// Bottom, middle and tail as three Sequentials of the zoo's layers: the model cut at the tail,
// whose client side is divided again at the bottom's cut (same seed, so the same weights as a
// vanilla model of that seed).
std::vector<Sequential> UShapedStages(const LabelLeakageOptions& options) {
  ModelSpec through_middle = options.model;
  through_middle.cut = TailCut(options);
  SplitModel upper = BuildSplitModel(through_middle, options.seed);
  const size_t bottom_layers = BuildSplitModel(options.model, options.seed).bottom->size();
  Sequential bottom, middle;
  size_t index = 0;
  for (const auto& layer : *upper.bottom) {
    (index++ < bottom_layers ? bottom : middle)->push_back(layer);
  }
  return {bottom, middle, upper.top};
}

struct Run {
  privacy::LabelInferenceReport report;
  double accuracy = 0;
};

// One step with every boundary detached, as if each stage ran on its own machine. The label
// holder applies the defence to the gradient crossing `observed` (the input of stage
// `observed`); that defended gradient is what the observer receives, returned here.
at::Tensor TrainStep(std::vector<Sequential>& stages, const at::Tensor& x, const at::Tensor& y,
                     size_t observed, const privacy::GradientDefence& defence,
                     uint64_t noise_seed) {
  std::vector<at::Tensor> inputs = {x}, outputs;
  for (auto& stage : stages) {
    outputs.push_back(stage->forward(inputs.back()));
    inputs.push_back(outputs.back().detach().requires_grad_(true));
  }
  at::nll_loss(at::log_softmax(outputs.back(), 1), y).backward();
  at::Tensor received;
  for (size_t i = stages.size() - 1; i > 0; --i) {
    at::Tensor gradient = inputs[i].grad();
    if (i == observed) {
      gradient = privacy::ApplyGradientDefence(gradient, defence, noise_seed);
      received = gradient;
    }
    outputs[i - 1].backward(gradient);
  }
  return received;
}

double TestAccuracy(std::vector<Sequential>& stages, const Dataset& test) {
  at::NoGradGuard no_grad;
  for (auto& stage : stages) stage->eval();
  int64_t correct = 0;
  for (int64_t start = 0; start < test.size(); start += 1024) {
    const int64_t end = std::min(test.size(), start + 1024);
    at::Tensor out = test.inputs.slice(0, start, end);
    for (auto& stage : stages) out = stage->forward(out);
    correct += (out.argmax(1) == test.labels.slice(0, start, end)).sum().item<int64_t>();
  }
  for (auto& stage : stages) stage->train();
  return test.size() > 0 ? static_cast<double>(correct) / static_cast<double>(test.size()) : 0;
}

Run TrainAndAttack(std::vector<Sequential> stages, size_t observed, const Dataset& train,
                   const Dataset& test, const LabelLeakageOptions& options,
                   const privacy::GradientDefence& defence) {
  std::vector<at::Tensor> parameters;
  for (auto& stage : stages) {
    for (const at::Tensor& p : stage->parameters()) parameters.push_back(p);
  }
  auto optimizer = MakeOptimizer(options.optimizer, parameters, options.learning_rate);
  privacy::LabelInference inference(options.model.num_classes);
  BatchIterator batches(train, options.batch_size, options.seed);
  at::Tensor x, y;
  int64_t epoch = 0;
  for (int64_t step = 0; step < options.steps; ++step) {
    if (!batches.Next(&x, &y)) {
      batches.StartEpoch(++epoch);
      CLEAVE_CHECK_USER(batches.Next(&x, &y), "label leakage: the training set is empty");
    }
    optimizer->zero_grad();
    const at::Tensor received =
        TrainStep(stages, x, y, observed, defence, options.seed * 1000003u + step);
    optimizer->step();
    inference.Observe(received, y);
  }
  return {inference.Report(), TestAccuracy(stages, test)};
}

std::string DefenceName(const privacy::GradientDefence& defence) {
  if (defence.kind == privacy::GradientDefenceKind::kNone) return "none";
  char text[64];
  std::snprintf(text, sizeof text, "%s %g", privacy::GradientDefenceName(defence.kind),
                defence.strength);
  return text;
}

LabelLeakageRow Row(const char* configuration, const char* observer,
                    const privacy::GradientDefence& defence, const Run& run) {
  LabelLeakageRow row;
  row.configuration = configuration;
  row.observer = observer;
  row.defence = DefenceName(defence);
  row.norm_auc = run.report.norm_auc;
  row.cosine_auc = run.report.cosine_auc;
  row.test_accuracy = run.accuracy;
  row.observed_batches = run.report.batches;
  return row;
}

void AddRows(const Dataset& train, const Dataset& test, const LabelLeakageOptions& options,
             const privacy::GradientDefence& defence, std::vector<LabelLeakageRow>* rows) {
  const Run vanilla = TrainAndAttack(VanillaStages(options), 1, train, test, options, defence);
  LabelLeakageRow server = Row("vanilla", "server (receives the labels)", defence, vanilla);
  server.holds_labels = true;
  server.norm_auc = server.cosine_auc = 1.0;
  rows->push_back(server);
  rows->push_back(Row("vanilla / vertical", "passive party (dL/da at its cut)", defence, vanilla));
  const Run u_shaped = TrainAndAttack(UShapedStages(options), 2, train, test, options, defence);
  rows->push_back(Row("u-shaped", "server (dL/da2 from the hospital)", defence, u_shaped));
}

}  // namespace

void CheckLabelLeakageOptions(const LabelLeakageOptions& options) {
  CLEAVE_CHECK_USER(options.model.architecture != "torchscript",
                    "label leakage trains the zoo's models (cnn, mlp), not TorchScript halves");
  const int blocks = NumBlocks(options.model);
  CLEAVE_CHECK_USER(options.steps >= 1, "--steps must be at least 1");
  CLEAVE_CHECK_USER(options.batch_size >= 2, "--batch-size must be at least 2");
  CLEAVE_CHECK_USER(std::isfinite(options.learning_rate) && options.learning_rate > 0,
                    "--lr must be > 0");
  const int tail = TailCut(options);
  CLEAVE_CHECK_USER(options.model.cut < tail && tail < blocks, "--tail-cut ", tail,
                    " must be above --cut ", options.model.cut, " and below the ", blocks,
                    " blocks of the model");
  if (options.defence.kind != privacy::GradientDefenceKind::kNone) {
    CLEAVE_CHECK_USER(std::isfinite(options.defence.strength) && options.defence.strength > 0,
                      "--label-defence-strength must be > 0");
  }
}

std::vector<LabelLeakageRow> MeasureLabelLeakage(const Dataset& train, const Dataset& test,
                                                 const LabelLeakageOptions& options) {
  CheckLabelLeakageOptions(options);
  std::vector<LabelLeakageRow> rows;
  AddRows(train, test, options, {}, &rows);
  if (options.defence.kind != privacy::GradientDefenceKind::kNone) {
    AddRows(train, test, options, options.defence, &rows);
  }
  return rows;
}

std::string LabelLeakageMarkdown(const std::vector<LabelLeakageRow>& rows) {
  std::string out =
      "| configuration | attacker (what it receives) | defence | norm AUC | cosine AUC | test "
      "accuracy |\n|---|---|---|---|---|---|\n";
  for (const LabelLeakageRow& row : rows) {
    char line[512];
    if (row.holds_labels) {
      std::snprintf(line, sizeof line, "| %s | %s | %s | 1 (has the labels) | 1 | %.4f |\n",
                    row.configuration.c_str(), row.observer.c_str(), row.defence.c_str(),
                    row.test_accuracy);
    } else {
      std::snprintf(line, sizeof line, "| %s | %s | %s | %.4f | %.4f | %.4f |\n",
                    row.configuration.c_str(), row.observer.c_str(), row.defence.c_str(),
                    row.norm_auc, row.cosine_auc, row.test_accuracy);
    }
    out += line;
  }
  return out;
}

Dataset OneVsRest(const Dataset& data, int64_t positive_class) {
  CLEAVE_CHECK_USER(positive_class >= 0 && positive_class < data.num_classes,
                    "--positive-class ", positive_class, " is outside 0..", data.num_classes - 1);
  Dataset binary = data;
  binary.labels = (data.labels == positive_class).to(at::kLong);
  binary.num_classes = 2;
  return binary;
}

}  // namespace cleave::leakage
