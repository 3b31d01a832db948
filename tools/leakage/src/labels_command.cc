#include "labels_command.h"

#include <cstdio>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/leakage/recorded_label_leakage.h"

namespace cleave::leakage {

void LabelsFlags::Register(CLI::App& labels) {
  model.Register(labels);
  data.Register(labels);
  labels.add_option("--steps", options.steps,
                    "Training steps per configuration (and defence); real runs round up to whole "
                    "epochs of equal length")
      ->capture_default_str();
  labels.add_option("--batch-size", options.batch_size, "Training batch")->capture_default_str();
  labels.add_option("--lr", options.learning_rate, "Learning rate (all stages)")
      ->capture_default_str();
  labels.add_option("--optimizer", options.optimizer, "adam or sgd")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  labels.add_option("--tail-cut", options.tail_cut,
                    "u-shaped: first block of the hospital's tail (above --cut; 0: the last "
                    "block, a one-layer tail)")
      ->capture_default_str();
  labels.add_option("--positive-class", positive_class,
                    "Attack the binary task 'class K or not' (Li et al.'s skewed setting); -1: "
                    "all classes, AUC one-vs-rest averaged over classes")
      ->capture_default_str();
  labels.add_option("--label-defence", defence,
                    "What the label holder does to the gradient it returns at the attacked cut: "
                    "none, clip (each sample's norm to at most X x the batch's median norm) or "
                    "noise (Gaussian, norm about X x the median norm)")
      ->check(CLI::IsMember({"none", "clip", "noise"}))
      ->capture_default_str();
  labels.add_option("--label-defence-strength", options.defence.strength,
                    "X of --label-defence")
      ->capture_default_str();
  labels.add_option("--markdown", markdown_path, "Also write the table to this file");
  labels.add_flag("--replica", replica,
                  "Attack an in-process replica of each configuration's arithmetic (every stage "
                  "boundary detached) instead of real runs through SplitServer and SplitTrainer "
                  "(the default: vanilla, u-shaped and a two-party vertical run, the gradients "
                  "recorded where the attacker receives them)");
  labels.add_option("--seed", options.seed, "Seed of weights, batch order and noise")
      ->capture_default_str();
}

int RunLabels(const LabelsFlags& flags) {
  LabelLeakageOptions options = flags.options;
  options.model = flags.model.Spec();
  options.defence.kind = privacy::ParseGradientDefenceKind(flags.defence);
  if (flags.positive_class >= 0) options.model.num_classes = 2;
  CheckLabelLeakageOptions(options);
  client::TrainingData data = client::LoadTrainingData(flags.data, flags.model.num_classes);
  if (flags.positive_class >= 0) {
    data.train = OneVsRest(data.train, flags.positive_class);
    data.test = OneVsRest(data.test, flags.positive_class);
  }
  if (!flags.markdown_path.empty()) WriteFileAtomic(flags.markdown_path, "");  // fail early
  std::printf("label leakage (%s): %s, %lld steps of %lld, %lld training and %lld test samples%s\n",
              flags.replica ? "in-process replica" : "real runs",
              DescribeSpec(options.model).c_str(), static_cast<long long>(options.steps),
              static_cast<long long>(options.batch_size),
              static_cast<long long>(data.train.size()), static_cast<long long>(data.test.size()),
              flags.positive_class >= 0 ? " (binary: one class against the rest)" : "");
  std::fflush(stdout);
  const std::vector<LabelLeakageRow> rows =
      flags.replica ? MeasureLabelLeakage(data.train, data.test, options)
                    : MeasureRecordedLabelLeakage(data.train, data.test, options);
  const std::string table = LabelLeakageMarkdown(rows);
  std::printf("%s", table.c_str());
  if (!flags.markdown_path.empty()) WriteFileAtomic(flags.markdown_path, table);
  return 0;
}

}  // namespace cleave::leakage
