#include "cleave/privacy/png_grid.h"

#include <ATen/ATen.h>
#include <png.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave::privacy {

namespace {

constexpr uint8_t kGapGrey = 128;
constexpr int kMaxScale = 64;

// [N, H, W] float in [0, 1] -> uint8 on the CPU.
at::Tensor ToBytes(const at::Tensor& row) {
  CLEAVE_CHECK_USER(row.defined() && (row.dim() == 3 || (row.dim() == 4 && row.size(1) == 1)),
                    "PNG grid rows must be [N, 1, H, W] or [N, H, W] grayscale images, got ",
                    row.defined() ? row.sizes() : at::IntArrayRef{});
  const at::Tensor images = row.dim() == 4 ? row.select(1, 0) : row;
  return (images.detach().to(at::kCPU, at::kDouble).clamp(0, 1) * 255.0)
      .round()
      .to(at::kByte)
      .contiguous();
}

// Encodes with libpng's simplified API, which reports errors through the image struct instead
// of longjmp.
std::string EncodeGrayPng(const std::vector<uint8_t>& pixels, int64_t width, int64_t height) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = PNG_FORMAT_GRAY;
  png_alloc_size_t size = 0;
  // First call measures, second call writes.
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    throw Error("PNG encoding failed: " + message);
  }
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&image, bytes.data(), &size, 0, pixels.data(), 0, nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    throw Error("PNG encoding failed: " + message);
  }
  bytes.resize(size);
  return bytes;
}

}  // namespace

void WritePngGrid(const std::string& path, const std::vector<at::Tensor>& rows, int scale) {
  CLEAVE_CHECK_USER(!rows.empty(), "PNG grid needs at least one row of images");
  CLEAVE_CHECK_USER(scale >= 1 && scale <= kMaxScale, "PNG grid scale must be in 1..", kMaxScale,
                    ", got ", scale);
  std::vector<at::Tensor> bytes;
  for (const at::Tensor& row : rows) bytes.push_back(ToBytes(row));
  const int64_t height = bytes[0].size(1), width = bytes[0].size(2);
  int64_t columns = 0;
  for (const at::Tensor& row : bytes) {
    CLEAVE_CHECK_USER(row.size(1) == height && row.size(2) == width,
                      "PNG grid rows must share one image size, got ", height, "x", width, " and ",
                      row.size(1), "x", row.size(2));
    columns = std::max(columns, row.size(0));
  }
  CLEAVE_CHECK_USER(columns > 0 && height > 0 && width > 0, "PNG grid has no pixels");
  const int64_t cell_width = (width + 1) * scale, cell_height = (height + 1) * scale;
  const int64_t grid_width = columns * cell_width - scale;
  const int64_t grid_height = static_cast<int64_t>(bytes.size()) * cell_height - scale;
  CLEAVE_CHECK_USER(grid_width <= 65535 && grid_height <= 65535, "PNG grid too large: ", grid_width,
                    "x", grid_height);
  std::vector<uint8_t> pixels(static_cast<size_t>(grid_width * grid_height), kGapGrey);
  for (size_t r = 0; r < bytes.size(); ++r) {
    const uint8_t* source = bytes[r].data_ptr<uint8_t>();
    for (int64_t i = 0; i < bytes[r].size(0); ++i) {
      for (int64_t y = 0; y < height * scale; ++y) {
        uint8_t* out = pixels.data() + (static_cast<int64_t>(r) * cell_height + y) * grid_width +
                       i * cell_width;
        const uint8_t* in = source + (i * height + y / scale) * width;
        for (int64_t x = 0; x < width * scale; ++x) out[x] = in[x / scale];
      }
    }
  }
  WriteFileAtomic(path, EncodeGrayPng(pixels, grid_width, grid_height));
}

}  // namespace cleave::privacy
