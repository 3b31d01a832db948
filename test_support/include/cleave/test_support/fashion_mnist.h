// Fashion-MNIST for the integration tests (the unit tests use tiny_data.h and need no data set on
// disk). The directory is $CLEAVE_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist.
// Without it the tests that need it fail, naming the directory, unless
// CLEAVE_SKIP_DATASET_TESTS=1 says to skip them: a missing data set never passes silently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "cleave/core/dataset.h"

namespace cleave::test_support {

std::string FashionMnistDir();

// Why the data set cannot be used (a file missing), or nothing when all four files are there.
std::optional<std::string> FashionMnistProblem();

// CLEAVE_SKIP_DATASET_TESTS is set to 1.
bool SkipDatasetTests();

// The first `rows` rows (all with -1) of a split, loaded once per process and split.
const Dataset& FashionMnist(FashionMnistSplit split, int64_t rows = -1);

}  // namespace cleave::test_support

// In a test or its SetUp, before anything reads the data set: skips when it is absent and
// CLEAVE_SKIP_DATASET_TESTS=1, fails otherwise.
#define CLEAVE_REQUIRE_FASHION_MNIST()                                                     \
  if (const auto cleave_fashion_problem = ::cleave::test_support::FashionMnistProblem()) { \
    if (::cleave::test_support::SkipDatasetTests()) {                                      \
      GTEST_SKIP() << *cleave_fashion_problem << " (CLEAVE_SKIP_DATASET_TESTS=1)";         \
    }                                                                                      \
    FAIL() << *cleave_fashion_problem                                                      \
           << ": install it, point CLEAVE_FASHION_MNIST_DIR at it, or set "                \
              "CLEAVE_SKIP_DATASET_TESTS=1 to skip the tests that need it";                \
  }
