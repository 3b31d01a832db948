// PNG and JPEG files to and from 8-bit pixels (libpng's simplified API, libjpeg-turbo), channel
// conversion and bilinear resizing. No LibTorch: image_folder.h turns these into data sets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cleave {

// Row-major pixels, channels interleaved (HWC): 1 channel (grey) or 3 (RGB).
struct Image {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels
};

// True for names ending in .png, .jpg or .jpeg (any case).
bool HasImageExtension(const std::string& name);

// Decodes a PNG or JPEG (told apart by their first bytes, not the name). Grey stays 1 channel,
// colour becomes RGB; a PNG's alpha is composited onto black, 16-bit PNGs are scaled to 8 bits
// (v * 255 / 65535, not gamma-encoded; libpng's simplified API corrects a gAMA other than
// sRGB's). Throws UserError naming `name` for anything else or a corrupt file.
Image DecodeImage(const std::string& bytes, const std::string& name);
// DecodeImage of a file's contents (errors name the file).
Image ReadImageFile(const std::string& path);

// Writers for tests and tools (8-bit grey or RGB; plain writes, not atomic). Throw UserError
// naming the file.
void WritePng(const std::string& path, const Image& image);
void WriteJpeg(const std::string& path, const Image& image, int quality = 95);

// Float pixels in [0, 1], HWC, and the conversions the data pipeline applies to them.
struct FloatImage {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  std::vector<float> pixels;
};
// value / 255.
FloatImage ToFloat(const Image& image);
// 1 -> 3: the grey value in every channel; 3 -> 1: luma 0.299 R + 0.587 G + 0.114 B (ITU-R
// BT.601, as PIL's "L" mode). The same count returns the image unchanged.
FloatImage ConvertChannels(const FloatImage& image, int64_t channels);
// Resamples to height x width with a separable triangle (bilinear) filter on half-pixel centres:
// upscaling is exactly bilinear interpolation with edges clamped (torch's upsample_bilinear2d,
// align_corners=false); downscaling widens the filter to the scale factor so every source pixel
// contributes (antialiased, as PIL's BILINEAR and torch's antialias=True) instead of aliasing.
FloatImage ResizeBilinear(const FloatImage& image, int64_t height, int64_t width);

}  // namespace cleave
