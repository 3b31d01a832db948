// Which local data a client trains and tests on: Fashion-MNIST, a CSV file or an image folder,
// optionally limited,
// and optionally one shard of a seeded partition (so several hospitals can share one data set).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "cleave/client/feature_stats.h"
#include "cleave/client/image_data.h"
#include "cleave/core/dataset.h"

namespace cleave::client {

struct DataFlags {
  std::string dataset = "fashion-mnist";  // "fashion-mnist", "csv" or "images"
  std::string data_dir = kDefaultFashionMnistDir;
  std::string csv_path;       // training CSV (dataset=csv)
  std::string test_csv_path;  // optional; otherwise --test-fraction of csv_path is held out
  std::string label_column = "label";
  std::string labels;               // class names of string labels, comma-separated ("" : numeric)
  std::string csv_delimiter = ",";  // one character, or "\t" / "tab"
  // CSV standardisation (feature_stats.h)
  std::string standardize = "auto";           // "auto", "file", "shared" or "none"
  std::string stats_path;                     // shared feature statistics (--stats)
  std::string fit_stats_path;                 // --fit-stats: write statistics here, exit
  std::vector<std::string> pool_stats_paths;  // --pool-stats: statistics pooled into them
  double test_fraction = 0.2;
  int64_t train_limit = 0;  // use only the first N training samples (0: all)
  int64_t test_limit = 0;
  int shard = 0;                  // this client's shard index ...
  int shards = 1;                 // ... of this many
  std::string partition = "iid";  // "iid" or "dirichlet"
  double dirichlet_beta = 0.5;
  uint64_t partition_seed = 42;
  ImageFlags images;  // dataset=images

  void Register(CLI::App& app);
};

struct TrainingData {
  Dataset train;
  Dataset test;
};

// Loads, standardises CSV features (as --standardize says), and takes this client's shard.
// Image folders: see LoadImageData (--labels and --test-fraction apply to them too).
// `num_classes` is the model's class count: CSV labels are checked against it (or against
// --labels), and a class with no training sample is logged as a warning. Throws UserError for a
// label outside it, an empty test split, or feature statistics (--stats) whose columns are not
// the data's.
TrainingData LoadTrainingData(const DataFlags& flags, int64_t num_classes);

// How CSV features are standardised: with statistics every hospital shares (--stats), with the
// training split's own, or not at all.
enum class Standardization { kShared, kFile, kNone };
// --standardize and --stats together ("auto": shared when --stats is given, else file); throws
// UserError for an unknown mode, shared without --stats, or --stats with file or none.
Standardization ParseStandardization(const std::string& mode, const std::string& stats_path);

// --fit-stats: the statistics of --csv's training split (the rows LoadTrainingData trains on
// before --train-limit and --shard), pooled with --pool-stats files if any.
FeatureStats FitSharedStats(const DataFlags& flags, int64_t num_classes);

// The classes in 0..num_classes-1 that no label in `labels` has.
std::vector<int64_t> MissingClasses(const at::Tensor& labels, int64_t num_classes);
// Logs one warning line naming the classes of 0..num_classes-1 absent from `labels` (if any).
void WarnAboutMissingClasses(const at::Tensor& labels, int64_t num_classes,
                             const std::string& source);

// The CSV delimiter a --csv-delimiter value names: one character, or "\t" or "tab" for a tab.
char ParseCsvDelimiter(const std::string& text);
// Class names from "a,b,c" (spaces around names trimmed).
std::vector<std::string> ParseClassNames(const std::string& text);

}  // namespace cleave::client
