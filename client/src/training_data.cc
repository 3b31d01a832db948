#include "cleave/client/training_data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include "cleave/core/error.h"

namespace cleave::client {

void DataFlags::Register(CLI::App& app) {
  app.add_option("--dataset", dataset, "fashion-mnist or csv")
      ->check(CLI::IsMember({"fashion-mnist", "csv"}))
      ->capture_default_str();
  app.add_option("--data-dir", data_dir, "Directory with the Fashion-MNIST IDX files (.gz)")
      ->capture_default_str();
  app.add_option("--csv", csv_path, "Training CSV: header row, numeric features, a label column");
  app.add_option("--test-csv", test_csv_path,
                 "Test CSV (otherwise --test-fraction of --csv is held out)");
  app.add_option("--label-column", label_column, "Name of the CSV label column")
      ->capture_default_str();
  app.add_option("--test-fraction", test_fraction, "Share of --csv held out for testing")
      ->capture_default_str();
  app.add_option("--train-limit", train_limit, "Use only the first N training samples (0: all)")
      ->capture_default_str();
  app.add_option("--test-limit", test_limit, "Use only the first N test samples (0: all)")
      ->capture_default_str();
  app.add_option("--shard", shard, "This client's shard of the training data (0-based)")
      ->capture_default_str();
  app.add_option("--shards", shards, "Number of shards the training data is cut into")
      ->capture_default_str();
  app.add_option("--partition", partition,
                 "How shards are drawn: iid, or dirichlet (non-IID label skew)")
      ->check(CLI::IsMember({"iid", "dirichlet"}))
      ->capture_default_str();
  app.add_option("--dirichlet-beta", dirichlet_beta,
                 "Dirichlet concentration for --partition dirichlet (small = more skewed)")
      ->capture_default_str();
  app.add_option("--partition-seed", partition_seed,
                 "Seed of the partition (the same on every client)")
      ->capture_default_str();
}

namespace {

Dataset Head(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  std::vector<int64_t> rows(static_cast<size_t>(limit));
  std::iota(rows.begin(), rows.end(), 0);
  return data.Subset(rows);
}

}  // namespace

TrainingData LoadTrainingData(const DataFlags& flags) {
  CLEAVE_CHECK_USER(flags.shards >= 1 && flags.shard >= 0 && flags.shard < flags.shards, "--shard ",
                    flags.shard, " is outside 0..", flags.shards - 1);
  TrainingData data;
  if (flags.dataset == "fashion-mnist") {
    data.train = LoadFashionMnist(flags.data_dir, FashionMnistSplit::kTrain);
    data.test = LoadFashionMnist(flags.data_dir, FashionMnistSplit::kTest);
  } else {
    CLEAVE_CHECK_USER(!flags.csv_path.empty(), "--dataset csv needs --csv FILE");
    CsvOptions csv;
    csv.label_column = flags.label_column;
    Dataset all = LoadCsv(flags.csv_path, csv);
    if (!flags.test_csv_path.empty()) {
      data.train = std::move(all);
      data.test = LoadCsv(flags.test_csv_path, csv);
    } else {
      CLEAVE_CHECK_USER(flags.test_fraction > 0 && flags.test_fraction < 1,
                        "--test-fraction must be in (0, 1)");
      TrainValidation split = SplitTrainValidation(all, flags.test_fraction, flags.partition_seed);
      data.train = std::move(split.train);
      data.test = std::move(split.validation);
    }
    // Standardise with statistics of the training split only.
    const Standardizer standardizer = Standardizer::Fit(data.train.inputs);
    data.train.inputs = standardizer.Apply(data.train.inputs);
    data.test.inputs = standardizer.Apply(data.test.inputs);
  }
  data.train = Head(data.train, flags.train_limit);
  data.test = Head(data.test, flags.test_limit);
  if (flags.shards > 1) {
    std::vector<Dataset> shards =
        flags.partition == "iid" ? PartitionIid(data.train, flags.shards, flags.partition_seed)
                                 : PartitionDirichlet(data.train, flags.shards,
                                                      flags.dirichlet_beta, flags.partition_seed);
    data.train = std::move(shards[static_cast<size_t>(flags.shard)]);
  }
  CLEAVE_CHECK_USER(data.train.size() > 0, "no training samples in this shard");
  return data;
}

}  // namespace cleave::client
