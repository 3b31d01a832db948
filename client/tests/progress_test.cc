#include "cleave/client/progress.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "cleave/core/error.h"

namespace cleave::client {
namespace {

std::string Captured(std::FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::string text;
  char buffer[512];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, n);
  return text;
}

TEST(ProgressTest, LinesModePrintsEpochSummaryWithAllFigures) {
  std::FILE* file = std::tmpfile();
  ProgressReporter reporter(ProgressMode::kLines, file, /*line_interval_seconds=*/1e9);
  reporter.StartEpoch(1, 3, 100);
  ProgressStats stats;
  stats.loss = 0.5;
  stats.accuracy = 0.875;
  stats.samples_per_second = 1234;
  stats.bytes_sent = 2'500'000;
  stats.bytes_received = 1'000;
  stats.density = 0.05;
  reporter.Update(50, stats);  // interval not reached: silent
  EXPECT_EQ(Captured(file), "");
  reporter.FinishEpoch(stats);
  const std::string text = Captured(file);
  EXPECT_NE(text.find("epoch 1/3 step 50/100"), std::string::npos) << text;
  EXPECT_NE(text.find("loss 0.5000"), std::string::npos) << text;
  EXPECT_NE(text.find("acc 87.50%"), std::string::npos) << text;
  EXPECT_NE(text.find("1234 samples/s"), std::string::npos) << text;
  EXPECT_NE(text.find("sent 2.50 MB"), std::string::npos) << text;
  EXPECT_NE(text.find("density 0.050"), std::string::npos) << text;
  std::fclose(file);
}

// A vertical party without the labels has no loss or accuracy: it says so rather than print 0.
TEST(ProgressTest, APartyWithoutLabelsShowsNoLossOrAccuracy) {
  std::FILE* file = std::tmpfile();
  ProgressReporter reporter(ProgressMode::kLines, file, /*line_interval_seconds=*/1e9);
  reporter.StartEpoch(1, 1, 10);
  ProgressStats stats;
  stats.has_loss = false;
  reporter.FinishEpoch(stats);
  const std::string text = Captured(file);
  EXPECT_NE(text.find("no labels here (vertical)"), std::string::npos) << text;
  EXPECT_EQ(text.find("loss"), std::string::npos) << text;
  std::fclose(file);
}

TEST(ProgressTest, NoneModePrintsNothing) {
  std::FILE* file = std::tmpfile();
  ProgressReporter reporter(ProgressMode::kNone, file);
  reporter.StartEpoch(1, 1, 10);
  reporter.Update(10, {});
  reporter.FinishEpoch({});
  EXPECT_EQ(Captured(file), "");
  std::fclose(file);
}

TEST(ProgressTest, ParsesModesAndHumanBytes) {
  EXPECT_EQ(ParseProgressMode("bar"), ProgressMode::kBar);
  EXPECT_THROW(ParseProgressMode("fancy"), UserError);
  EXPECT_EQ(HumanBytes(999), "999 B");
  EXPECT_EQ(HumanBytes(1'500'000'000), "1.50 GB");
}

}  // namespace
}  // namespace cleave::client
