#include "cleave/client/image_data.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <set>

#include "cleave/client/training_data.h"
#include "cleave/core/error.h"
#include "cleave/core/image_file.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/user_error.h"

namespace cleave::client {
namespace {

using test_support::UserErrorOf;

// DIR/<cls>/<i>.png, `count` 4x4 grey images whose pixels are all `value + i`.
void PutClass(const std::string& dir, const std::string& cls, int count, int value,
              int64_t size = 4) {
  std::filesystem::create_directories(dir + "/" + cls);
  for (int i = 0; i < count; ++i) {
    const Image image{size, size, 1, std::vector<uint8_t>(size * size, value + i)};
    WritePng(dir + "/" + cls + "/" + std::to_string(i) + ".png", image);
  }
}

DataFlags ImageDataFlags(const std::string& images, const std::string& test_images) {
  DataFlags flags;
  flags.dataset = "images";
  flags.images.images_dir = images;
  flags.images.test_images_dir = test_images;
  return flags;
}

// The label of every sample whose pixels are `value` (+ up to 9): what its class is called.
std::set<int64_t> LabelsOf(const Dataset& data, int value) {
  std::set<int64_t> labels;
  for (int64_t i = 0; i < data.size(); ++i) {
    const float v = data.inputs[i][0][0][0].item<float>() * 255;
    if (v >= value - 0.5f && v < value + 9.5f) labels.insert(data.labels[i].item<int64_t>());
  }
  return labels;
}

TEST(ImageDataTest, LabelsNameTheSameClassesOnEveryHospital) {
  test_support::TempDir dir;
  PutClass(dir.File("a"), "ant", 3, 10);
  PutClass(dir.File("a"), "bee", 3, 100);
  PutClass(dir.File("a"), "cow", 3, 200);
  PutClass(dir.File("b"), "ant", 3, 10);  // hospital b has no bee
  PutClass(dir.File("b"), "cow", 3, 200);
  PutClass(dir.File("test"), "cow", 2, 200);  // a test folder with one class
  DataFlags a = ImageDataFlags(dir.File("a"), dir.File("test"));
  DataFlags b = ImageDataFlags(dir.File("b"), dir.File("test"));
  // Without a class list, hospital b would call cow 1: refused.
  EXPECT_NE(UserErrorOf([&] {
              LoadTrainingData(b, 3);
            }).find("has 2 class folders (ant, cow) but --classes is 3"),
            std::string::npos);
  a.labels = b.labels = "ant,bee,cow";
  const TrainingData from_a = LoadTrainingData(a, 3);
  const TrainingData from_b = LoadTrainingData(b, 3);
  EXPECT_EQ(LabelsOf(from_a.train, 200), (std::set<int64_t>{2}));
  EXPECT_EQ(LabelsOf(from_b.train, 200), (std::set<int64_t>{2}));
  EXPECT_EQ(LabelsOf(from_b.train, 10), (std::set<int64_t>{0}));
  EXPECT_EQ(LabelsOf(from_a.train, 100), (std::set<int64_t>{1}));
  EXPECT_TRUE(from_b.test.labels.equal(at::tensor({2, 2}, at::kLong)));
  EXPECT_EQ(from_b.train.num_classes, 3);
  // The sorted folders are the default list.
  EXPECT_EQ(LabelsOf(LoadTrainingData(ImageDataFlags(dir.File("a"), ""), 3).train, 100),
            (std::set<int64_t>{1}));
}

TEST(ImageDataTest, TestFractionIsSeededStratifiedAndLimitsKeepEveryClass) {
  test_support::TempDir dir;
  PutClass(dir.File("a"), "ant", 10, 10);
  PutClass(dir.File("a"), "bee", 10, 100);
  DataFlags flags = ImageDataFlags(dir.File("a"), "");
  flags.test_fraction = 0.3;
  const TrainingData one = LoadTrainingData(flags, 2);
  const TrainingData two = LoadTrainingData(flags, 2);
  EXPECT_TRUE(one.test.inputs.equal(two.test.inputs));
  EXPECT_TRUE(at::bincount(one.test.labels).equal(at::tensor({3, 3}, at::kLong)));
  flags.partition_seed = 43;
  EXPECT_FALSE(LoadTrainingData(flags, 2).test.inputs.equal(one.test.inputs));
  // With a test folder, the class-by-class folder order is shuffled: a limit sees both classes.
  DataFlags limited = ImageDataFlags(dir.File("a"), dir.File("a"));
  limited.train_limit = 6;
  limited.test_limit = 6;
  const TrainingData few = LoadTrainingData(limited, 2);
  EXPECT_EQ(at::bincount(few.train.labels).size(0), 2);
  EXPECT_EQ(at::bincount(few.test.labels).size(0), 2);
}

TEST(ImageDataTest, TestFolderMustGiveTheTrainingShape) {
  test_support::TempDir dir;
  PutClass(dir.File("a"), "ant", 2, 10);
  PutClass(dir.File("t"), "ant", 2, 10, 8);
  DataFlags flags = ImageDataFlags(dir.File("a"), dir.File("t"));
  EXPECT_NE(UserErrorOf([&] {
              LoadTrainingData(flags, 1);
            }).find("--test-images gives samples of 1x8x8 but --images of 1x4x4"),
            std::string::npos);
  flags.images.image_size = "4x4";
  EXPECT_EQ(LoadTrainingData(flags, 1).test.inputs.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
  flags.images.images_dir.clear();
  EXPECT_NE(UserErrorOf([&] { LoadTrainingData(flags, 1); }).find("needs --images DIR"),
            std::string::npos);
}

}  // namespace
}  // namespace cleave::client
