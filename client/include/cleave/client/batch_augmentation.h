// Random image augmentation of a training batch at the hospital, before the bottom model sees
// it: a random crop after zero padding (each sample shifted by up to `crop_padding` pixels in
// each direction, the size kept) and a random horizontal flip. Seeded, so a run repeats.
// Only for image inputs [B, C, H, W]; evaluation batches are never augmented.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <random>
#include <vector>

namespace cleave::client {

struct AugmentationOptions {
  int64_t crop_padding = 0;  // 0: no crop
  bool horizontal_flip = false;

  bool enabled() const { return crop_padding > 0 || horizontal_flip; }
};

// Throws UserError unless `sample_shape` (one sample, no batch dimension) is an image
// [C, H, W] larger than the padding, when `options` are enabled.
void CheckAugmentationFits(const AugmentationOptions& options,
                           const std::vector<int64_t>& sample_shape);

class BatchAugmentation {
 public:
  // Throws UserError for a negative padding.
  BatchAugmentation(AugmentationOptions options, uint64_t seed);

  // A new batch (the input is not changed); see CheckAugmentationFits.
  at::Tensor Apply(const at::Tensor& inputs);
  bool enabled() const { return options_.enabled(); }

 private:
  AugmentationOptions options_;
  std::mt19937_64 random_;
};

}  // namespace cleave::client
