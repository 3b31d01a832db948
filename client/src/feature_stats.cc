#include "cleave/client/feature_stats.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave::client {

namespace {

constexpr const char* kFormat = "cleave-feature-stats";
constexpr int kVersion = 1;

std::string QuotedNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "'" : ", '") + name + "'";
  return out;
}

// Where each of `columns` is in `stats` (throws naming what is missing on either side).
std::vector<size_t> MatchColumns(const FeatureStats& stats, const std::vector<std::string>& columns,
                                 const std::string& source, const std::string& other) {
  std::map<std::string, size_t> position;
  for (size_t c = 0; c < stats.columns.size(); ++c) position.emplace(stats.columns[c], c);
  std::vector<size_t> order;
  std::vector<std::string> missing;
  for (const std::string& name : columns) {
    const auto it = position.find(name);
    if (it == position.end()) {
      missing.push_back(name);
    } else {
      order.push_back(it->second);
      position.erase(it);
    }
  }
  std::vector<std::string> extra;
  for (const std::string& name : stats.columns) {
    if (position.count(name) != 0) extra.push_back(name);
  }
  CLEAVE_CHECK_USER(missing.empty() && extra.empty(), "feature statistics '", source,
                    "' do not match the columns of ", other, ":",
                    missing.empty() ? "" : " no statistics for " + QuotedNames(missing),
                    missing.empty() || extra.empty() ? "" : ";",
                    extra.empty() ? "" : " statistics for columns it lacks " + QuotedNames(extra));
  return order;
}

double FiniteNumber(const nlohmann::json& value, const std::string& what,
                    const std::string& source) {
  CLEAVE_CHECK_USER(value.is_number(), "feature statistics '", source, "': ", what,
                    " is not a number");
  const double number = value.get<double>();
  CLEAVE_CHECK_USER(std::isfinite(number), "feature statistics '", source, "': ", what,
                    " is not finite");
  return number;
}

}  // namespace

FeatureStats FitFeatureStats(const at::Tensor& features, const std::vector<std::string>& columns) {
  CLEAVE_CHECK_USER(features.dim() == 2 && features.size(0) > 0 &&
                        features.size(1) == static_cast<int64_t>(columns.size()),
                    "feature statistics need a non-empty [N, F] matrix with F column names");
  const at::Tensor values = features.to(at::kDouble);
  const at::Tensor mean = values.mean(0).contiguous();
  const at::Tensor std = values.std(0, /*unbiased=*/false).contiguous();
  FeatureStats stats;
  stats.columns = columns;
  stats.rows = features.size(0);
  stats.mean.assign(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
  stats.std.assign(std.data_ptr<double>(), std.data_ptr<double>() + std.numel());
  return stats;
}

FeatureStats PoolFeatureStats(const std::vector<FeatureStats>& parts,
                              const std::vector<std::string>& sources) {
  CLEAVE_CHECK_USER(!parts.empty() && parts.size() == sources.size(),
                    "pooling feature statistics needs at least one part");
  FeatureStats pooled;
  pooled.columns = parts[0].columns;
  const size_t width = pooled.columns.size();
  std::vector<double> sum(width, 0), square_sum(width, 0);
  for (size_t p = 0; p < parts.size(); ++p) {
    const std::vector<size_t> order =
        MatchColumns(parts[p], pooled.columns, sources[p], "'" + sources[0] + "'");
    const auto n = static_cast<double>(parts[p].rows);
    for (size_t c = 0; c < width; ++c) {
      const double mean = parts[p].mean[order[c]], std = parts[p].std[order[c]];
      sum[c] += n * mean;
      square_sum[c] += n * (std * std + mean * mean);  // n E[x^2]
    }
    pooled.rows += parts[p].rows;
  }
  const auto total = static_cast<double>(pooled.rows);
  for (size_t c = 0; c < width; ++c) {
    const double mean = sum[c] / total;
    pooled.mean.push_back(mean);
    pooled.std.push_back(std::sqrt(std::max(0.0, square_sum[c] / total - mean * mean)));
  }
  return pooled;
}

std::string FeatureStatsToJson(const FeatureStats& stats) {
  nlohmann::json columns = nlohmann::json::array();
  for (size_t c = 0; c < stats.columns.size(); ++c) {
    columns.push_back({{"name", stats.columns[c]}, {"mean", stats.mean[c]}, {"std", stats.std[c]}});
  }
  const nlohmann::json json = {
      {"format", kFormat}, {"version", kVersion}, {"rows", stats.rows}, {"columns", columns}};
  return json.dump(2) + "\n";
}

namespace {

FeatureStats ParseFeatureStats(const std::string& text, const std::string& source) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  CLEAVE_CHECK_USER(!json.is_discarded() && json.is_object(), "feature statistics '", source,
                    "' are not a JSON object");
  CLEAVE_CHECK_USER(json.value("format", "") == kFormat && json.value("version", 0) == kVersion,
                    "feature statistics '", source, "' are not ", kFormat, " version ", kVersion,
                    " (write them with cleave-client --fit-stats)");
  FeatureStats stats;
  const nlohmann::json& rows = json.contains("rows") ? json["rows"] : nlohmann::json();
  CLEAVE_CHECK_USER(rows.is_number_integer() && rows.get<int64_t>() >= 1, "feature statistics '",
                    source, "': rows must be a whole number >= 1");
  stats.rows = rows.get<int64_t>();
  const nlohmann::json& columns = json.contains("columns") ? json["columns"] : nlohmann::json();
  CLEAVE_CHECK_USER(columns.is_array() && !columns.empty(), "feature statistics '", source,
                    "' have no columns");
  std::set<std::string> seen;
  for (const nlohmann::json& column : columns) {
    CLEAVE_CHECK_USER(column.is_object() && column.contains("name") && column["name"].is_string(),
                      "feature statistics '", source, "': a column has no name");
    const std::string name = column["name"].get<std::string>();
    CLEAVE_CHECK_USER(!name.empty() && seen.insert(name).second, "feature statistics '", source,
                      "': column name '", name, "' is empty or repeated");
    stats.columns.push_back(name);
    stats.mean.push_back(
        FiniteNumber(column.value("mean", nlohmann::json()), "the mean of '" + name + "'", source));
    stats.std.push_back(
        FiniteNumber(column.value("std", nlohmann::json()), "the std of '" + name + "'", source));
    CLEAVE_CHECK_USER(stats.std.back() >= 0, "feature statistics '", source, "': the std of '",
                      name, "' is negative");
  }
  return stats;
}

}  // namespace

FeatureStats FeatureStatsFromJson(const std::string& text, const std::string& source) {
  try {
    return ParseFeatureStats(text, source);
  } catch (const nlohmann::json::exception& error) {
    // A field of the wrong type (e.g. "format": 3).
    throw UserError(
        detail::Concat("feature statistics '", source, "' are malformed: ", error.what()));
  }
}

void SaveFeatureStats(const std::string& path, const FeatureStats& stats) {
  WriteFileAtomic(path, FeatureStatsToJson(stats));
}

FeatureStats LoadFeatureStats(const std::string& path) {
  return FeatureStatsFromJson(ReadFile(path, "feature statistics file"), path);
}

Standardizer SharedStandardizer(const FeatureStats& stats) {
  std::vector<float> mean, std;
  for (size_t c = 0; c < stats.columns.size(); ++c) {
    mean.push_back(static_cast<float>(stats.mean[c]));
    std.push_back(stats.std[c] > 1e-12 ? static_cast<float>(stats.std[c]) : 1.0f);
  }
  const auto width = static_cast<int64_t>(mean.size());
  Standardizer standardizer;
  standardizer.mean = at::from_blob(mean.data(), {width}, at::kFloat).clone();
  standardizer.std = at::from_blob(std.data(), {width}, at::kFloat).clone();
  return standardizer;
}

std::vector<int64_t> StatsColumnOrder(const FeatureStats& stats,
                                      const std::vector<std::string>& columns,
                                      const std::string& source) {
  // in_stats[i]: where the data's column i is in the statistics; the same sets, so invertible.
  const std::vector<size_t> in_stats = MatchColumns(stats, columns, source, "the data");
  std::vector<int64_t> order(in_stats.size());
  for (size_t i = 0; i < in_stats.size(); ++i) order[in_stats[i]] = static_cast<int64_t>(i);
  return order;
}

}  // namespace cleave::client
