// Tiny synthetic data sets and small models for the tests, so that no unit test needs a data set
// on disk. Every data set comes from its own seeded generator (LibTorch's global one is left
// alone), so the same seed gives the same rows in any thread and any order of tests.
#pragma once

#include <cstdint>
#include <vector>

#include "cleave/core/dataset.h"
#include "cleave/core/split_model.h"

namespace cleave::test_support {

// Standard normal features; the label is the argmax of the features times a fixed matrix
// (sin(0), sin(1), ... as [features, classes]): learnable to well above 90% by a small mlp.
Dataset LinearRuleData(int64_t rows, uint64_t seed, int64_t features = 12, int64_t classes = 3);

// Standard normal features; the label is whether the first one is positive (two classes). The
// other features are noise: a client can hide them (NoPeek) at no cost in accuracy.
Dataset FirstFeatureData(int64_t rows, uint64_t seed, int64_t features = 20);

// Standard normal features and uniformly random labels: something to take a step on.
Dataset RandomData(int64_t rows, int64_t features, int64_t classes, uint64_t seed);

// Smooth images in [0, 1] shaped like Fashion-MNIST ([rows, 1, 28, 28]: random 7x7 patterns
// upsampled), labelled by whether their mean brightness is above the median.
Dataset SmoothImages(int64_t rows, uint64_t seed);

// Images shaped like Fashion-MNIST with uniform pixels and random labels over 10 classes: the
// "cnn" model's input where nothing needs to be learnt.
Dataset NoiseImages(int64_t rows, uint64_t seed);

// An "mlp" split after its first block: input [features] -> hidden... -> classes.
ModelSpec MlpSpec(int64_t features, std::vector<int64_t> hidden, int64_t classes);

// The "cnn" on 1x28x28 images (10 classes), split after `cut` blocks.
ModelSpec CnnSpec(int cut = 1);

}  // namespace cleave::test_support
