// The real Fashion-MNIST files as the end-to-end tests read them (the IDX reader's edge cases are
// tested on small files of their own in core/tests/dataset_test.cc).
#include "cleave/test_support/fashion_mnist.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "cleave/core/dataset.h"

namespace cleave {
namespace {

TEST(FashionMnistTest, LoadsBothSplits) {
  CLEAVE_REQUIRE_FASHION_MNIST();
  const Dataset& train = test_support::FashionMnist(FashionMnistSplit::kTrain);
  const Dataset& test = test_support::FashionMnist(FashionMnistSplit::kTest);
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.inputs.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.labels.scalar_type(), at::kLong);
  EXPECT_GE(test.inputs.min().item<float>(), 0.0f);
  EXPECT_LE(test.inputs.max().item<float>(), 1.0f);
  EXPECT_EQ(test.labels.min().item<int64_t>(), 0);
  EXPECT_EQ(test.labels.max().item<int64_t>(), 9);
  EXPECT_EQ(test.num_classes, 10);
}

}  // namespace
}  // namespace cleave
