// In-memory data sets: Fashion-MNIST (IDX, gzip) and generic numeric CSV; seeded shuffling,
// train/validation splits and partitioning across clients.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cleave/core/error.h"

namespace cleave {

// inputs: float32 [N, ...] (images are [N, 1, 28, 28] scaled to [0, 1]); labels: int64 [N].
struct Dataset {
  at::Tensor inputs;
  at::Tensor labels;
  int64_t num_classes = 0;

  int64_t size() const;
  // Rows `indices` (int64 tensor or vector) as a new data set sharing nothing with this one.
  Dataset Subset(const std::vector<int64_t>& indices) const;
};

enum class FashionMnistSplit { kTrain, kTest };

// Reads {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] from `dir` (gzip through zlib).
// Validates magic numbers, dimensions and label range; throws UserError naming the file.
Dataset LoadFashionMnist(const std::string& dir, FashionMnistSplit split);
constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Per-feature standardisation, fitted on the training split only and applied to every split.
struct Standardizer {
  at::Tensor mean;                                      // [F]
  at::Tensor std;                                       // [F], zeros replaced by 1
  static Standardizer Fit(const at::Tensor& features);  // features: [N, F], N >= 1
  // Throws UserError if `features` is not [M, F] with the fitted F.
  at::Tensor Apply(const at::Tensor& features) const;
};

struct CsvOptions {
  std::string label_column = "label";  // header name of the label column
  char delimiter = ',';
  // The classes every file and every hospital shares, so that a file lacking a class keeps the
  // same labels as the others. Without class names, label cells are integers 0..num_classes-1
  // used as they are; with class names, a label cell is one of the names and its index is the
  // label (num_classes is then the number of names, or 0 to take it from them).
  int64_t num_classes = 0;
  std::vector<std::string> class_names;
  // The feature columns a file must have, matched by header name (the data set's columns follow
  // this order). Empty: any feature columns, in the file's order.
  std::vector<std::string> feature_columns;
};

// A label cell that is outside the shared label map (an unknown name, a number outside
// 0..num_classes-1, or a string where class numbers are expected).
class CsvLabelError : public UserError {
 public:
  using UserError::UserError;
};

// A CSV file with a header row, numeric feature columns and a label column. A UTF-8 byte-order
// mark is skipped; blank lines are skipped; cells are plain numbers (no quoting). Throws
// UserError naming file and line for a missing file, missing label column, empty or repeated
// column name, feature columns other than `options.feature_columns`, non-numeric or non-finite
// cell, or ragged row, and CsvLabelError for a label outside the label map. Not standardised.
// `feature_columns`, if given, receives the names of the data set's feature columns in order.
Dataset LoadCsv(const std::string& path, const CsvOptions& options,
                std::vector<std::string>* feature_columns = nullptr);

// A seeded permutation of 0..n-1 (same seed, same permutation, on every platform: our own
// Fisher-Yates over std::mt19937_64, whose output the standard fixes).
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed);

struct TrainValidation {
  Dataset train;
  Dataset validation;
};
// Shuffles with `seed` and holds out round(validation_fraction * N) rows; throws UserError if the
// fraction is outside [0, 1) or no training row would be left.
TrainValidation SplitTrainValidation(const Dataset& data, double validation_fraction,
                                     uint64_t seed);

// IID partition: shuffled with `seed`, then cut into `parts` nearly equal shards.
std::vector<Dataset> PartitionIid(const Dataset& data, int parts, uint64_t seed);
// Non-IID partition: for every class, shard proportions drawn from Dirichlet(beta) (seeded, with
// our own gamma sampler so that it is the same on every platform). Small beta (0.1) gives each
// part few classes, large beta (100) nearly IID parts. Every row lands in exactly one part and
// every part gets at least one row. Throws UserError if parts is outside 1..N, beta <= 0, or a
// label is outside 0..num_classes-1.
std::vector<Dataset> PartitionDirichlet(const Dataset& data, int parts, double beta, uint64_t seed);

// Mini-batches over a data set in a seeded shuffled order (new order every epoch). Holds its own
// handle to the data (tensors are shared, not copied), so it may outlive the Dataset passed in.
class BatchIterator {
 public:
  BatchIterator(const Dataset& data, int64_t batch_size, uint64_t seed, bool shuffle = true);
  // Starts epoch `epoch` (the order depends on seed and epoch only). The constructor starts
  // epoch 0.
  void StartEpoch(int64_t epoch);
  // Fills the next batch; returns false at the end of the epoch. The last batch may be smaller.
  bool Next(at::Tensor* inputs, at::Tensor* labels);
  int64_t batches_per_epoch() const;

 private:
  Dataset data_;
  int64_t batch_size_;
  uint64_t seed_;
  bool shuffle_;
  std::vector<int64_t> order_;
  int64_t position_ = 0;
};

}  // namespace cleave
