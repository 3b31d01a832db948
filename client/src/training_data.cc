#include "cleave/client/training_data.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>

#include "cleave/client/feature_stats.h"
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
  app.add_option("--standardize", standardize,
                 "CSV features: shared (with --stats: every hospital the same), file (this "
                 "file's training split's own mean and std), none, or auto (shared with --stats, "
                 "else file)")
      ->check(CLI::IsMember({"auto", "file", "shared", "none"}))
      ->capture_default_str();
  app.add_option("--stats", stats_path,
                 "Feature statistics every hospital shares (JSON from --fit-stats); columns "
                 "matched by name");
  app.add_option("--fit-stats", fit_stats_path,
                 "Write the mean and std of each feature column of --csv's training split to "
                 "this JSON file, then exit (no server needed); with --pool-stats, pool them");
  app.add_option("--pool-stats", pool_stats_paths,
                 "With --fit-stats: statistics files (of other hospitals) to pool into it, exactly "
                 "as if their rows had been fitted together; --csv is then optional");
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

// The training and test splits of --csv (and --test-csv), not standardised.
struct CsvSplits {
  TrainingData data;
  std::vector<std::string> columns;  // the feature columns' names, in the data's order
};

CsvSplits LoadCsvSplits(const DataFlags& flags, int64_t num_classes) {
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
  CsvSplits splits;
  TrainingData& data = splits.data;
  std::vector<std::string>& columns = splits.columns;
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
  WarnAboutMissingClasses(data.train.labels, num_classes, "'" + flags.csv_path + "'");
  return splits;
}

// The CSV splits, standardised as --standardize says.
TrainingData LoadCsvData(const DataFlags& flags, int64_t num_classes) {
  const Standardization how = ParseStandardization(flags.standardize, flags.stats_path);
  CsvSplits splits = LoadCsvSplits(flags, num_classes);
  TrainingData& data = splits.data;
  Standardizer standardizer;
  switch (how) {
    case Standardization::kNone:
      return data;
    case Standardization::kFile:
      // The training split's own statistics: hospitals with other files standardise otherwise.
      standardizer = Standardizer::Fit(data.train.inputs);
      break;
    case Standardization::kShared: {
      // The statistics' column order becomes the data's (the same model input everywhere).
      const FeatureStats stats = LoadFeatureStats(flags.stats_path);
      const at::Tensor order =
          at::tensor(StatsColumnOrder(stats, splits.columns, flags.stats_path), at::kLong);
      data.train.inputs = data.train.inputs.index_select(1, order);
      data.test.inputs = data.test.inputs.index_select(1, order);
      standardizer = SharedStandardizer(stats);
      break;
    }
  }
  data.train.inputs = standardizer.Apply(data.train.inputs);
  data.test.inputs = standardizer.Apply(data.test.inputs);
  return data;
}

}  // namespace

Standardization ParseStandardization(const std::string& mode, const std::string& stats_path) {
  if (mode == "auto") return stats_path.empty() ? Standardization::kFile : Standardization::kShared;
  CLEAVE_CHECK_USER(mode == "file" || mode == "shared" || mode == "none",
                    "--standardize must be auto, file, shared or none, got '", mode, "'");
  if (mode == "shared") {
    CLEAVE_CHECK_USER(!stats_path.empty(),
                      "--standardize shared needs --stats FILE (written by --fit-stats)");
    return Standardization::kShared;
  }
  CLEAVE_CHECK_USER(stats_path.empty(),
                    "--stats is used only with --standardize shared (or auto), "
                    "not with --standardize ",
                    mode);
  return mode == "file" ? Standardization::kFile : Standardization::kNone;
}

std::vector<int64_t> MissingClasses(const at::Tensor& labels, int64_t num_classes) {
  const at::Tensor counts = at::bincount(labels.to(at::kLong).reshape({-1}), {}, num_classes);
  std::vector<int64_t> missing;
  for (int64_t c = 0; c < num_classes; ++c) {
    if (counts[c].item<int64_t>() == 0) missing.push_back(c);
  }
  return missing;
}

void WarnAboutMissingClasses(const at::Tensor& labels, int64_t num_classes,
                             const std::string& source) {
  const std::vector<int64_t> missing = MissingClasses(labels, num_classes);
  if (missing.empty()) return;
  std::string list;
  for (size_t i = 0; i < missing.size() && i < 10; ++i) {
    list += (i == 0 ? "" : ", ") + std::to_string(missing[i]);
  }
  if (missing.size() > 10) list += ", ...";
  spdlog::warn(
      "--classes is {} but the training data of {} has samples of {} class(es) only (none of "
      "class {}): check --classes (fine if other hospitals hold those classes)",
      num_classes, source, num_classes - static_cast<int64_t>(missing.size()), list);
}

FeatureStats FitSharedStats(const DataFlags& flags, int64_t num_classes) {
  std::vector<FeatureStats> parts;
  std::vector<std::string> sources;
  if (!flags.csv_path.empty()) {
    const CsvSplits splits = LoadCsvSplits(flags, num_classes);
    parts.push_back(FitFeatureStats(splits.data.train.inputs, splits.columns));
    sources.push_back(flags.csv_path);
  }
  for (const std::string& path : flags.pool_stats_paths) {
    parts.push_back(LoadFeatureStats(path));
    sources.push_back(path);
  }
  CLEAVE_CHECK_USER(!parts.empty(), "--fit-stats needs --csv FILE or --pool-stats FILE...");
  return parts.size() == 1 ? parts[0] : PoolFeatureStats(parts, sources);
}

TrainingData LoadTrainingData(const DataFlags& flags, int64_t num_classes) {
  CLEAVE_CHECK_USER(flags.shards >= 1 && flags.shard >= 0 && flags.shard < flags.shards, "--shard ",
                    flags.shard, " is outside 0..", flags.shards - 1);
  CLEAVE_CHECK_USER(
      flags.dataset == "csv" || (flags.stats_path.empty() && flags.standardize == "auto"),
      "--stats and --standardize apply to --dataset csv only, not ", flags.dataset,
      " (images: --normalize)");
  TrainingData data;
  if (flags.dataset == "fashion-mnist") {
    data.train = LoadFashionMnist(flags.data_dir, FashionMnistSplit::kTrain);
    data.test = LoadFashionMnist(flags.data_dir, FashionMnistSplit::kTest);
    CLEAVE_CHECK_USER(num_classes >= data.train.num_classes, "Fashion-MNIST has ",
                      data.train.num_classes, " classes but --classes is ", num_classes);
    WarnAboutMissingClasses(data.train.labels, num_classes, "Fashion-MNIST");
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
