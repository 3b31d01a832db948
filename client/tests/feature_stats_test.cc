// Feature statistics every hospital shares: fitted, pooled across hospitals, written and read
// back as JSON, matched to the data's columns by name; and CSV data standardised with them.
#include "cleave/client/feature_stats.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "cleave/client/training_data.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/user_error.h"

namespace cleave::client {
namespace {

using test_support::UserErrorOf;

TEST(FeatureStatsTest, FitsThePopulationMeanAndStdOfEachColumn) {
  const at::Tensor features = at::tensor({1.0f, 10.0f, 3.0f, 10.0f, 5.0f, 10.0f}).reshape({3, 2});
  const FeatureStats stats = FitFeatureStats(features, {"a", "b"});
  EXPECT_EQ(stats.rows, 3);
  EXPECT_EQ(stats.columns, (std::vector<std::string>{"a", "b"}));
  EXPECT_DOUBLE_EQ(stats.mean[0], 3.0);
  EXPECT_NEAR(stats.std[0], std::sqrt(8.0 / 3), 1e-12);
  EXPECT_DOUBLE_EQ(stats.std[1], 0.0);
}

TEST(FeatureStatsTest, PoolingHospitalsEqualsFittingTheirRowsTogether) {
  const at::Tensor all = at::randn({50, 3}, at::kDouble) * 4 + 2;
  const FeatureStats whole = FitFeatureStats(all, {"a", "b", "c"});
  const FeatureStats first = FitFeatureStats(all.slice(0, 0, 20), {"a", "b", "c"});
  // The second hospital's file has its columns in another order.
  const FeatureStats second =
      FitFeatureStats(all.slice(0, 20).index_select(1, at::tensor({2, 0, 1})), {"c", "a", "b"});
  const FeatureStats pooled = PoolFeatureStats({first, second}, {"first", "second"});
  EXPECT_EQ(pooled.rows, 50);
  EXPECT_EQ(pooled.columns, whole.columns);
  for (size_t c = 0; c < 3; ++c) {
    EXPECT_NEAR(pooled.mean[c], whole.mean[c], 1e-9) << c;
    EXPECT_NEAR(pooled.std[c], whole.std[c], 1e-9) << c;
  }
  FeatureStats other = second;
  other.columns[0] = "d";
  const std::string error = UserErrorOf([&] { PoolFeatureStats({first, other}, {"x", "y"}); });
  EXPECT_NE(error.find("'y'"), std::string::npos) << error;
  EXPECT_NE(error.find("'d'"), std::string::npos) << error;
}

TEST(FeatureStatsTest, JsonRoundTripsAndRefusesWhatIsNotStatistics) {
  const FeatureStats stats =
      FitFeatureStats(at::tensor({0.5f, -2.0f, 1.5f, 4.0f}).reshape({2, 2}), {"age", "dose"});
  const FeatureStats back = FeatureStatsFromJson(FeatureStatsToJson(stats), "s.json");
  EXPECT_EQ(back.columns, stats.columns);
  EXPECT_EQ(back.mean, stats.mean);
  EXPECT_EQ(back.std, stats.std);
  EXPECT_EQ(back.rows, 2);
  const std::string head = R"({"format": "cleave-feature-stats", "version": 1, "rows": 2, )";
  for (const auto& [text, says] : std::vector<std::pair<std::string, std::string>>{
           {"not json", "not a JSON object"},
           {R"({"format": "other", "version": 1})", "not cleave-feature-stats version 1"},
           {head + R"("columns": []})", "no columns"},
           {head + R"("columns": [{"name": "a", "mean": 0, "std": 1},
                                  {"name": "a", "mean": 0, "std": 1}]})",
            "'a' is empty or repeated"},
           {head + R"("columns": [{"name": "a", "mean": "x", "std": 1}]})",
            "the mean of 'a' is not a number"},
           {head + R"("columns": [{"name": "a", "mean": 0, "std": -1}]})",
            "the std of 'a' is negative"},
           {R"({"format": "cleave-feature-stats", "version": 1, "rows": 0, "columns": []})",
            "rows must be"},
           {R"({"format": 3, "version": 1})", "malformed"}}) {
    const std::string error = UserErrorOf([&] { FeatureStatsFromJson(text, "s.json"); });
    EXPECT_NE(error.find("'s.json'"), std::string::npos) << error;
    EXPECT_NE(error.find(says), std::string::npos) << error;
  }
}

TEST(FeatureStatsTest, SharedStatisticsMatchColumnsByNameAndNameTheMismatch) {
  FeatureStats stats;
  stats.columns = {"a", "b"};
  stats.mean = {1.0, 10.0};
  stats.std = {2.0, 0.0};
  stats.rows = 4;
  const at::Tensor out = SharedStandardizer(stats).Apply(at::tensor({5.0f, 12.0f}).reshape({1, 2}));
  EXPECT_FLOAT_EQ(out[0][0].item<float>(), 2.0f);  // a: (5 - 1) / 2
  EXPECT_FLOAT_EQ(out[0][1].item<float>(), 2.0f);  // b: centred only (std 0)
  // Data whose columns are b, c, a: the statistics' order a, b is columns 2, 0 of it.
  stats.columns = {"a", "b", "c"};
  stats.mean.push_back(0);
  stats.std.push_back(1);
  EXPECT_EQ(StatsColumnOrder(stats, {"b", "c", "a"}, "s.json"), (std::vector<int64_t>{2, 0, 1}));
  const std::string error = UserErrorOf([&] {
    StatsColumnOrder(stats, {"a", "d", "c"}, "s.json");
  });
  EXPECT_NE(error.find("'s.json'"), std::string::npos) << error;
  EXPECT_NE(error.find("no statistics for 'd'"), std::string::npos) << error;
  EXPECT_NE(error.find("statistics for columns it lacks 'b'"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << "not one line: " << error;
}

DataFlags Csv(const std::string& train, const std::string& test) {
  DataFlags flags;
  flags.dataset = "csv";
  flags.csv_path = train;
  flags.test_csv_path = test;
  return flags;
}

// Two hospitals with different files (columns in another order) evaluate the same test rows on
// the same numbers once they share statistics; each file's own statistics give them different
// numbers.
TEST(FeatureStatsTest, HospitalsWithSharedStatisticsStandardiseTheSameRowsAlike) {
  test_support::TempDir dir;
  WriteFileAtomic(dir.File("st-mary.csv"), "a,b,label\n1,10,0\n3,30,1\n5,20,2\n");
  WriteFileAtomic(dir.File("riverside.csv"), "b,a,label\n100,7,0\n300,9,1\n");
  WriteFileAtomic(dir.File("test.csv"), "a,b,label\n2,40,2\n4,0,1\n");
  DataFlags st_mary = Csv(dir.File("st-mary.csv"), dir.File("test.csv"));
  DataFlags riverside = Csv(dir.File("riverside.csv"), dir.File("test.csv"));
  EXPECT_FALSE(
      LoadTrainingData(st_mary, 3).test.inputs.equal(LoadTrainingData(riverside, 3).test.inputs));

  // Each fits its own statistics; one pools them; both train with the pooled file.
  st_mary.fit_stats_path = dir.File("st-mary.json");
  SaveFeatureStats(dir.File("st-mary.json"), FitSharedStats(st_mary, 3));
  SaveFeatureStats(dir.File("riverside.json"), FitSharedStats(riverside, 3));
  DataFlags pool;
  pool.pool_stats_paths = {dir.File("st-mary.json"), dir.File("riverside.json")};
  const FeatureStats shared = FitSharedStats(pool, 3);
  EXPECT_EQ(shared.rows, 5);
  EXPECT_NEAR(shared.mean[0], (1 + 3 + 5 + 7 + 9) / 5.0, 1e-9);  // a, over both files
  SaveFeatureStats(dir.File("shared.json"), shared);
  st_mary.stats_path = riverside.stats_path = dir.File("shared.json");
  const TrainingData a = LoadTrainingData(st_mary, 3);
  const TrainingData b = LoadTrainingData(riverside, 3);
  EXPECT_TRUE(a.test.inputs.equal(b.test.inputs)) << a.test.inputs << b.test.inputs;
  EXPECT_NEAR(a.test.inputs[0][0].item<float>(), (2 - 5) / shared.std[0], 1e-5);

  // --standardize none leaves the numbers as they are.
  st_mary.stats_path.clear();
  st_mary.standardize = "none";
  EXPECT_TRUE(LoadTrainingData(st_mary, 3)
                  .test.inputs.equal(at::tensor({2.0f, 40.0f, 4.0f, 0.0f}).reshape({2, 2})));
}

TEST(FeatureStatsTest, StatisticsFittedOnTheTrainingSplitOnly) {
  test_support::TempDir dir;
  std::string text = "x,label\n";
  for (int i = 0; i < 10; ++i) text += std::to_string(i) + "," + std::to_string(i % 2) + "\n";
  WriteFileAtomic(dir.File("all.csv"), text);
  DataFlags flags = Csv(dir.File("all.csv"), "");
  flags.test_fraction = 0.3;
  const FeatureStats stats = FitSharedStats(flags, 2);
  EXPECT_EQ(stats.rows, 7);
  const TrainingData data = LoadTrainingData(flags, 2);
  // The training split standardised with its own statistics has mean 0, as with "file".
  EXPECT_NEAR(data.train.inputs.mean().item<float>(), 0.0f, 1e-5);
}

TEST(FeatureStatsTest, StandardizationModes) {
  EXPECT_EQ(ParseStandardization("auto", ""), Standardization::kFile);
  EXPECT_EQ(ParseStandardization("auto", "s.json"), Standardization::kShared);
  EXPECT_EQ(ParseStandardization("shared", "s.json"), Standardization::kShared);
  EXPECT_EQ(ParseStandardization("none", ""), Standardization::kNone);
  EXPECT_EQ(ParseStandardization("file", ""), Standardization::kFile);
  EXPECT_THROW(ParseStandardization("shared", ""), UserError);
  EXPECT_THROW(ParseStandardization("none", "s.json"), UserError);
  EXPECT_THROW(ParseStandardization("zscore", ""), UserError);
}

TEST(FeatureStatsTest, MissingClassesAreTheOnesWithoutASample) {
  EXPECT_EQ(MissingClasses(at::tensor({0, 2, 2}, at::kLong), 5), (std::vector<int64_t>{1, 3, 4}));
  EXPECT_TRUE(MissingClasses(at::tensor({1, 0}, at::kLong), 2).empty());
}

}  // namespace
}  // namespace cleave::client
