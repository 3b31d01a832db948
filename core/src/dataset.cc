#include "cleave/core/dataset.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave {

int64_t Dataset::size() const { return inputs.defined() ? inputs.size(0) : 0; }

Dataset Dataset::Subset(const std::vector<int64_t>& indices) const {
  const at::Tensor rows = at::tensor(indices, at::kLong);
  Dataset out;
  out.inputs = inputs.index_select(0, rows).contiguous();
  out.labels = labels.index_select(0, rows).contiguous();
  out.num_classes = num_classes;
  return out;
}

namespace {

// Reads a whole file, gunzipping it if it is gzip (zlib's gzread passes plain files through).
std::string ReadMaybeGzip(const std::string& path) {
  ReadFile(path, "data file");  // clear error for missing/unreadable files
  gzFile file = gzopen(path.c_str(), "rb");
  CLEAVE_CHECK_USER(file != nullptr, "cannot open data file '", path, "'");
  std::string bytes;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(file, buffer, sizeof(buffer))) > 0) bytes.append(buffer, n);
  int error = Z_OK;
  const char* message = gzerror(file, &error);
  gzclose(file);
  CLEAVE_CHECK_USER(n == 0 && (error == Z_OK || error == Z_BUF_ERROR), "data file '", path,
                    "' is corrupt: ", message);
  return bytes;
}

uint32_t BigEndian32(const std::string& bytes, size_t offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + offset;
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Resolves "<dir>/<name>.gz" or "<dir>/<name>".
std::string FindIdx(const std::string& dir, const std::string& name) {
  const std::string gz = dir + "/" + name + ".gz";
  if (FileExists(gz)) return gz;
  const std::string plain = dir + "/" + name;
  if (FileExists(plain)) return plain;
  throw UserError("cannot read data file '" + gz + "': No such file or directory");
}

at::Tensor ReadIdxImages(const std::string& path) {
  const std::string bytes = ReadMaybeGzip(path);
  CLEAVE_CHECK_USER(bytes.size() >= 16, "data file '", path, "' is truncated (no IDX header)");
  CLEAVE_CHECK_USER(BigEndian32(bytes, 0) == 0x00000803, "data file '", path,
                    "' is not an IDX image file (bad magic number)");
  const uint32_t count = BigEndian32(bytes, 4), rows = BigEndian32(bytes, 8),
                 cols = BigEndian32(bytes, 12);
  CLEAVE_CHECK_USER(rows == 28 && cols == 28, "data file '", path, "' has ", rows, "x", cols,
                    " images, expected 28x28");
  const uint64_t expected = 16 + uint64_t{count} * rows * cols;
  CLEAVE_CHECK_USER(bytes.size() == expected, "data file '", path, "' has ", bytes.size(),
                    " bytes, its header promises ", expected, " (truncated or corrupt)");
  at::Tensor pixels = at::empty({count, 1, rows, cols}, at::kByte);
  std::memcpy(pixels.data_ptr(), bytes.data() + 16, expected - 16);
  return pixels.to(at::kFloat).div_(255.0);
}

at::Tensor ReadIdxLabels(const std::string& path, int64_t num_classes) {
  const std::string bytes = ReadMaybeGzip(path);
  CLEAVE_CHECK_USER(bytes.size() >= 8, "data file '", path, "' is truncated (no IDX header)");
  CLEAVE_CHECK_USER(BigEndian32(bytes, 0) == 0x00000801, "data file '", path,
                    "' is not an IDX label file (bad magic number)");
  const uint32_t count = BigEndian32(bytes, 4);
  CLEAVE_CHECK_USER(bytes.size() == 8 + uint64_t{count}, "data file '", path, "' has ",
                    bytes.size(), " bytes, its header promises ", 8 + uint64_t{count});
  at::Tensor labels = at::empty({count}, at::kLong);
  int64_t* out = labels.data_ptr<int64_t>();
  for (uint32_t i = 0; i < count; ++i) {
    const auto label = static_cast<unsigned char>(bytes[8 + i]);
    CLEAVE_CHECK_USER(label < num_classes, "data file '", path, "' has label ", int{label},
                      " at record ", i, ", expected 0..", num_classes - 1);
    out[i] = label;
  }
  return labels;
}

}  // namespace

Dataset LoadFashionMnist(const std::string& dir, FashionMnistSplit split) {
  const std::string prefix = split == FashionMnistSplit::kTrain ? "train" : "t10k";
  const std::string images_path = FindIdx(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = FindIdx(dir, prefix + "-labels-idx1-ubyte");
  Dataset data;
  data.num_classes = 10;
  data.inputs = ReadIdxImages(images_path);
  data.labels = ReadIdxLabels(labels_path, data.num_classes);
  CLEAVE_CHECK_USER(data.inputs.size(0) == data.labels.size(0), "'", images_path, "' has ",
                    data.inputs.size(0), " images but '", labels_path, "' has ",
                    data.labels.size(0), " labels");
  return data;
}

Standardizer Standardizer::Fit(const at::Tensor& features) {
  CLEAVE_CHECK_USER(features.dim() == 2 && features.size(0) > 0,
                    "standardisation needs a non-empty [N, F] feature matrix");
  Standardizer out;
  out.mean = features.mean(0);
  out.std = features.std(0, /*unbiased=*/false);
  out.std = at::where(out.std > 1e-12, out.std, at::ones_like(out.std));
  return out;
}

at::Tensor Standardizer::Apply(const at::Tensor& features) const {
  return (features - mean) / std;
}

namespace {

std::vector<std::string> SplitLine(const std::string& line, char delimiter) {
  std::vector<std::string> cells;
  std::string cell;
  std::stringstream stream(line);
  while (std::getline(stream, cell, delimiter)) {
    // Trim spaces and a trailing carriage return.
    const auto begin = cell.find_first_not_of(" \t\r");
    const auto end = cell.find_last_not_of(" \t\r");
    cells.push_back(begin == std::string::npos ? "" : cell.substr(begin, end - begin + 1));
  }
  if (!line.empty() && line.back() == delimiter) cells.emplace_back();
  return cells;
}

}  // namespace

Dataset LoadCsv(const std::string& path, const CsvOptions& options) {
  const std::string text = ReadFile(path, "CSV file");
  std::stringstream stream(text);
  std::string line;
  CLEAVE_CHECK_USER(static_cast<bool>(std::getline(stream, line)), "CSV file '", path,
                    "' is empty (expected a header row)");
  const std::vector<std::string> header = SplitLine(line, options.delimiter);
  const auto label_it = std::find(header.begin(), header.end(), options.label_column);
  CLEAVE_CHECK_USER(label_it != header.end(), "CSV file '", path, "' has no column '",
                    options.label_column, "' (use --label-column)");
  const size_t label_index = static_cast<size_t>(label_it - header.begin());
  const size_t num_features = header.size() - 1;
  CLEAVE_CHECK_USER(num_features > 0, "CSV file '", path, "' has no feature columns");

  std::vector<float> features;
  std::vector<double> raw_labels;
  int64_t line_number = 1;
  while (std::getline(stream, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::vector<std::string> cells = SplitLine(line, options.delimiter);
    CLEAVE_CHECK_USER(cells.size() == header.size(), "CSV file '", path, "' line ", line_number,
                      ": ", cells.size(), " cells, header has ", header.size());
    for (size_t c = 0; c < cells.size(); ++c) {
      char* end = nullptr;
      const double value = std::strtod(cells[c].c_str(), &end);
      CLEAVE_CHECK_USER(!cells[c].empty() && end != nullptr && *end == '\0' &&
                            std::isfinite(value),
                        "CSV file '", path, "' line ", line_number, ": column '", header[c],
                        "' is not a finite number ('", cells[c], "')");
      if (c == label_index) {
        CLEAVE_CHECK_USER(value == std::floor(value), "CSV file '", path, "' line ",
                          line_number, ": label '", cells[c], "' is not an integer");
        raw_labels.push_back(value);
      } else {
        features.push_back(static_cast<float>(value));
      }
    }
  }
  const int64_t rows = static_cast<int64_t>(raw_labels.size());
  CLEAVE_CHECK_USER(rows > 0, "CSV file '", path, "' has no data rows");
  // Labels become 0..C-1 in the sorted order of their distinct values.
  std::map<double, int64_t> classes;
  for (double label : raw_labels) classes.emplace(label, 0);
  int64_t next = 0;
  for (auto& entry : classes) entry.second = next++;
  Dataset data;
  data.num_classes = static_cast<int64_t>(classes.size());
  data.inputs = at::from_blob(features.data(), {rows, static_cast<int64_t>(num_features)},
                              at::kFloat)
                    .clone();
  data.labels = at::empty({rows}, at::kLong);
  for (int64_t i = 0; i < rows; ++i) data.labels[i] = classes.at(raw_labels[i]);
  return data;
}

std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  // Our own Fisher-Yates over mt19937_64 (whose output is fixed by the standard), because
  // std::shuffle's algorithm differs between standard libraries.
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t j = rng() % static_cast<uint64_t>(i + 1);
    std::swap(order[i], order[j]);
  }
  return order;
}

TrainValidation SplitTrainValidation(const Dataset& data, double validation_fraction,
                                     uint64_t seed) {
  CLEAVE_CHECK_USER(validation_fraction >= 0 && validation_fraction < 1,
                    "validation fraction ", validation_fraction, " is outside [0, 1)");
  const std::vector<int64_t> order = SeededPermutation(data.size(), seed);
  const auto held_out = static_cast<size_t>(std::llround(validation_fraction * data.size()));
  TrainValidation out;
  out.validation = data.Subset({order.begin(), order.begin() + held_out});
  out.train = data.Subset({order.begin() + held_out, order.end()});
  return out;
}

std::vector<Dataset> PartitionIid(const Dataset& data, int parts, uint64_t seed) {
  CLEAVE_CHECK_USER(parts >= 1 && parts <= data.size(), "cannot cut ", data.size(),
                    " samples into ", parts, " parts");
  const std::vector<int64_t> order = SeededPermutation(data.size(), seed);
  std::vector<Dataset> out;
  const size_t n = order.size();
  for (int p = 0; p < parts; ++p) {
    const size_t begin = n * p / parts, end = n * (p + 1) / parts;
    out.push_back(data.Subset({order.begin() + begin, order.begin() + end}));
  }
  return out;
}

std::vector<Dataset> PartitionDirichlet(const Dataset& data, int parts, double beta,
                                        uint64_t seed) {
  CLEAVE_CHECK_USER(parts >= 1 && parts <= data.size(), "cannot cut ", data.size(),
                    " samples into ", parts, " parts");
  CLEAVE_CHECK_USER(beta > 0, "Dirichlet beta must be > 0, got ", beta);
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(parts));
  const int64_t* labels = data.labels.data_ptr<int64_t>();
  for (int64_t c = 0; c < data.num_classes; ++c) {
    std::vector<int64_t> members;
    for (int64_t i = 0; i < data.size(); ++i) {
      if (labels[i] == c) members.push_back(i);
    }
    // Shuffle this class's rows (seeded), then cut them by Dirichlet(beta) proportions drawn as
    // normalised Gamma(beta, 1) variates.
    std::vector<int64_t> order = SeededPermutation(static_cast<int64_t>(members.size()), rng());
    std::gamma_distribution<double> gamma(beta, 1.0);
    std::vector<double> weights(static_cast<size_t>(parts));
    double total = 0;
    for (double& w : weights) total += (w = gamma(rng));
    if (total <= 0) std::fill(weights.begin(), weights.end(), 1.0), total = parts;
    double cumulative = 0;
    size_t begin = 0;
    for (int p = 0; p < parts; ++p) {
      cumulative += weights[p] / total;
      const size_t end = p == parts - 1 ? members.size()
                                        : static_cast<size_t>(std::llround(cumulative *
                                                                           members.size()));
      for (size_t k = begin; k < std::max(begin, end); ++k) rows[p].push_back(members[order[k]]);
      begin = std::max(begin, end);
    }
  }
  // Every part gets at least one sample: take from the largest part if one is empty.
  for (auto& part : rows) {
    if (!part.empty()) continue;
    auto largest = std::max_element(rows.begin(), rows.end(),
                                    [](const auto& a, const auto& b) { return a.size() < b.size(); });
    part.push_back(largest->back());
    largest->pop_back();
  }
  std::vector<Dataset> out;
  for (auto& part : rows) {
    std::sort(part.begin(), part.end());
    out.push_back(data.Subset(part));
  }
  return out;
}

BatchIterator::BatchIterator(const Dataset& data, int64_t batch_size, uint64_t seed, bool shuffle)
    : data_(data), batch_size_(batch_size), seed_(seed), shuffle_(shuffle) {
  CLEAVE_CHECK_USER(batch_size >= 1, "batch size must be at least 1");
}

void BatchIterator::StartEpoch(int64_t epoch) {
  if (shuffle_) {
    order_ = SeededPermutation(data_.size(), seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
  } else {
    order_.resize(static_cast<size_t>(data_.size()));
    for (int64_t i = 0; i < data_.size(); ++i) order_[i] = i;
  }
  position_ = 0;
}

bool BatchIterator::Next(at::Tensor* inputs, at::Tensor* labels) {
  const int64_t n = static_cast<int64_t>(order_.size());
  if (position_ >= n) return false;
  const int64_t end = std::min(n, position_ + batch_size_);
  const at::Tensor rows =
      at::from_blob(order_.data() + position_, {end - position_}, at::kLong);
  *inputs = data_.inputs.index_select(0, rows);
  *labels = data_.labels.index_select(0, rows);
  position_ = end;
  return true;
}

int64_t BatchIterator::batches_per_epoch() const {
  return (data_.size() + batch_size_ - 1) / batch_size_;
}

}  // namespace cleave
