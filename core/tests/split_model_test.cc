#include "cleave/core/split_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cleave/core/error.h"

namespace cleave {
namespace {

struct CutCase {
  const char* architecture;
  int cut;
  std::vector<int64_t> input_shape;
  std::vector<int64_t> cut_shape;
  std::vector<int64_t> hidden = {};
};

class SplitModelTest : public ::testing::TestWithParam<CutCase> {};

TEST_P(SplitModelTest, BottomThenTopIsTheFullModel) {
  ModelSpec spec;
  spec.architecture = GetParam().architecture;
  spec.cut = GetParam().cut;
  spec.input_shape = GetParam().input_shape;
  spec.hidden = GetParam().hidden;
  SplitModel model = BuildSplitModel(spec, 3);
  EXPECT_EQ(model.cut_shape, GetParam().cut_shape);
  EXPECT_EQ(model.num_blocks, NumBlocks(spec));
  std::vector<int64_t> batch_shape = {5};
  batch_shape.insert(batch_shape.end(), spec.input_shape.begin(), spec.input_shape.end());
  model.bottom->eval();
  model.top->eval();
  const at::Tensor cut = model.bottom->forward(at::rand(batch_shape));
  EXPECT_EQ(std::vector<int64_t>(cut.sizes().begin() + 1, cut.sizes().end()), model.cut_shape);
  EXPECT_EQ(model.top->forward(cut).sizes(), (std::vector<int64_t>{5, 10}));
  // Same seed, same weights.
  SplitModel again = BuildSplitModel(spec, 3);
  EXPECT_TRUE(model.bottom->parameters()[0].equal(again.bottom->parameters()[0]));
  EXPECT_TRUE(model.top->parameters().back().equal(again.top->parameters().back()));
  SplitModel other = BuildSplitModel(spec, 4);
  EXPECT_FALSE(model.bottom->parameters()[0].equal(other.bottom->parameters()[0]));
}

INSTANTIATE_TEST_SUITE_P(Zoo, SplitModelTest,
                         ::testing::Values(CutCase{"cnn", 1, {1, 28, 28}, {32, 14, 14}},
                                           CutCase{"cnn", 2, {1, 28, 28}, {64, 7, 7}},
                                           CutCase{"cnn", 3, {1, 28, 28}, {128}},
                                           CutCase{"cnn", 2, {3, 32, 32}, {64, 8, 8}},
                                           CutCase{"mlp", 1, {30}, {128}},
                                           CutCase{"mlp", 2, {30}, {64}},
                                           CutCase{"mlp", 3, {30}, {16}, {32, 24, 16}}));

TEST(SplitModelFingerprintTest, StableAndSensitive) {
  ModelSpec spec;
  const std::string fingerprint = ModelFingerprint(spec);
  EXPECT_EQ(fingerprint.size(), 16u);
  EXPECT_EQ(fingerprint, ModelFingerprint(spec));
  ModelSpec other = spec;
  other.cut = 2;
  EXPECT_NE(fingerprint, ModelFingerprint(other));
  other = spec;
  other.num_classes = 5;
  EXPECT_NE(fingerprint, ModelFingerprint(other));
  other = spec;
  other.input_shape = {3, 28, 28};
  EXPECT_NE(fingerprint, ModelFingerprint(other));
  ModelSpec mlp;
  mlp.architecture = "mlp";
  mlp.input_shape = {30};
  ModelSpec wider = mlp;
  wider.hidden = {256, 64};
  EXPECT_NE(ModelFingerprint(mlp), ModelFingerprint(wider));
  // The same digest on every machine and in every release that keeps the model: client and
  // server built at different times must agree.
  EXPECT_EQ(fingerprint, "3805d5d629b0945b");
}

TEST(SplitModelFingerprintTest, LeavesTheGlobalGeneratorAlone) {
  at::manual_seed(5);
  const at::Tensor expected = at::rand({4});
  at::manual_seed(5);
  ModelFingerprint(ModelSpec{});
  NumBlocks(ModelSpec{});
  EXPECT_TRUE(at::rand({4}).equal(expected));
}

TEST(SplitModelTest, BadSpecsAreUserErrors) {
  ModelSpec spec;
  spec.cut = 4;
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.cut = 0;
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.cut = 1;
  spec.architecture = "transformer";
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.architecture = "mlp";  // needs a flat input
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.input_shape = {30};
  spec.cut = 3;  // the default mlp has 3 blocks
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.hidden = {16, 0};
  spec.cut = 1;
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.hidden = {};
  spec.num_classes = 1;
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  ModelSpec odd_image;
  odd_image.input_shape = {1, 30, 30};  // two 2x2 poolings need H, W divisible by 4
  EXPECT_THROW(BuildSplitModel(odd_image, 1), UserError);
  EXPECT_EQ(NumBlocks(ModelSpec{}), 4);
}

}  // namespace
}  // namespace cleave
