#include "cleave/core/dataset.h"

#include <ATen/ATen.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
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

// A gzip or plain file read through zlib (gzread passes non-gzip files through unchanged).
class CompressedFile {
 public:
  explicit CompressedFile(const std::string& path) : path_(path) {
    struct stat st {};
    CLEAVE_CHECK_USER(::stat(path.c_str(), &st) == 0, "cannot read data file '", path,
                      "': ", std::strerror(errno));
    CLEAVE_CHECK_USER(S_ISREG(st.st_mode), "cannot read data file '", path,
                      "': not a regular file");
    file_ = gzopen(path.c_str(), "rb");
    CLEAVE_CHECK_USER(file_ != nullptr, "cannot read data file '", path,
                      "': ", std::strerror(errno));
  }
  ~CompressedFile() { gzclose(file_); }
  CompressedFile(const CompressedFile&) = delete;
  CompressedFile& operator=(const CompressedFile&) = delete;

  // Reads up to `size` bytes; fewer only at the end of the data.
  size_t Read(void* out, size_t size) {
    size_t done = 0;
    while (done < size) {
      const auto chunk = static_cast<unsigned>(std::min<size_t>(size - done, 1u << 24));
      const int n = gzread(file_, static_cast<char*>(out) + done, chunk);
      if (n < 0 || (n == 0 && !gzeof(file_))) ThrowStreamError();
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    // zlib reports a gzip stream cut short as Z_BUF_ERROR at the end of the input.
    int error = Z_OK;
    gzerror(file_, &error);
    if (error != Z_OK) ThrowStreamError();
    return done;
  }

  // True when no byte is left.
  bool AtEnd() {
    char byte;
    return Read(&byte, 1) == 0;
  }

 private:
  [[noreturn]] void ThrowStreamError() {
    int error = Z_OK;
    const char* message = gzerror(file_, &error);
    if (error == Z_BUF_ERROR) {
      throw UserError("data file '" + path_ + "' is truncated (the gzip stream ends early)");
    }
    throw UserError("data file '" + path_ +
                    "' is corrupt: " + (error == Z_ERRNO ? std::strerror(errno) : message));
  }

  std::string path_;
  gzFile file_ = nullptr;
};

uint32_t BigEndian32(const unsigned char* p) {
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

// Reads an IDX file of unsigned bytes: checks the magic number (type 0x08, `dims` dimensions),
// returns the dimensions and the `uint8` payload, whose size must match the header exactly.
// The payload is read in pieces, so a corrupt header cannot make us allocate gigabytes.
std::vector<uint8_t> ReadIdx(const std::string& path, uint32_t dims, std::vector<uint32_t>* shape) {
  CompressedFile file(path);
  unsigned char header[4 * 4];
  const size_t header_size = 4 * (1 + dims);
  CLEAVE_CHECK_USER(file.Read(header, header_size) == header_size, "data file '", path,
                    "' is truncated (no complete IDX header)");
  CLEAVE_CHECK_USER(BigEndian32(header) == (0x0800u | dims), "data file '", path, "' is not an IDX",
                    dims, " ", dims == 1 ? "label" : "image", " file (bad magic number 0x",
                    std::hex, BigEndian32(header), ")");
  uint64_t expected = 1;
  shape->clear();
  for (uint32_t d = 0; d < dims; ++d) {
    shape->push_back(BigEndian32(header + 4 * (d + 1)));
    expected *= shape->back();
  }
  CLEAVE_CHECK_USER(shape->front() > 0, "data file '", path, "' has no records");
  std::vector<uint8_t> payload;
  constexpr size_t kPiece = size_t{1} << 22;
  while (payload.size() < expected) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kPiece, expected - payload.size()));
    const size_t old_size = payload.size();
    payload.resize(old_size + want);
    const size_t got = file.Read(payload.data() + old_size, want);
    payload.resize(old_size + got);
    CLEAVE_CHECK_USER(got == want, "data file '", path, "' is truncated: its header promises ",
                      expected, " data bytes, it has ", payload.size());
  }
  CLEAVE_CHECK_USER(file.AtEnd(), "data file '", path, "' has bytes after the ", expected,
                    " its header promises (corrupt)");
  return payload;
}

at::Tensor ReadIdxImages(const std::string& path) {
  std::vector<uint32_t> shape;
  std::vector<uint8_t> pixels = ReadIdx(path, 3, &shape);
  CLEAVE_CHECK_USER(shape[1] == 28 && shape[2] == 28, "data file '", path, "' has ", shape[1], "x",
                    shape[2], " images, expected 28x28");
  const int64_t count = shape[0];
  return at::from_blob(pixels.data(), {count, 1, 28, 28}, at::kByte).to(at::kFloat).div_(255.0);
}

at::Tensor ReadIdxLabels(const std::string& path, int64_t num_classes) {
  std::vector<uint32_t> shape;
  const std::vector<uint8_t> bytes = ReadIdx(path, 1, &shape);
  at::Tensor labels = at::empty({static_cast<int64_t>(bytes.size())}, at::kLong);
  int64_t* out = labels.data_ptr<int64_t>();
  for (size_t i = 0; i < bytes.size(); ++i) {
    CLEAVE_CHECK_USER(bytes[i] < num_classes, "data file '", path, "' has label ", int{bytes[i]},
                      " at record ", i, ", expected 0..", num_classes - 1);
    out[i] = bytes[i];
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
  CLEAVE_CHECK_USER(features.dim() == 2 && features.size(1) == mean.size(0), "features of shape ",
                    features.sizes(), " do not fit a standardiser fitted on ", mean.size(0),
                    " features");
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

// Names as "'a', 'b', 'c'" for messages.
std::string QuotedList(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "'" : ", '") + name + "'";
  return out;
}

// Turns label cells into class indices with the label map every file shares.
class LabelMap {
 public:
  explicit LabelMap(const CsvOptions& options) : num_classes_(options.num_classes) {
    const std::vector<std::string>& names = options.class_names;
    if (!names.empty()) {
      CLEAVE_CHECK_USER(num_classes_ == 0 || num_classes_ == static_cast<int64_t>(names.size()),
                        names.size(), " class names given for a model with ", num_classes_,
                        " classes");
      num_classes_ = static_cast<int64_t>(names.size());
      for (size_t i = 0; i < names.size(); ++i) {
        CLEAVE_CHECK_USER(!names[i].empty(), "class name ", i, " is empty");
        CLEAVE_CHECK_USER(names_.emplace(names[i], static_cast<int64_t>(i)).second, "class name '",
                          names[i], "' appears twice");
      }
    }
    CLEAVE_CHECK_USER(num_classes_ >= 1, "the number of classes must be at least 1, got ",
                      num_classes_);
  }

  int64_t num_classes() const { return num_classes_; }

  int64_t Label(const std::string& path, int64_t line, const std::string& cell) const {
    if (!names_.empty()) {
      const auto it = names_.find(cell);
      if (it == names_.end()) {
        std::vector<std::string> names(names_.size());
        for (const auto& [name, index] : names_) names[index] = name;
        throw CsvLabelError(detail::Concat("CSV file '", path, "' line ", line, ": label '", cell,
                                           "' is not one of the class names ", QuotedList(names)));
      }
      return it->second;
    }
    char* end = nullptr;
    const double value = std::strtod(cell.c_str(), &end);
    if (cell.empty() || *end != '\0' || !std::isfinite(value)) {
      throw CsvLabelError(detail::Concat("CSV file '", path, "' line ", line, ": label '", cell,
                                         "' is not a class number (string labels need the list "
                                         "of class names)"));
    }
    if (value != std::floor(value) || value < 0 || value >= static_cast<double>(num_classes_)) {
      throw CsvLabelError(detail::Concat("CSV file '", path, "' line ", line, ": label '", cell,
                                         "' is not a class number in 0..", num_classes_ - 1,
                                         " (the model has ", num_classes_, " classes)"));
    }
    return static_cast<int64_t>(value);
  }

 private:
  int64_t num_classes_;
  std::map<std::string, int64_t> names_;
};

// The header's column names, checked: none empty, none repeated, the label column present.
std::vector<std::string> ReadCsvHeader(const std::string& path, const std::string& line,
                                       const CsvOptions& options) {
  const std::vector<std::string> header = SplitLine(line, options.delimiter);
  std::set<std::string> names;
  for (const std::string& name : header) {
    CLEAVE_CHECK_USER(!name.empty(), "CSV file '", path, "' line 1: empty column name");
    CLEAVE_CHECK_USER(names.insert(name).second, "CSV file '", path, "' line 1: column '", name,
                      "' appears twice");
  }
  CLEAVE_CHECK_USER(names.count(options.label_column) == 1, "CSV file '", path, "' has no column '",
                    options.label_column, "' (the label column)");
  CLEAVE_CHECK_USER(header.size() > 1, "CSV file '", path, "' has no feature columns");
  return header;
}

// Where each of the data set's feature columns is in `header`: the expected columns by name,
// or (none expected) every column but the label, in the file's order.
std::vector<size_t> FeatureSources(const std::string& path, const std::vector<std::string>& header,
                                   const CsvOptions& options) {
  std::map<std::string, size_t> position;
  for (size_t c = 0; c < header.size(); ++c) {
    if (header[c] != options.label_column) position.emplace(header[c], c);
  }
  std::vector<size_t> sources;
  if (options.feature_columns.empty()) {
    for (size_t c = 0; c < header.size(); ++c) {
      if (header[c] != options.label_column) sources.push_back(c);
    }
    return sources;
  }
  std::vector<std::string> missing, extra;
  for (const std::string& name : options.feature_columns) {
    const auto it = position.find(name);
    if (it == position.end()) {
      missing.push_back(name);
    } else {
      sources.push_back(it->second);
      position.erase(it);
    }
  }
  for (size_t c = 0; c < header.size(); ++c) {
    if (position.count(header[c]) != 0) extra.push_back(header[c]);
  }
  CLEAVE_CHECK_USER(missing.empty() && extra.empty(), "CSV file '", path,
                    "' does not have the expected feature columns:",
                    missing.empty() ? "" : " missing " + QuotedList(missing),
                    missing.empty() || extra.empty() ? "" : ";",
                    extra.empty() ? "" : " unexpected " + QuotedList(extra));
  return sources;
}

float ParseFeature(const std::string& path, int64_t line, const std::string& column,
                   const std::string& cell) {
  char* end = nullptr;
  const double value = std::strtod(cell.c_str(), &end);
  CLEAVE_CHECK_USER(!cell.empty() && end != nullptr && *end == '\0' && std::isfinite(value),
                    "CSV file '", path, "' line ", line, ": column '", column,
                    "' is not a finite number ('", cell, "')");
  return static_cast<float>(value);
}

}  // namespace

Dataset LoadCsv(const std::string& path, const CsvOptions& options,
                std::vector<std::string>* feature_columns) {
  const LabelMap label_map(options);
  std::string text = ReadFile(path, "CSV file");
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // UTF-8 byte-order mark
  std::stringstream stream(text);
  std::string line;
  CLEAVE_CHECK_USER(static_cast<bool>(std::getline(stream, line)), "CSV file '", path,
                    "' is empty (expected a header row)");
  const std::vector<std::string> header = ReadCsvHeader(path, line, options);
  const size_t label_index = static_cast<size_t>(
      std::find(header.begin(), header.end(), options.label_column) - header.begin());
  const std::vector<size_t> sources = FeatureSources(path, header, options);

  std::vector<float> features;
  std::vector<int64_t> labels;
  int64_t line_number = 1;
  while (std::getline(stream, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::vector<std::string> cells = SplitLine(line, options.delimiter);
    CLEAVE_CHECK_USER(cells.size() == header.size(), "CSV file '", path, "' line ", line_number,
                      ": ", cells.size(), " cells, header has ", header.size());
    for (const size_t c : sources) {
      features.push_back(ParseFeature(path, line_number, header[c], cells[c]));
    }
    labels.push_back(label_map.Label(path, line_number, cells[label_index]));
  }
  const auto rows = static_cast<int64_t>(labels.size());
  CLEAVE_CHECK_USER(rows > 0, "CSV file '", path, "' has no data rows");
  Dataset data;
  data.num_classes = label_map.num_classes();
  data.inputs =
      at::from_blob(features.data(), {rows, static_cast<int64_t>(sources.size())}, at::kFloat)
          .clone();
  data.labels = at::from_blob(labels.data(), {rows}, at::kLong).clone();
  if (feature_columns != nullptr) {
    feature_columns->clear();
    for (const size_t c : sources) feature_columns->push_back(header[c]);
  }
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
  CLEAVE_CHECK_USER(validation_fraction >= 0 && validation_fraction < 1, "validation fraction ",
                    validation_fraction, " is outside [0, 1)");
  const std::vector<int64_t> order = SeededPermutation(data.size(), seed);
  const auto held_out = static_cast<size_t>(std::llround(validation_fraction * data.size()));
  CLEAVE_CHECK_USER(held_out < order.size(), "holding out ", validation_fraction, " of ",
                    data.size(), " rows leaves none to train on");
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

namespace {

// Distributions written out here rather than taken from <random>: the standard fixes
// mt19937_64's output but not how std::gamma_distribution and friends consume it, and partitions
// must be the same on every platform.
double Uniform01(std::mt19937_64& rng) {  // in (0, 1)
  return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53;
}

double StandardNormal(std::mt19937_64& rng) {  // Box-Muller
  const double radius = std::sqrt(-2.0 * std::log(Uniform01(rng)));
  return radius * std::cos(2.0 * M_PI * Uniform01(rng));
}

// log of a Gamma(shape, 1) draw (Marsaglia-Tsang). Logs, because for shape << 1 the draws
// themselves underflow to 0 (shape 0.01 gives values like 1e-300).
double LogGamma(double shape, std::mt19937_64& rng) {
  if (shape < 1) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a).
    return LogGamma(shape + 1, rng) + std::log(Uniform01(rng)) / shape;
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    double x, v;
    do {
      x = StandardNormal(rng);
      v = 1.0 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const double u = Uniform01(rng);
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return std::log(d * v);
  }
}

// Dirichlet(beta, ..., beta) proportions over `parts`.
std::vector<double> DirichletProportions(int parts, double beta, std::mt19937_64& rng) {
  std::vector<double> logs(static_cast<size_t>(parts));
  for (double& value : logs) value = LogGamma(beta, rng);
  const double largest = *std::max_element(logs.begin(), logs.end());
  double total = 0;
  for (double& value : logs) total += (value = std::exp(value - largest));
  for (double& value : logs) value /= total;
  return logs;
}

}  // namespace

std::vector<Dataset> PartitionDirichlet(const Dataset& data, int parts, double beta,
                                        uint64_t seed) {
  CLEAVE_CHECK_USER(parts >= 1 && parts <= data.size(), "cannot cut ", data.size(),
                    " samples into ", parts, " parts");
  CLEAVE_CHECK_USER(beta > 0, "Dirichlet beta must be > 0, got ", beta);
  const at::Tensor label_tensor = data.labels.to(at::kLong).contiguous();
  const int64_t* labels = label_tensor.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(data.num_classes));
  for (int64_t i = 0; i < data.size(); ++i) {
    CLEAVE_CHECK_USER(labels[i] >= 0 && labels[i] < data.num_classes, "label ", labels[i],
                      " of row ", i, " is outside 0..", data.num_classes - 1);
    members[labels[i]].push_back(i);
  }
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(parts));
  for (const std::vector<int64_t>& in_class : members) {
    // Shuffle this class's rows (seeded), then cut them by Dirichlet(beta) proportions.
    const std::vector<int64_t> order =
        SeededPermutation(static_cast<int64_t>(in_class.size()), rng());
    const std::vector<double> proportions = DirichletProportions(parts, beta, rng);
    double cumulative = 0;
    size_t begin = 0;
    for (int p = 0; p < parts; ++p) {
      cumulative += proportions[p];
      const size_t end =
          p == parts - 1
              ? in_class.size()
              : std::clamp(static_cast<size_t>(std::llround(cumulative * in_class.size())), begin,
                           in_class.size());
      for (size_t k = begin; k < end; ++k) rows[p].push_back(in_class[order[k]]);
      begin = end;
    }
  }
  // Every part gets at least one sample: take from the largest part if one is empty.
  for (auto& part : rows) {
    if (!part.empty()) continue;
    auto largest = std::max_element(
        rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.size() < b.size(); });
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
  StartEpoch(0);
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
  const at::Tensor rows = at::from_blob(order_.data() + position_, {end - position_}, at::kLong);
  *inputs = data_.inputs.index_select(0, rows);
  *labels = data_.labels.index_select(0, rows);
  position_ = end;
  return true;
}

int64_t BatchIterator::batches_per_epoch() const {
  return (data_.size() + batch_size_ - 1) / batch_size_;
}

}  // namespace cleave
