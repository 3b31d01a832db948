// PeriodicTask (the session reaper's thread) and the value bounds SplitServer resolves at start.
#include "cleave/server/periodic_task.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "cleave/core/error.h"
#include "cleave/server/value_bounds.h"

namespace cleave::server {
namespace {

using namespace std::chrono_literals;

TEST(PeriodicTaskTest, RunsEveryPeriodUntilDestroyed) {
  std::mutex mutex;
  std::condition_variable ran;
  int runs = 0;
  {
    PeriodicTask task(1ms, [&] {
      std::lock_guard<std::mutex> lock(mutex);
      ++runs;
      ran.notify_all();
    });
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(ran.wait_for(lock, 30s, [&] { return runs >= 3; }));
  }
  // Destroyed: the thread has stopped, so the count no longer moves.
  std::lock_guard<std::mutex> lock(mutex);
  const int after = runs;
  EXPECT_GE(after, 3);
  EXPECT_EQ(runs, after);
}

TEST(PeriodicTaskTest, ALongPeriodDoesNotDelayDestruction) {
  int runs = 0;
  const auto started = std::chrono::steady_clock::now();
  {
    PeriodicTask task(std::chrono::hours(1), [&] { ++runs; });
  }
  EXPECT_EQ(runs, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 30s);
}

TEST(ValueBoundsTest, ConfiguredBoundsAreKeptZeroIsDerivedNegativeIsRefused) {
  ModelSpec spec;
  spec.architecture = "mlp";
  spec.input_shape = {8};
  spec.num_classes = 3;
  spec.cut = 1;
  const SplitModel model = BuildSplitModel(spec, 1);
  const ValueBounds kept = ResolveValueBounds({5.0, 7.0}, spec, model, 1);
  EXPECT_EQ(kept.activation_abs, 5.0);
  EXPECT_EQ(kept.update_abs, 7.0);
  const ValueBounds derived = ResolveValueBounds({0, 0}, spec, model, 1);
  EXPECT_EQ(derived.activation_abs, DeriveActivationBound(spec, model, 1));
  EXPECT_EQ(derived.update_abs, DeriveUpdateBound(model));
  EXPECT_THROW(ResolveValueBounds({-1, 0}, spec, model, 1), UserError);
  EXPECT_THROW(ResolveValueBounds({0, -1}, spec, model, 1), UserError);
}

}  // namespace
}  // namespace cleave::server
