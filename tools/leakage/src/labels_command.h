// `cleave-leakage labels`: label leakage of the split configurations, from real runs
// (recorded_label_leakage.h) or, with --replica, an in-process replica (label_leakage.h).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include "cleave/client/training_data.h"
#include "cleave/core/model_flags.h"
#include "cleave/leakage/label_leakage.h"

namespace cleave::leakage {

struct LabelsFlags {
  ModelFlags model;
  client::DataFlags data;
  LabelLeakageOptions options;
  int64_t positive_class = -1;
  std::string defence = "none";
  std::string markdown_path;
  bool replica = false;  // the in-process replica (label_leakage.h) instead of real runs

  void Register(CLI::App& labels);
};

int RunLabels(const LabelsFlags& flags);

}  // namespace cleave::leakage
