// Which local data a client trains and tests on: Fashion-MNIST or a CSV file, optionally limited,
// and optionally one shard of a seeded partition (so several hospitals can share one data set).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "cleave/core/dataset.h"

namespace cleave::client {

struct DataFlags {
  std::string dataset = "fashion-mnist";  // "fashion-mnist" or "csv"
  std::string data_dir = kDefaultFashionMnistDir;
  std::string csv_path;       // training CSV (dataset=csv)
  std::string test_csv_path;  // optional; otherwise --test-fraction of csv_path is held out
  std::string label_column = "label";
  double test_fraction = 0.2;
  int64_t train_limit = 0;  // use only the first N training samples (0: all)
  int64_t test_limit = 0;
  int shard = 0;                  // this client's shard index ...
  int shards = 1;                 // ... of this many
  std::string partition = "iid";  // "iid" or "dirichlet"
  double dirichlet_beta = 0.5;
  uint64_t partition_seed = 42;

  void Register(CLI::App& app);
};

struct TrainingData {
  Dataset train;
  Dataset test;
};

// Loads, standardises CSV features on the training split, and takes this client's shard.
TrainingData LoadTrainingData(const DataFlags& flags);

}  // namespace cleave::client
