#include "cleave/client/batch_augmentation.h"

#include <ATen/ATen.h>

#include "cleave/core/error.h"

namespace cleave::client {

BatchAugmentation::BatchAugmentation(AugmentationOptions options, uint64_t seed)
    : options_(options), random_(seed ^ 0x61756720u) {
  CLEAVE_CHECK_USER(options_.crop_padding >= 0, "--augment-crop must be >= 0, got ",
                    options_.crop_padding);
}

void CheckAugmentationFits(const AugmentationOptions& options,
                           const std::vector<int64_t>& sample_shape) {
  if (!options.enabled()) return;
  CLEAVE_CHECK_USER(sample_shape.size() == 3,
                    "--augment-crop/--augment-flip need image samples (channels x height x "
                    "width), got ", sample_shape.size(), "-d samples");
  CLEAVE_CHECK_USER(options.crop_padding < sample_shape[1] && options.crop_padding < sample_shape[2],
                    "--augment-crop ", options.crop_padding, " must be smaller than the image (",
                    sample_shape[1], "x", sample_shape[2], ")");
}

at::Tensor BatchAugmentation::Apply(const at::Tensor& inputs) {
  if (!options_.enabled()) return inputs;
  const auto sample = inputs.sizes().slice(1);
  CheckAugmentationFits(options_, std::vector<int64_t>(sample.begin(), sample.end()));
  const int64_t batch = inputs.size(0), height = inputs.size(2), width = inputs.size(3);
  const int64_t pad = options_.crop_padding;
  at::Tensor out = at::empty_like(inputs);
  const at::Tensor padded =
      pad > 0 ? at::constant_pad_nd(inputs, {pad, pad, pad, pad}, 0.0) : inputs;
  std::uniform_int_distribution<int64_t> offset(0, 2 * pad);
  std::bernoulli_distribution flip(0.5);
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t top = pad > 0 ? offset(random_) : 0;
    const int64_t left = pad > 0 ? offset(random_) : 0;
    at::Tensor sample = padded[i].narrow(1, top, height).narrow(2, left, width);
    if (options_.horizontal_flip && flip(random_)) sample = sample.flip({2});
    out[i].copy_(sample);
  }
  return out;
}

}  // namespace cleave::client
