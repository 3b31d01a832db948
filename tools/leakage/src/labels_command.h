// `cleave-leakage labels`: label leakage of the split configurations (label_leakage.h).
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

  void Register(CLI::App& labels);
};

int RunLabels(const LabelsFlags& flags);

}  // namespace cleave::leakage
