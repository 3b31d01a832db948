// A grayscale PNG contact sheet: one row of images per tensor (originals above reconstructions).
#pragma once

#include <ATen/Tensor.h>

#include <string>
#include <vector>

namespace cleave::privacy {

// Writes `rows` (each [N, 1, H, W] or [N, H, W], values in [0, 1], all with the same H and W;
// rows may hold different N) as an 8-bit grayscale PNG: row r, image i starts at pixel
// (x, y) = (i (W + 1) scale, r (H + 1) scale), every pixel is a scale x scale block of
// round(255 clamp(v, 0, 1)), and the 1-pixel (x scale) gaps between cells are mid-grey (128).
// Encoded in memory, then written with WriteFileAtomic. Throws UserError for bad shapes, a scale
// outside 1..64, or a path that cannot be written.
void WritePngGrid(const std::string& path, const std::vector<at::Tensor>& rows, int scale = 1);

}  // namespace cleave::privacy
