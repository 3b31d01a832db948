// GradientDefender: the defence a sender applies batch after batch (the binaries' and the
// leakage measurement's one path): off returns the gradients as they are, clip is
// ApplyGradientDefence itself, noise is seeded (two defenders with one seed agree) and differs
// from one batch to the next; a bad strength is refused.
#include "cleave/privacy/gradient_defence.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

#include "cleave/core/error.h"

namespace cleave::privacy {
namespace {

at::Tensor Gradients() {
  at::manual_seed(3);
  return at::randn({16, 5});
}

TEST(GradientDefenderTest, OffLeavesTheGradientsAlone) {
  GradientDefender defender({}, 7);
  const at::Tensor gradients = Gradients();
  EXPECT_FALSE(defender.active());
  EXPECT_TRUE(defender.Apply(gradients).is_same(gradients));
}

TEST(GradientDefenderTest, ClipIsTheDefenceItself) {
  GradientDefender defender({GradientDefenceKind::kClip, 0.5}, 7);
  const at::Tensor gradients = Gradients();
  EXPECT_TRUE(at::equal(defender.Apply(gradients),
                        ApplyGradientDefence(gradients, {GradientDefenceKind::kClip, 0.5}, 0)));
}

TEST(GradientDefenderTest, NoiseIsSeededAndNewEachBatch) {
  const GradientDefence noise{GradientDefenceKind::kNoise, 1.0};
  GradientDefender one(noise, 7), same(noise, 7), other(noise, 8);
  const at::Tensor gradients = Gradients();
  const at::Tensor first = one.Apply(gradients);
  EXPECT_TRUE(at::equal(first, same.Apply(gradients)));
  EXPECT_FALSE(at::allclose(first, other.Apply(gradients)));
  EXPECT_FALSE(at::allclose(first, one.Apply(gradients)));  // the second batch: new noise
  EXPECT_FALSE(at::allclose(first, gradients));
}

TEST(GradientDefenderTest, RefusesABadStrength) {
  EXPECT_THROW(GradientDefender({GradientDefenceKind::kClip, 0}, 1), UserError);
  EXPECT_THROW(GradientDefender({GradientDefenceKind::kNoise, -1}, 1), UserError);
  EXPECT_THROW(
      GradientDefender({GradientDefenceKind::kNoise, std::numeric_limits<double>::infinity()}, 1),
      UserError);
  EXPECT_NO_THROW(GradientDefender({GradientDefenceKind::kNone, 0}, 1));
}

}  // namespace
}  // namespace cleave::privacy
