#include "cleave/core/image_folder.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/image_file.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/user_error.h"

namespace cleave {
namespace {

using test_support::UserErrorOf;

namespace fs = std::filesystem;

Image Pattern(int64_t height, int64_t width, int64_t channels, int seed) {
  Image image{height, width, channels, {}};
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < channels; ++c) {
        image.pixels.push_back(static_cast<uint8_t>((30 * seed + 6 * x + 4 * y + 50 * c) % 256));
      }
    }
  }
  return image;
}

// root/<class>/<name> written as PNG or JPEG by its extension.
void Put(const std::string& root, const std::string& cls, const std::string& name,
         const Image& image) {
  fs::create_directories(fs::path(root) / cls);
  const std::string path = (fs::path(root) / cls / name).string();
  if (name.size() > 4 && name.substr(name.size() - 4) == ".png") {
    WritePng(path, image);
  } else {
    WriteJpeg(path, image, 95);
  }
}

// Three classes, 6x8 images: "ant" two grey PNGs, "bee" an RGB PNG and an RGB JPEG, "cow" a
// grey JPEG; plus a note the loader must skip.
class ImageFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.File("train");
    Put(root_, "ant", "1.png", Pattern(6, 8, 1, 1));
    Put(root_, "ant", "0.png", Pattern(6, 8, 1, 0));
    Put(root_, "bee", "a.png", Pattern(6, 8, 3, 2));
    Put(root_, "bee", "b.jpg", Pattern(6, 8, 3, 3));
    Put(root_, "cow", "c.JPEG", Pattern(6, 8, 1, 4));
    WriteFileAtomic(root_ + "/cow/notes.txt", "not an image");
  }
  // Sample i, channel c of `data` as HxW values.
  static std::vector<float> Plane(const Dataset& data, int64_t i, int64_t c) {
    const at::Tensor plane = data.inputs[i][c].contiguous();
    return {plane.data_ptr<float>(), plane.data_ptr<float>() + plane.numel()};
  }
  // Channel c of an image as HxW values / 255.
  static std::vector<float> Expected(const Image& image, int64_t c) {
    std::vector<float> out;
    for (size_t p = static_cast<size_t>(c); p < image.pixels.size();
         p += static_cast<size_t>(image.channels)) {
      out.push_back(image.pixels[p] / 255.0f);
    }
    return out;
  }
  test_support::TempDir dir_;
  std::string root_;
};

TEST_F(ImageFolderTest, LoadsSortedClassesLabelsShapesAndExactPngValues) {
  EXPECT_EQ(ListClassFolders(root_), (std::vector<std::string>{"ant", "bee", "cow"}));
  const Dataset data = LoadImageFolder(root_, {});
  EXPECT_EQ(data.num_classes, 3);
  EXPECT_EQ(data.inputs.sizes(), (std::vector<int64_t>{5, 3, 6, 8}));  // colour somewhere: RGB
  EXPECT_EQ(
      std::vector<int64_t>(data.labels.data_ptr<int64_t>(), data.labels.data_ptr<int64_t>() + 5),
      (std::vector<int64_t>{0, 0, 1, 1, 2}));
  // Files in name order: ant/0.png first; grey is copied into every channel.
  for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(Plane(data, 0, c), Expected(Pattern(6, 8, 1, 0), 0));
  for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(Plane(data, 2, c), Expected(Pattern(6, 8, 3, 2), c));
  // The JPEG is close, not exact.
  const at::Tensor jpeg = data.inputs[3];
  at::Tensor want = at::empty({3, 6, 8});
  for (int64_t c = 0; c < 3; ++c) {
    want[c] = at::tensor(Expected(Pattern(6, 8, 3, 3), c)).view({6, 8});
  }
  EXPECT_LT((jpeg - want).abs().max().item<float>(), 12.0 / 255);
}

TEST_F(ImageFolderTest, GreyConversionResizeAndNormalisation) {
  ImageFolderOptions options;
  options.channels = 1;
  options.height = 12;
  options.width = 4;
  ParseNormalization("0.5,0.25", "--normalize", &options);
  const Dataset data = LoadImageFolder(root_, options);
  ASSERT_EQ(data.inputs.sizes(), (std::vector<int64_t>{5, 1, 12, 4}));
  // bee/a.png: luma, then resize, then (x - 0.5) / 0.25.
  const FloatImage expected =
      ResizeBilinear(ConvertChannels(ToFloat(Pattern(6, 8, 3, 2)), 1), 12, 4);
  const std::vector<float> got = Plane(data, 2, 0);
  ASSERT_EQ(got.size(), expected.pixels.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], (expected.pixels[i] - 0.5f) / 0.25f, 1e-5) << i;
  }
}

TEST_F(ImageFolderTest, PerChannelNormalisation) {
  ImageFolderOptions options;
  ParseNormalization("0.1,0.2,0.3,0.5,1,2", "--normalize", &options);
  const Dataset data = LoadImageFolder(root_, options);
  const std::vector<float> blue = Plane(data, 2, 2);
  const std::vector<float> raw = Expected(Pattern(6, 8, 3, 2), 2);
  for (size_t i = 0; i < raw.size(); ++i) EXPECT_NEAR(blue[i], (raw[i] - 0.3f) / 2.0f, 1e-6);
  options.channels = 1;  // 3 means for 1 channel
  EXPECT_NE(UserErrorOf([&] { LoadImageFolder(root_, options); }).find("3 means"),
            std::string::npos);
}

TEST_F(ImageFolderTest, AllGreyFolderGivesOneChannel) {
  const std::string grey = dir_.File("grey");
  Put(grey, "x", "a.png", Pattern(4, 4, 1, 0));
  Put(grey, "y", "b.jpg", Pattern(4, 4, 1, 1));
  EXPECT_EQ(LoadImageFolder(grey, {}).inputs.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
}

TEST_F(ImageFolderTest, ClassListFixesOrderAndAllowsMissingFolders) {
  ImageFolderOptions options;
  options.class_names = {"cow", "bee", "ant", "dog"};
  const Dataset data = LoadImageFolder(root_, options);
  EXPECT_EQ(data.num_classes, 4);
  // Labels follow the list: cow 0, bee 1, ant 2; dog has no folder (a warning) and no samples.
  EXPECT_EQ(
      std::vector<int64_t>(data.labels.data_ptr<int64_t>(), data.labels.data_ptr<int64_t>() + 5),
      (std::vector<int64_t>{0, 1, 1, 2, 2}));
  options.class_names = {"ant", "bee"};
  EXPECT_NE(UserErrorOf([&] {
              LoadImageFolder(root_, options);
            }).find("has a subfolder 'cow' that is not one of the classes (ant, bee)"),
            std::string::npos);
  options.class_names = {"ant", "bee", "ant", "cow"};
  EXPECT_NE(UserErrorOf([&] { LoadImageFolder(root_, options); }).find("names a class twice"),
            std::string::npos);
}

TEST_F(ImageFolderTest, ErrorsAreOneLineNamingWhatIsWrong) {
  const auto error = [](const std::string& dir, const ImageFolderOptions& options = {}) {
    return UserErrorOf([&] { LoadImageFolder(dir, options); });
  };
  EXPECT_NE(error(dir_.File("nowhere"))
                .find("image folder '" + dir_.File("nowhere") + "' does not exist"),
            std::string::npos);
  WriteFileAtomic(dir_.File("file"), "x");
  EXPECT_NE(error(dir_.File("file")).find("is not a directory"), std::string::npos);
  fs::create_directories(dir_.File("flat"));
  WritePng(dir_.File("flat/a.png"), Pattern(2, 2, 1, 0));
  EXPECT_NE(error(dir_.File("flat")).find("has no class subfolders"), std::string::npos);
  fs::create_directories(dir_.File("empty/a"));
  fs::create_directories(dir_.File("empty/b"));
  EXPECT_NE(error(dir_.File("empty")).find("has no images"), std::string::npos);
  WriteFileAtomic(root_ + "/bee/broken.png", "\x89PNG\r\n\x1a\n garbage");
  EXPECT_NE(error(root_).find("cannot decode image '" + root_ + "/bee/broken.png'"),
            std::string::npos);
  fs::remove(root_ + "/bee/broken.png");
  Put(root_, "bee", "big.png", Pattern(7, 8, 1, 0));
  EXPECT_NE(error(root_).find("images differ in size: '" + root_ + "/bee/big.png' is 7x8"),
            std::string::npos);
  ImageFolderOptions resize;
  resize.height = resize.width = 5;
  EXPECT_EQ(LoadImageFolder(root_, resize).inputs.sizes(), (std::vector<int64_t>{6, 3, 5, 5}));
}

TEST(ImageFolderFlagsTest, ParseSizeAndNormalisation) {
  EXPECT_EQ(ParseImageSize("64x32", "--image-size"), (std::vector<int64_t>{64, 32}));
  for (const char* bad : {"64", "0x5", "5x", "x5", "1x2x3", "-4x4", "ax4"}) {
    EXPECT_NE(
        UserErrorOf([&] { ParseImageSize(bad, "--image-size"); }).find("--image-size must be"),
        std::string::npos)
        << bad;
  }
  ImageFolderOptions options;
  for (const char* bad : {"0.5", "0.5,0", "0.5,-1", "a,b", "1,2,3", "nan,1", "0.5,,1"}) {
    EXPECT_NE(
        UserErrorOf([&] { ParseNormalization(bad, "--normalize", &options); }).find("--normalize"),
        std::string::npos)
        << bad;
  }
}

// Fashion-MNIST written as PNG class folders loads back as the very same tensors as from IDX
// (the later benchmark trains on such folders), class by class in file order.
TEST(ImageFolderFashionMnistTest, PngFoldersMatchTheIdxFiles) {
  const char* dir = std::getenv("CLEAVE_FASHION_MNIST_DIR");
  if (dir == nullptr) GTEST_SKIP() << "CLEAVE_FASHION_MNIST_DIR is not set";
  const Dataset idx = LoadFashionMnist(dir, FashionMnistSplit::kTest);
  const int64_t count = 300;
  const at::Tensor bytes = idx.inputs.narrow(0, 0, count).mul(255).round().to(at::kByte);
  test_support::TempDir folder;
  std::vector<int64_t> order;  // the rows in the order the folder gives them
  for (int64_t label = 0; label < 10; ++label) {
    for (int64_t i = 0; i < count; ++i) {
      if (idx.labels[i].item<int64_t>() != label) continue;
      const uint8_t* p = bytes[i].data_ptr<uint8_t>();
      char name[16];
      std::snprintf(name, sizeof(name), "%05lld.png", static_cast<long long>(i));
      Put(folder.path(), "class-" + std::to_string(label), name, Image{28, 28, 1, {p, p + 784}});
      order.push_back(i);
    }
  }
  const Dataset images = LoadImageFolder(folder.path(), {});
  const Dataset expected = idx.Subset(order);
  EXPECT_TRUE(at::equal(images.inputs, expected.inputs));
  EXPECT_TRUE(at::equal(images.labels, expected.labels));
}

Dataset Labelled(const std::vector<int64_t>& labels) {
  Dataset data;
  data.inputs = at::arange(static_cast<int64_t>(labels.size()), at::kFloat).view({-1, 1});
  data.labels = at::tensor(labels, at::kLong);
  data.num_classes = 3;
  return data;
}

std::vector<float> Rows(const Dataset& data) {
  const at::Tensor rows = data.inputs.view({-1}).contiguous();
  return {rows.data_ptr<float>(), rows.data_ptr<float>() + rows.numel()};
}

TEST(SplitStratifiedTest, HoldsOutTheFractionOfEveryClassDeterministically) {
  std::vector<int64_t> labels(60, 0);
  for (size_t i = 40; i < 55; ++i) labels[i] = 1;
  for (size_t i = 55; i < 60; ++i) labels[i] = 2;  // 40 / 15 / 5
  const Dataset data = Labelled(labels);
  const TrainValidation a = SplitStratified(data, 0.2, 7);
  const at::Tensor counts = at::bincount(a.validation.labels, {}, 3);
  EXPECT_EQ(std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + 3),
            (std::vector<int64_t>{8, 3, 1}));
  EXPECT_EQ(a.train.size(), 48);
  std::vector<float> all = Rows(a.train);
  const std::vector<float> test = Rows(a.validation);
  all.insert(all.end(), test.begin(), test.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, Rows(data));  // every row exactly once
  const TrainValidation again = SplitStratified(data, 0.2, 7);
  EXPECT_EQ(Rows(again.validation), test);
  EXPECT_EQ(Rows(again.train), Rows(a.train));
  EXPECT_NE(Rows(SplitStratified(data, 0.2, 8).validation), test);
  EXPECT_NE(UserErrorOf([&] { SplitStratified(data, 1.0, 7); }).find("test fraction"),
            std::string::npos);
}

}  // namespace
}  // namespace cleave
