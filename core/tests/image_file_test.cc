#include "cleave/core/image_file.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <png.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <tuple>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/user_error.h"

namespace cleave {
namespace {

using test_support::UserErrorOf;

// A smooth pattern (JPEG keeps it within a few grey levels), different in every channel.
Image Pattern(int64_t height, int64_t width, int64_t channels) {
  Image image{height, width, channels, {}};
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < channels; ++c) {
        image.pixels.push_back(static_cast<uint8_t>(40 + 5 * x + 3 * y + 30 * c));
      }
    }
  }
  return image;
}

TEST(ImageFileTest, PngRoundTripIsExactForGreyAndRgb) {
  test_support::TempDir dir;
  for (int64_t channels : {1, 3}) {
    const Image image = Pattern(5, 7, channels);
    WritePng(dir.File("p.png"), image);
    const Image back = ReadImageFile(dir.File("p.png"));
    EXPECT_EQ(back.height, 5);
    EXPECT_EQ(back.width, 7);
    EXPECT_EQ(back.channels, channels);
    EXPECT_EQ(back.pixels, image.pixels);
  }
}

TEST(ImageFileTest, JpegRoundTripIsCloseForGreyAndRgb) {
  test_support::TempDir dir;
  for (int64_t channels : {1, 3}) {
    const Image image = Pattern(16, 16, channels);
    WriteJpeg(dir.File("j.jpg"), image, 95);
    const Image back = ReadImageFile(dir.File("j.jpg"));
    ASSERT_EQ(back.channels, channels);
    ASSERT_EQ(back.pixels.size(), image.pixels.size());
    int worst = 0;
    for (size_t i = 0; i < image.pixels.size(); ++i) {
      worst = std::max(worst, std::abs(int{back.pixels[i]} - int{image.pixels[i]}));
    }
    EXPECT_LE(worst, 12) << channels << " channels";
    EXPECT_GT(back.pixels[0], 20);  // not an all-black decode
  }
}

TEST(ImageFileTest, FormatComesFromTheBytesNotTheName) {
  test_support::TempDir dir;
  WritePng(dir.File("really-a-png.jpg"), Pattern(3, 3, 1));
  EXPECT_EQ(ReadImageFile(dir.File("really-a-png.jpg")).pixels, Pattern(3, 3, 1).pixels);
}

TEST(ImageFileTest, PngAlphaIsCompositedOntoBlack) {
  test_support::TempDir dir;
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  png.width = 2;
  png.height = 1;
  png.format = PNG_FORMAT_RGBA;
  const uint8_t rgba[] = {200, 100, 50, 255, 200, 100, 50, 0};
  ASSERT_TRUE(png_image_write_to_file(&png, dir.File("a.png").c_str(), 0, rgba, 0, nullptr));
  const Image back = ReadImageFile(dir.File("a.png"));
  ASSERT_EQ(back.channels, 3);
  EXPECT_EQ(back.pixels, (std::vector<uint8_t>{200, 100, 50, 0, 0, 0}));
}

// A 16-bit grey PNG without gamma information (as scanners write them), through libpng's
// low-level writer.
void WriteGrey16(const std::string& path, const std::vector<uint16_t>& values) {
  FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(values.size()), 1, 16, PNG_COLOR_TYPE_GRAY,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  std::vector<uint8_t> row;
  for (uint16_t v : values) {
    row.push_back(static_cast<uint8_t>(v >> 8));  // PNG samples are big-endian
    row.push_back(static_cast<uint8_t>(v & 0xff));
  }
  png_write_row(png, row.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(file);
}

TEST(ImageFileTest, SixteenBitPngIsScaledNotGammaEncoded) {
  test_support::TempDir dir;
  WriteGrey16(dir.File("g16.png"), {0, 257 * 100, 257 * 200, 65535});
  const Image back = ReadImageFile(dir.File("g16.png"));
  ASSERT_EQ(back.channels, 1);
  EXPECT_EQ(back.pixels, (std::vector<uint8_t>{0, 100, 200, 255}));
}

TEST(ImageFileTest, UndecodableFilesAreNamed) {
  test_support::TempDir dir;
  WriteFileAtomic(dir.File("text.png"), "hello, not an image");
  EXPECT_NE(UserErrorOf([&] { ReadImageFile(dir.File("text.png")); }).find("text.png': not a PNG"),
            std::string::npos);
  WriteFileAtomic(dir.File("empty.jpg"), "");
  EXPECT_NE(UserErrorOf([&] { ReadImageFile(dir.File("empty.jpg")); }).find("empty.jpg"),
            std::string::npos);
  // Cut short: both decoders refuse instead of returning a half-grey image.
  WritePng(dir.File("whole.png"), Pattern(32, 32, 3));
  WriteJpeg(dir.File("whole.jpg"), Pattern(32, 32, 3));
  for (const char* name : {"whole.png", "whole.jpg"}) {
    const std::string bytes = ReadFile(dir.File(name), "test");
    const std::string cut = dir.File(std::string("cut-") + name);
    WriteFileAtomic(cut, bytes.substr(0, bytes.size() / 2));
    const std::string error = UserErrorOf([&] { ReadImageFile(cut); });
    EXPECT_NE(error.find("cannot decode image '" + cut + "'"), std::string::npos) << error;
  }
  EXPECT_NE(UserErrorOf([&] { ReadImageFile(dir.File("missing.png")); }).find("missing.png"),
            std::string::npos);
}

TEST(ImageFileTest, ExtensionsAreCaseInsensitive) {
  EXPECT_TRUE(HasImageExtension("a.PNG"));
  EXPECT_TRUE(HasImageExtension("a.jpeg"));
  EXPECT_TRUE(HasImageExtension("b.JpG"));
  EXPECT_FALSE(HasImageExtension(".png.txt"));
  EXPECT_FALSE(HasImageExtension("png"));
}

TEST(ImageFileTest, ChannelConversion) {
  FloatImage grey{1, 2, 1, {0.25f, 1.0f}};
  EXPECT_EQ(ConvertChannels(grey, 3).pixels,
            (std::vector<float>{0.25f, 0.25f, 0.25f, 1.0f, 1.0f, 1.0f}));
  FloatImage rgb{1, 1, 3, {1.0f, 0.5f, 0.0f}};
  const FloatImage luma = ConvertChannels(rgb, 1);
  ASSERT_EQ(luma.channels, 1);
  EXPECT_NEAR(luma.pixels[0], 0.299f + 0.587f * 0.5f, 1e-6);
  EXPECT_EQ(ConvertChannels(rgb, 3).pixels, rgb.pixels);
}

TEST(ResizeBilinearTest, UpscalingInterpolatesBetweenPixelCentres) {
  // 1x2 -> 1x4: output centres fall at -0.25, 0.25, 0.75, 1.25 input pixels (edges clamped).
  const FloatImage in{2, 2, 1, {0, 1, 2, 3}};
  const FloatImage out = ResizeBilinear(in, 2, 4);
  EXPECT_EQ(out.pixels, (std::vector<float>{0, 0.25f, 0.75f, 1, 2, 2.25f, 2.75f, 3}));
  const FloatImage same = ResizeBilinear(in, 2, 2);
  EXPECT_EQ(same.pixels, in.pixels);
}

TEST(ResizeBilinearTest, ConstantStaysConstantAndCheckerboardAveragesWhenShrinking) {
  FloatImage board{8, 8, 2, {}};
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 8; ++x) {
      board.pixels.push_back(static_cast<float>((x + y) % 2));
      board.pixels.push_back(0.7f);
    }
  }
  const FloatImage small = ResizeBilinear(board, 4, 4);
  ASSERT_EQ(small.pixels.size(), 4u * 4u * 2u);
  for (int y = 1; y < 3; ++y) {
    for (int x = 1; x < 3; ++x) {
      // Every source pixel contributes: no aliasing to 0 or 1.
      EXPECT_NEAR(small.pixels[(y * 4 + x) * 2], 0.5f, 1e-6);
    }
  }
  for (size_t i = 1; i < small.pixels.size(); i += 2) EXPECT_NEAR(small.pixels[i], 0.7f, 1e-6);
}

class ResizeAgainstTorchTest
    : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int64_t>> {};

// The reference: torch's antialiased bilinear (PIL's filter) for every size pair, and its plain
// bilinear where both sides grow (they agree there).
TEST_P(ResizeAgainstTorchTest, MatchesTorch) {
  const auto [in_h, in_w, out_h, out_w] = GetParam();
  const int64_t channels = 3;
  const at::Tensor chw = at::rand({channels, in_h, in_w}, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor hwc = chw.permute({1, 2, 0}).contiguous();
  FloatImage image{in_h, in_w, channels,
                   std::vector<float>(hwc.data_ptr<float>(), hwc.data_ptr<float>() + hwc.numel())};
  const FloatImage out = ResizeBilinear(image, out_h, out_w);
  const at::Tensor ours =
      at::from_blob(const_cast<float*>(out.pixels.data()), {out_h, out_w, channels}, at::kFloat)
          .permute({2, 0, 1});
  const at::Tensor reference =
      at::_upsample_bilinear2d_aa(chw.unsqueeze(0), {out_h, out_w}, false).squeeze(0);
  EXPECT_LT((ours - reference).abs().max().item<float>(), 1e-5);
  if (out_h >= in_h && out_w >= in_w) {
    const at::Tensor plain =
        at::upsample_bilinear2d(chw.unsqueeze(0), {out_h, out_w}, false).squeeze(0);
    EXPECT_LT((ours - plain).abs().max().item<float>(), 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, ResizeAgainstTorchTest,
    ::testing::Values(std::make_tuple(5, 7, 10, 14), std::make_tuple(28, 28, 32, 32),
                      std::make_tuple(3, 4, 17, 9), std::make_tuple(64, 48, 16, 16),
                      std::make_tuple(30, 30, 7, 11), std::make_tuple(20, 10, 10, 20),
                      std::make_tuple(1, 9, 4, 3)));

}  // namespace
}  // namespace cleave
