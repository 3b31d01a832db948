#include "cleave/client/training_data.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/test_support/temp_dir.h"

namespace cleave::client {
namespace {

DataFlags CsvFlags(const std::string& train, const std::string& test) {
  DataFlags flags;
  flags.dataset = "csv";
  flags.csv_path = train;
  flags.test_csv_path = test;
  return flags;
}

TEST(TrainingDataTest, ReorderedTestColumnsGiveTheSameTestSet) {
  test_support::TempDir dir;
  WriteFileAtomic(dir.File("train.csv"), "a,b,label\n1,10,0\n3,30,1\n5,20,2\n");
  WriteFileAtomic(dir.File("test.csv"), "a,b,label\n2,40,2\n4,0,2\n");
  WriteFileAtomic(dir.File("reversed.csv"), "label,b,a\n2,40,2\n2,0,4\n");
  const TrainingData same =
      LoadTrainingData(CsvFlags(dir.File("train.csv"), dir.File("test.csv")), 5);
  const TrainingData reversed =
      LoadTrainingData(CsvFlags(dir.File("train.csv"), dir.File("reversed.csv")), 5);
  EXPECT_TRUE(reversed.test.inputs.equal(same.test.inputs)) << reversed.test.inputs;
  // The test file has only class 2: it stays class 2 (once it became class 0).
  EXPECT_TRUE(reversed.test.labels.equal(at::tensor({2, 2}, at::kLong)));
  EXPECT_EQ(reversed.test.num_classes, 5);
  // Standardised with the training file's statistics: a = 2 is (2 - 3) / std(1, 3, 5).
  EXPECT_NEAR(same.test.inputs[0][0].item<float>(), -1 / std::sqrt(8.0 / 3), 1e-5);
}

TEST(TrainingDataTest, AnEmptyTestSplitIsAnError) {
  test_support::TempDir dir;
  WriteFileAtomic(dir.File("train.csv"), "a,label\n1,0\n2,1\n3,1\n");
  DataFlags flags = CsvFlags(dir.File("train.csv"), "");
  flags.test_fraction = 0.1;  // 0.3 rows round to none
  EXPECT_THROW(LoadTrainingData(flags, 2), UserError);
  flags.test_fraction = 0.34;  // one row
  EXPECT_EQ(LoadTrainingData(flags, 2).test.size(), 1);
}

TEST(TrainingDataTest, StringLabelsNeedTheClassNames) {
  test_support::TempDir dir;
  WriteFileAtomic(dir.File("words.csv"), "a,label\n1,no\n2,yes\n3,yes\n4,no\n5,no\n");
  DataFlags flags = CsvFlags(dir.File("words.csv"), "");
  flags.test_fraction = 0.2;
  try {
    LoadTrainingData(flags, 2);
    FAIL();
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("--labels a,b,c"), std::string::npos) << error.what();
  }
  flags.labels = "yes, no";
  const TrainingData data = LoadTrainingData(flags, 2);
  EXPECT_EQ(data.train.size() + data.test.size(), 5);
  EXPECT_EQ(data.train.labels.sum().item<int64_t>() + data.test.labels.sum().item<int64_t>(), 3);
  EXPECT_THROW(LoadTrainingData(flags, 3), UserError);  // 2 names, 3 classes
}

TEST(TrainingDataTest, DelimiterAndClassNameParsing) {
  EXPECT_EQ(ParseCsvDelimiter(","), ',');
  EXPECT_EQ(ParseCsvDelimiter(";"), ';');
  EXPECT_EQ(ParseCsvDelimiter("\\t"), '\t');
  EXPECT_EQ(ParseCsvDelimiter("tab"), '\t');
  EXPECT_THROW(ParseCsvDelimiter(""), UserError);
  EXPECT_THROW(ParseCsvDelimiter(";;"), UserError);
  EXPECT_EQ(ParseClassNames(" cat,dog ,bird"), (std::vector<std::string>{"cat", "dog", "bird"}));
  EXPECT_THROW(ParseClassNames("cat,,dog"), UserError);
}

}  // namespace
}  // namespace cleave::client
