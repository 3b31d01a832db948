#include "cleave/core/split_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cleave/core/error.h"
#include "cleave/core/split_config.h"

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

TEST(UShapedSplitTest, BottomMiddleTailIsTheFullModel) {
  ModelSpec spec;
  spec.cut = 1;
  spec.tail_layers = 1;
  SplitModel model = BuildSplitModel(spec, 3);
  ASSERT_TRUE(model.tail);
  EXPECT_EQ(model.middle_shape, (std::vector<int64_t>{128}));
  EXPECT_EQ(model.tail->size(), 1u);  // the last Linear
  model.bottom->eval();
  model.top->eval();
  model.tail->eval();
  const at::Tensor input = at::rand({5, 1, 28, 28});
  const at::Tensor logits = model.tail->forward(model.top->forward(model.bottom->forward(input)));
  // The same seed's vanilla split computes the same function.
  ModelSpec vanilla = spec;
  vanilla.tail_layers = 0;
  SplitModel whole = BuildSplitModel(vanilla, 3);
  whole.bottom->eval();
  whole.top->eval();
  EXPECT_TRUE(logits.allclose(whole.top->forward(whole.bottom->forward(input))));
  // Client-side weights are bottom then tail.
  const at::Tensor flat = FlattenClientParameters(model);
  EXPECT_EQ(flat.numel(),
            FlattenParameters(*model.bottom).numel() + FlattenParameters(*model.tail).numel());
  SplitModel other = BuildSplitModel(spec, 4);
  AssignClientParameters(other, flat);
  EXPECT_TRUE(FlattenClientParameters(other).equal(flat));
  EXPECT_THROW(AssignClientParameters(other, flat.slice(0, 1)), InvalidInput);
  // Tail and config are part of the fingerprint and the description.
  EXPECT_NE(ModelFingerprint(spec), ModelFingerprint(vanilla));
  ModelSpec two = spec;
  two.tail_layers = 2;
  EXPECT_NE(ModelFingerprint(spec), ModelFingerprint(two));
  EXPECT_NE(DescribeSpec(spec).find("u-shaped tail=1"), std::string::npos);
}

TEST(UShapedSplitTest, TheMiddleNeedsAtLeastOneBlock) {
  ModelSpec spec;  // cnn: 4 blocks
  spec.cut = 2;
  spec.tail_layers = 2;
  EXPECT_THROW(BuildSplitModel(spec, 1), UserError);
  spec.tail_layers = 1;
  EXPECT_NO_THROW(BuildSplitModel(spec, 1));
  ModelSpec mlp;
  mlp.architecture = "mlp";
  mlp.input_shape = {30};
  mlp.tail_layers = 1;  // [Linear 128, ReLU] | [Linear 64, ReLU] | [Linear classes]
  EXPECT_EQ(BuildSplitModel(mlp, 1).middle_shape, (std::vector<int64_t>{64}));
}

TEST(SplitConfigTest, NamesRoundTripAndUnknownIsAUserError) {
  for (SplitConfig config : {SplitConfig::kVanilla, SplitConfig::kUShaped, SplitConfig::kVertical}) {
    EXPECT_EQ(ParseSplitConfig(SplitConfigName(config)), config);
  }
  EXPECT_EQ(ParseSplitConfig(""), SplitConfig::kVanilla);
  EXPECT_THROW(ParseSplitConfig("u_shaped"), UserError);
}

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
