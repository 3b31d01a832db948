// Per-column statistics of tabular features (mean and standard deviation, by column name) that
// every hospital standardises with, so that the same model sees the same numbers everywhere.
// Written to and read from a small JSON file (cleave-client --fit-stats / --stats); several
// hospitals' files can be pooled without pooling their rows.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cleave/core/dataset.h"

namespace cleave::client {

struct FeatureStats {
  std::vector<std::string> columns;  // names, unique
  std::vector<double> mean;          // per column
  std::vector<double> std;           // per column, population (divides by rows), >= 0
  int64_t rows = 0;                  // rows the statistics were computed from
};

// The statistics of `features` ([N, F], N >= 1) whose columns are named `columns` (F names).
FeatureStats FitFeatureStats(const at::Tensor& features, const std::vector<std::string>& columns);

// The statistics of all parts' rows together (exact pooled mean and variance, weighted by rows).
// Every part must have the same columns (in any order; the first part's order is kept); throws
// UserError naming `sources[i]` otherwise.
FeatureStats PoolFeatureStats(const std::vector<FeatureStats>& parts,
                              const std::vector<std::string>& sources);

// JSON: {"format": "cleave-feature-stats", "version": 1, "rows": N,
//        "columns": [{"name": ..., "mean": ..., "std": ...}, ...]}
std::string FeatureStatsToJson(const FeatureStats& stats);
// Throws UserError naming `source` for text that is not such JSON, or a repeated or empty
// column name, a mean or std that is not finite, a negative std or a rows count below 1.
FeatureStats FeatureStatsFromJson(const std::string& text, const std::string& source);
void SaveFeatureStats(const std::string& path, const FeatureStats& stats);
FeatureStats LoadFeatureStats(const std::string& path);

// The statistics as a standardiser of features in the statistics' column order (a zero std
// becomes 1: the column is only centred).
Standardizer SharedStandardizer(const FeatureStats& stats);
// For each of the statistics' columns, its index in `columns` (a data set's feature columns):
// the index_select that puts the data in the statistics' order, which is then the model's input
// order at every hospital, whatever the order of its file. Throws UserError in one line naming
// the data's columns without statistics and the statistics' columns the data lacks.
std::vector<int64_t> StatsColumnOrder(const FeatureStats& stats,
                                      const std::vector<std::string>& columns,
                                      const std::string& source);

}  // namespace cleave::client
