#include "cleave/client/training_data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>

#include "cleave/core/error.h"

namespace cleave::client {

void DataFlags::Register(CLI::App& app) {
  app.add_option("--dataset", dataset, "fashion-mnist, csv or images")
      ->check(CLI::IsMember({"fashion-mnist", "csv", "images"}))
      ->capture_default_str();
  app.add_option("--data-dir", data_dir, "Directory with the Fashion-MNIST IDX files (.gz)")
      ->capture_default_str();
  app.add_option("--csv", csv_path, "Training CSV: header row, numeric features, a label column");
  app.add_option("--test-csv", test_csv_path,
                 "Test CSV (otherwise --test-fraction of --csv is held out)");
  app.add_option("--label-column", label_column, "Name of the CSV label column")
      ->capture_default_str();
  app.add_option("--labels", labels,
                 "Class names of string CSV labels, comma-separated, in class order (a,b,c); "
                 "without it, labels are class numbers 0..classes-1. Images: the class "
                 "folders, in label order (default: sorted subfolder names)");
  app.add_option("--csv-delimiter", csv_delimiter,
                 "CSV cell delimiter: one character, or \\t or tab for a tab")
      ->capture_default_str();
  app.add_option("--test-fraction", test_fraction,
                 "Share of --csv (or of --images, per class) held out for testing")
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
                 "Seed of the partition (the same on every client) and of the "
                 "--test-fraction split")
      ->capture_default_str();
  images.Register(app);
}

char ParseCsvDelimiter(const std::string& text) {
  if (text == "\\t" || text == "tab") return '\t';
  CLEAVE_CHECK_USER(text.size() == 1 && text != "\n" && text != "\r" && text != "\"",
                    "--csv-delimiter must be one character (or \\t or tab), got '", text, "'");
  return text[0];
}

std::vector<std::string> ParseClassNames(const std::string& text) {
  std::vector<std::string> names;
  size_t begin = 0;
  while (true) {
    const size_t end = std::min(text.find(',', begin), text.size());
    std::string name = text.substr(begin, end - begin);
    const size_t first = name.find_first_not_of(" \t");
    name = first == std::string::npos
               ? ""
               : name.substr(first, name.find_last_not_of(" \t") + 1 - first);
    CLEAVE_CHECK_USER(!name.empty(), "--labels '", text, "' has an empty class name");
    names.push_back(name);
    if (end == text.size()) break;
    begin = end + 1;
  }
  return names;
}

namespace {

Dataset Head(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  std::vector<int64_t> rows(static_cast<size_t>(limit));
  std::iota(rows.begin(), rows.end(), 0);
  return data.Subset(rows);
}

// LoadCsv, with the flags that fix the label map named in label errors.
Dataset LoadCsvFile(const std::string& path, const CsvOptions& options,
                    std::vector<std::string>* feature_columns) {
  try {
    return LoadCsv(path, options, feature_columns);
  } catch (const CsvLabelError& error) {
    throw UserError(std::string(error.what()) +
                    (options.class_names.empty()
                         ? " [labels are class numbers below --classes; name string labels "
                           "with --labels a,b,c]"
                         : " [class names come from --labels]"));
  }
}

// Training and test splits of --csv (and --test-csv), standardised with the training split's
// statistics.
TrainingData LoadCsvData(const DataFlags& flags, int64_t num_classes) {
  CLEAVE_CHECK_USER(!flags.csv_path.empty(), "--dataset csv needs --csv FILE");
  CsvOptions csv;
  csv.label_column = flags.label_column;
  csv.delimiter = ParseCsvDelimiter(flags.csv_delimiter);
  csv.num_classes = num_classes;
  if (!flags.labels.empty()) {
    csv.class_names = ParseClassNames(flags.labels);
    CLEAVE_CHECK_USER(static_cast<int64_t>(csv.class_names.size()) == num_classes,
                      "--labels names ", csv.class_names.size(), " classes but --classes is ",
                      num_classes);
  }
  TrainingData data;
  std::vector<std::string> columns;
  Dataset all = LoadCsvFile(flags.csv_path, csv, &columns);
  if (!flags.test_csv_path.empty()) {
    data.train = std::move(all);
    csv.feature_columns = columns;  // the test file's columns are matched by name
    data.test = LoadCsvFile(flags.test_csv_path, csv, nullptr);
  } else {
    CLEAVE_CHECK_USER(flags.test_fraction > 0 && flags.test_fraction < 1,
                      "--test-fraction must be in (0, 1)");
    TrainValidation split = SplitTrainValidation(all, flags.test_fraction, flags.partition_seed);
    CLEAVE_CHECK_USER(split.validation.size() > 0, "--test-fraction ", flags.test_fraction, " of ",
                      all.size(), " rows of '", flags.csv_path,
                      "' holds out no test rows: raise it or give --test-csv");
    data.train = std::move(split.train);
    data.test = std::move(split.validation);
  }
  // Standardise with statistics of the training split only.
  const Standardizer standardizer = Standardizer::Fit(data.train.inputs);
  data.train.inputs = standardizer.Apply(data.train.inputs);
  data.test.inputs = standardizer.Apply(data.test.inputs);
  return data;
}

}  // namespace

TrainingData LoadTrainingData(const DataFlags& flags, int64_t num_classes) {
  CLEAVE_CHECK_USER(flags.shards >= 1 && flags.shard >= 0 && flags.shard < flags.shards, "--shard ",
                    flags.shard, " is outside 0..", flags.shards - 1);
  TrainingData data;
  if (flags.dataset == "fashion-mnist") {
    data.train = LoadFashionMnist(flags.data_dir, FashionMnistSplit::kTrain);
    data.test = LoadFashionMnist(flags.data_dir, FashionMnistSplit::kTest);
    CLEAVE_CHECK_USER(num_classes >= data.train.num_classes, "Fashion-MNIST has ",
                      data.train.num_classes, " classes but --classes is ", num_classes);
  } else if (flags.dataset == "images") {
    TrainValidation split = LoadImageData(flags.images, flags.labels, flags.test_fraction,
                                          flags.partition_seed, num_classes);
    data.train = std::move(split.train);
    data.test = std::move(split.validation);
  } else {
    data = LoadCsvData(flags, num_classes);
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
  CLEAVE_CHECK_USER(data.test.size() > 0, "the test split is empty");
  return data;
}

}  // namespace cleave::client
