#include "cleave/client/batch_augmentation.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cleave/core/error.h"

namespace cleave::client {
namespace {

// Each sample a distinct ramp, so any shift or flip shows.
at::Tensor Ramps(int64_t batch, int64_t channels, int64_t height, int64_t width) {
  return at::arange(batch * channels * height * width, at::kFloat)
             .reshape({batch, channels, height, width}) + 1;
}

TEST(BatchAugmentationTest, DisabledReturnsTheBatchUnchanged) {
  BatchAugmentation augmentation({}, 1);
  const at::Tensor x = Ramps(3, 1, 5, 5);
  EXPECT_FALSE(augmentation.enabled());
  EXPECT_TRUE(augmentation.Apply(x).equal(x));
}

TEST(BatchAugmentationTest, FlipMirrorsSomeSamplesAndKeepsTheOthers) {
  BatchAugmentation augmentation({0, true}, 7);
  const at::Tensor x = Ramps(64, 2, 4, 6);
  const at::Tensor y = augmentation.Apply(x);
  int flipped = 0;
  for (int64_t i = 0; i < x.size(0); ++i) {
    if (y[i].equal(x[i].flip({2}))) {
      ++flipped;
    } else {
      EXPECT_TRUE(y[i].equal(x[i])) << i;
    }
  }
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 54);
}

TEST(BatchAugmentationTest, CropShiftsEachSampleWithinThePadding) {
  const int64_t pad = 2, height = 6, width = 7;
  BatchAugmentation augmentation({pad, false}, 3);
  const at::Tensor x = Ramps(32, 1, height, width);
  const at::Tensor y = augmentation.Apply(x);
  ASSERT_EQ(y.sizes(), x.sizes());
  const at::Tensor padded = at::constant_pad_nd(x, {pad, pad, pad, pad}, 0.0);
  int shifted = 0;
  for (int64_t i = 0; i < x.size(0); ++i) {
    bool found = false;
    for (int64_t top = 0; top <= 2 * pad && !found; ++top) {
      for (int64_t left = 0; left <= 2 * pad && !found; ++left) {
        if (y[i].equal(padded[i].narrow(1, top, height).narrow(2, left, width))) {
          found = true;
          if (top != pad || left != pad) ++shifted;
        }
      }
    }
    EXPECT_TRUE(found) << "sample " << i << " is not a crop of its padded image";
  }
  EXPECT_GT(shifted, 16);  // 24 of 25 offsets shift: nearly all samples move
}

TEST(BatchAugmentationTest, SameSeedSameBatchesAndInputUntouched) {
  const at::Tensor x = Ramps(8, 1, 5, 5);
  const at::Tensor copy = x.clone();
  BatchAugmentation a({1, true}, 11), b({1, true}, 11), c({1, true}, 12);
  const at::Tensor ya = a.Apply(x), yb = b.Apply(x), yc = c.Apply(x);
  EXPECT_TRUE(ya.equal(yb));
  EXPECT_FALSE(ya.equal(yc));
  EXPECT_TRUE(x.equal(copy));
}

TEST(BatchAugmentationTest, RefusesFlatInputsAndOversizedPadding) {
  BatchAugmentation flat({1, false}, 1);
  EXPECT_THROW(flat.Apply(at::ones({4, 30})), UserError);
  BatchAugmentation big({5, false}, 1);
  EXPECT_THROW(big.Apply(at::ones({2, 1, 5, 5})), UserError);
  EXPECT_THROW(BatchAugmentation({-1, false}, 1), UserError);
}

}  // namespace
}  // namespace cleave::client
