#include "cleave/core/image_file.h"

// libjpeg's header needs size_t and FILE declared first.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on
#include <png.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave {
namespace {

// Larger images are refused before any pixel buffer is allocated: a corrupt or hostile header
// must not make us allocate gigabytes.
constexpr int64_t kMaxPixels = int64_t{1} << 28;

void CheckImageSize(int64_t height, int64_t width, const std::string& name) {
  CLEAVE_CHECK_USER(height > 0 && width > 0, "image '", name, "' has no pixels (", height, "x",
                    width, ")");
  CLEAVE_CHECK_USER(height * width <= kMaxPixels, "image '", name, "' is too large (", height, "x",
                    width, ", at most ", kMaxPixels, " pixels)");
}

void CheckWritable(const Image& image, const std::string& path) {
  CLEAVE_CHECK_USER(image.channels == 1 || image.channels == 3, "cannot write '", path,
                    "': images have 1 or 3 channels, not ", image.channels);
  CheckImageSize(image.height, image.width, path);
  CLEAVE_CHECK_USER(
      image.pixels.size() == static_cast<size_t>(image.height * image.width * image.channels),
      "cannot write '", path, "': pixel count does not match its size");
}

Image DecodePng(const std::string& bytes, const std::string& name) {
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size())) {
    throw UserError("cannot decode image '" + name + "': " + png.message);
  }
  Image image;
  image.height = png.height;
  image.width = png.width;
  image.channels = (png.format & PNG_FORMAT_FLAG_COLOR) != 0 ? 3 : 1;
  try {
    CheckImageSize(image.height, image.width, name);
  } catch (...) {
    png_image_free(&png);
    throw;
  }
  png.format = image.channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  // 16-bit data without gAMA/sRGB is scaled to 8 bits as it is; libpng's default would take it
  // as linear light and gamma-encode it, brightening every mid-tone (16-bit scans, X-rays).
  png.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
  image.pixels.assign(PNG_IMAGE_SIZE(png), 0);
  const png_color black{0, 0, 0};
  if (!png_image_finish_read(&png, &black, image.pixels.data(), 0, nullptr)) {
    const std::string message = png.message;
    png_image_free(&png);
    throw UserError("cannot decode image '" + name + "': " + message);
  }
  return image;
}

// libjpeg reports errors through error_exit, which must not return: we jump back to the frame
// that called setjmp. Warnings (a truncated or damaged stream) are counted and kept: a file
// that decodes only with warnings is refused too.
struct JpegErrors {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  info->err->format_message(info, errors->message);
  std::longjmp(errors->jump, 1);
}

void JpegKeepMessage(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  info->err->format_message(info, errors->message);
}

jpeg_error_mgr* InitJpegErrors(JpegErrors* errors) {
  jpeg_error_mgr* manager = jpeg_std_error(&errors->manager);
  manager->error_exit = JpegErrorExit;
  manager->output_message = JpegKeepMessage;
  errors->message[0] = '\0';
  return manager;
}

// Only trivially destructible objects live in this frame (longjmp skips destructors); the pixel
// vector belongs to the caller. Returns false with errors->message set on failure.
bool DecodeJpegInto(const std::string& bytes, Image* image, JpegErrors* errors) {
  jpeg_decompress_struct info;
  info.err = InitJpegErrors(errors);
  if (setjmp(errors->jump)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  info.out_color_space = info.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_calc_output_dimensions(&info);
  const int64_t height = info.output_height, width = info.output_width;
  if (height <= 0 || width <= 0 || height * width > kMaxPixels) {
    std::snprintf(errors->message, sizeof(errors->message),
                  "%lldx%lld pixels is not a size we "
                  "accept (at most %lld)",
                  static_cast<long long>(height), static_cast<long long>(width),
                  static_cast<long long>(kMaxPixels));
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_start_decompress(&info);
  image->height = height;
  image->width = width;
  image->channels = info.output_components;
  image->pixels.resize(static_cast<size_t>(height * width * image->channels));
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = image->pixels.data() + info.output_scanline * width * image->channels;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  const long warnings = info.err->num_warnings;
  jpeg_destroy_decompress(&info);
  return warnings == 0;
}

Image DecodeJpeg(const std::string& bytes, const std::string& name) {
  JpegErrors errors;
  Image image;
  if (!DecodeJpegInto(bytes, &image, &errors)) {
    throw UserError("cannot decode image '" + name + "': " + errors.message);
  }
  return image;
}

// Compresses into a buffer libjpeg allocates (*out, freed by the caller with free()).
bool EncodeJpegInto(const Image& image, int quality, unsigned char** out, unsigned long* size,
                    JpegErrors* errors) {
  jpeg_compress_struct info;
  info.err = InitJpegErrors(errors);
  if (setjmp(errors->jump)) {
    jpeg_destroy_compress(&info);
    return false;
  }
  jpeg_create_compress(&info);
  jpeg_mem_dest(&info, out, size);
  info.image_width = static_cast<JDIMENSION>(image.width);
  info.image_height = static_cast<JDIMENSION>(image.height);
  info.input_components = static_cast<int>(image.channels);
  info.in_color_space = image.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < info.image_height) {
    // libjpeg's row type is not const; it does not write through it.
    JSAMPROW row = const_cast<JSAMPLE*>(image.pixels.data()) +
                   info.next_scanline * image.width * image.channels;
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  return true;
}

// A plain write (no fsync: tools write thousands of these), errors naming the file.
void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  CLEAVE_CHECK_USER(out.good(), "cannot write image '", path, "': ", std::strerror(errno));
}

}  // namespace

bool HasImageExtension(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* ext : {".png", ".jpg", ".jpeg"}) {
    const size_t n = std::strlen(ext);
    if (lower.size() > n && lower.compare(lower.size() - n, n, ext) == 0) return true;
  }
  return false;
}

Image DecodeImage(const std::string& bytes, const std::string& name) {
  static const unsigned char kPng[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  static const unsigned char kJpeg[] = {0xff, 0xd8, 0xff};
  if (bytes.size() >= sizeof(kPng) && std::memcmp(bytes.data(), kPng, sizeof(kPng)) == 0) {
    return DecodePng(bytes, name);
  }
  if (bytes.size() >= sizeof(kJpeg) && std::memcmp(bytes.data(), kJpeg, sizeof(kJpeg)) == 0) {
    return DecodeJpeg(bytes, name);
  }
  throw UserError("cannot decode image '" + name + "': not a PNG or JPEG file" +
                  (bytes.empty() ? " (empty)" : ""));
}

Image ReadImageFile(const std::string& path) { return DecodeImage(ReadFile(path, "image"), path); }

void WritePng(const std::string& path, const Image& image) {
  CheckWritable(image, path);
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = image.channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  size_t size = 0;
  CLEAVE_CHECK_USER(
      png_image_write_to_memory(&png, nullptr, &size, 0, image.pixels.data(), 0, nullptr),
      "cannot encode '", path, "' as PNG: ", png.message);
  std::string bytes(size, '\0');
  CLEAVE_CHECK_USER(
      png_image_write_to_memory(&png, bytes.data(), &size, 0, image.pixels.data(), 0, nullptr),
      "cannot encode '", path, "' as PNG: ", png.message);
  bytes.resize(size);
  WriteBytes(path, bytes);
}

void WriteJpeg(const std::string& path, const Image& image, int quality) {
  CheckWritable(image, path);
  CLEAVE_CHECK_USER(quality >= 1 && quality <= 100, "JPEG quality must be in 1..100, got ",
                    quality);
  JpegErrors errors;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  const bool ok = EncodeJpegInto(image, quality, &buffer, &size, &errors);
  std::string bytes = ok ? std::string(reinterpret_cast<const char*>(buffer), size) : "";
  std::free(buffer);
  CLEAVE_CHECK_USER(ok, "cannot encode '", path, "' as JPEG: ", errors.message);
  WriteBytes(path, bytes);
}

FloatImage ToFloat(const Image& image) {
  FloatImage out{image.height, image.width, image.channels, {}};
  out.pixels.resize(image.pixels.size());
  std::transform(image.pixels.begin(), image.pixels.end(), out.pixels.begin(),
                 [](uint8_t v) { return static_cast<float>(v) / 255.0f; });
  return out;
}

FloatImage ConvertChannels(const FloatImage& image, int64_t channels) {
  CLEAVE_ENFORCE(channels == 1 || channels == 3, "channels must be 1 or 3, got ", channels);
  if (image.channels == channels) return image;
  CLEAVE_ENFORCE(image.channels == 1 || image.channels == 3, "bad channel count ", image.channels);
  const int64_t pixels = image.height * image.width;
  FloatImage out{image.height, image.width, channels, {}};
  out.pixels.resize(static_cast<size_t>(pixels * channels));
  const float* in = image.pixels.data();
  float* o = out.pixels.data();
  for (int64_t p = 0; p < pixels; ++p) {
    if (channels == 3) {
      o[3 * p] = o[3 * p + 1] = o[3 * p + 2] = in[p];
    } else {
      o[p] = 0.299f * in[3 * p] + 0.587f * in[3 * p + 1] + 0.114f * in[3 * p + 2];
    }
  }
  return out;
}

namespace {

// For every output position along one axis: the first input position and the normalised
// triangle-filter weights of `taps` consecutive inputs (PIL's precompute_coeffs for BILINEAR).
struct AxisWeights {
  int64_t taps = 0;
  std::vector<int64_t> first;
  std::vector<float> weights;  // [out][taps], zero-padded
};

AxisWeights ComputeAxisWeights(int64_t in, int64_t out) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  const double stretch = std::max(scale, 1.0);  // downscaling widens the filter
  const double support = stretch;               // the triangle's radius, in input pixels
  AxisWeights axis;
  axis.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  axis.first.resize(static_cast<size_t>(out));
  axis.weights.assign(static_cast<size_t>(out * axis.taps), 0.0f);
  for (int64_t o = 0; o < out; ++o) {
    const double center = (static_cast<double>(o) + 0.5) * scale;
    const int64_t lo =
        std::max<int64_t>(static_cast<int64_t>(std::floor(center - support + 0.5)), 0);
    const int64_t hi =
        std::min<int64_t>(static_cast<int64_t>(std::floor(center + support + 0.5)), in);
    double total = 0;
    std::vector<double> w(static_cast<size_t>(std::max<int64_t>(hi - lo, 0)));
    for (int64_t i = lo; i < hi; ++i) {
      const double x = (static_cast<double>(i) + 0.5 - center) / stretch;
      w[static_cast<size_t>(i - lo)] = std::max(0.0, 1.0 - std::abs(x));
      total += w[static_cast<size_t>(i - lo)];
    }
    axis.first[static_cast<size_t>(o)] = lo;
    for (int64_t i = lo; i < hi && i - lo < axis.taps; ++i) {
      axis.weights[static_cast<size_t>(o * axis.taps + i - lo)] =
          static_cast<float>(total > 0 ? w[static_cast<size_t>(i - lo)] / total : 0.0);
    }
  }
  return axis;
}

// Resamples along one axis of a [outer, in, inner] array into [outer, out, inner].
std::vector<float> ResampleAxis(const std::vector<float>& src, int64_t outer, int64_t in,
                                int64_t inner, int64_t out) {
  const AxisWeights axis = ComputeAxisWeights(in, out);
  std::vector<float> dst(static_cast<size_t>(outer * out * inner), 0.0f);
  for (int64_t a = 0; a < outer; ++a) {
    for (int64_t o = 0; o < out; ++o) {
      float* d = dst.data() + (a * out + o) * inner;
      const int64_t first = axis.first[static_cast<size_t>(o)];
      const int64_t taps = std::min(axis.taps, in - first);
      for (int64_t t = 0; t < taps; ++t) {
        const float w = axis.weights[static_cast<size_t>(o * axis.taps + t)];
        if (w == 0.0f) continue;
        const float* s = src.data() + (a * in + first + t) * inner;
        for (int64_t k = 0; k < inner; ++k) d[k] += w * s[k];
      }
    }
  }
  return dst;
}

}  // namespace

FloatImage ResizeBilinear(const FloatImage& image, int64_t height, int64_t width) {
  CLEAVE_ENFORCE(height > 0 && width > 0, "resize to ", height, "x", width);
  if (image.height == height && image.width == width) return image;
  const int64_t c = image.channels;
  // Rows first ([1, H, W*C] -> [1, h, W*C]), then columns ([h, W, C] -> [h, w, C]).
  std::vector<float> rows = ResampleAxis(image.pixels, 1, image.height, image.width * c, height);
  FloatImage out{height, width, c, {}};
  out.pixels = ResampleAxis(rows, height, image.width, c, width);
  return out;
}

}  // namespace cleave
