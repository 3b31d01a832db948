#include "cleave/privacy/png_grid.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <png.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/test_support/temp_dir.h"

namespace cleave::privacy {
namespace {

class PngGridTest : public ::testing::Test {
 protected:
  test_support::TempDir dir_;
};

struct GrayImage {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> pixels;
};

// Reads back through libpng, independently of the writer.
GrayImage ReadGrayPng(const std::string& path) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  EXPECT_TRUE(png_image_begin_read_from_file(&image, path.c_str())) << image.message;
  EXPECT_EQ(image.format, static_cast<png_uint_32>(PNG_FORMAT_GRAY));  // stored as 8-bit gray
  image.format = PNG_FORMAT_GRAY;
  GrayImage out;
  out.width = image.width;
  out.height = image.height;
  out.pixels.resize(PNG_IMAGE_SIZE(image));
  EXPECT_TRUE(png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr))
      << image.message;
  return out;
}

TEST_F(PngGridTest, WritesOriginalsAboveReconstructionsAtScale) {
  at::manual_seed(7);
  const at::Tensor originals = at::rand({3, 1, 5, 4});
  const at::Tensor reconstructions = at::rand({2, 5, 4});  // shorter row, [N, H, W] form
  const std::string path = dir_.File("grid.png");
  const int scale = 2;
  WritePngGrid(path, {originals, reconstructions}, scale);

  const GrayImage png = ReadGrayPng(path);
  EXPECT_EQ(png.width, 3u * (4 + 1) * scale - scale);
  EXPECT_EQ(png.height, 2u * (5 + 1) * scale - scale);
  auto at_pixel = [&](int64_t x, int64_t y) { return png.pixels.at(y * png.width + x); };
  auto expected = [](const at::Tensor& v) {
    return static_cast<int>(std::lround(255.0 * v.item<double>()));
  };
  // Original 2, pixel (row 3, column 1): a 2x2 block at x = 2 * 10 + 2, y = 6.
  for (int dy = 0; dy < scale; ++dy) {
    for (int dx = 0; dx < scale; ++dx) {
      EXPECT_EQ(at_pixel(22 + dx, 6 + dy), expected(originals[2][0][3][1]));
    }
  }
  // Reconstruction 1, pixel (row 4, column 3): x = 10 + 6, y = 12 + 8.
  EXPECT_EQ(at_pixel(16, 20), expected(reconstructions[1][4][3]));
  EXPECT_EQ(at_pixel(8, 0), 128);    // gap between the first two columns
  EXPECT_EQ(at_pixel(0, 10), 128);   // gap between the rows
  EXPECT_EQ(at_pixel(25, 15), 128);  // the missing third reconstruction
}

TEST_F(PngGridTest, ClampsValuesOutsideTheUnitInterval) {
  const std::string path = dir_.File("clamped.png");
  at::Tensor images = at::zeros({1, 1, 2, 2});
  images[0][0][0][0] = -3.0;
  images[0][0][0][1] = 7.0;
  WritePngGrid(path, {images}, 1);
  const GrayImage png = ReadGrayPng(path);
  ASSERT_EQ(png.pixels.size(), 4u);
  EXPECT_EQ(png.pixels[0], 0);
  EXPECT_EQ(png.pixels[1], 255);
}

TEST_F(PngGridTest, RejectsBadInputsAndPaths) {
  const at::Tensor images = at::rand({2, 1, 4, 4});
  const std::string path = dir_.File("bad.png");
  EXPECT_THROW(WritePngGrid(path, {}, 1), UserError);
  EXPECT_THROW(WritePngGrid(path, {images}, 0), UserError);
  EXPECT_THROW(WritePngGrid(path, {at::rand({2, 3, 4, 4})}, 1), UserError);  // not grayscale
  EXPECT_THROW(WritePngGrid(path, {images, at::rand({2, 1, 5, 4})}, 1), UserError);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_THROW(WritePngGrid(dir_.File("missing/grid.png"), {images}, 1), UserError);
}

}  // namespace
}  // namespace cleave::privacy
