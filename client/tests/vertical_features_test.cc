#include "cleave/client/vertical_features.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>

#include "cleave/client/vertical_party.h"
#include "cleave/core/error.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/vertical_fingerprint.h"
#include "cleave/test_support/temp_dir.h"

namespace cleave::client {
namespace {

TEST(VerticalFeaturesTest, ImageHalvesKeepTheirPixelsAndZeroTheRest) {
  const at::Tensor images = at::rand({3, 1, 28, 28}) + 0.5;
  const at::Tensor left = SelectImagePart(images, "left");
  const at::Tensor right = SelectImagePart(images, "right");
  EXPECT_EQ(left.sizes(), images.sizes());
  EXPECT_TRUE(at::equal(left.narrow(3, 0, 14), images.narrow(3, 0, 14)));
  EXPECT_EQ(left.narrow(3, 14, 14).abs().sum().item<float>(), 0);
  EXPECT_TRUE(at::equal(left + right, images));  // the halves tile the image
  EXPECT_TRUE(
      at::equal(SelectImagePart(images, "top") + SelectImagePart(images, "bottom"), images));
  EXPECT_THROW(SelectImagePart(images, "middle"), UserError);
  EXPECT_THROW(SelectImagePart(at::rand({3, 784}), "left"), UserError);
}

TEST(VerticalFeaturesTest, ColumnsAreARangeWithinTheFeatures) {
  const at::Tensor features = at::arange(20, at::kFloat).reshape({2, 10});
  EXPECT_TRUE(at::equal(SelectColumns(features, "2:5"), features.narrow(1, 2, 3)));
  for (const char* bad : {"5:2", "0:11", "3", "a:b", "1:2x", "-1:3"}) {
    EXPECT_THROW(SelectColumns(features, bad), UserError) << bad;
  }
}

TEST(VerticalFeaturesTest, SharedIdsSelectAndOrderTheRowsById) {
  Dataset data;
  data.inputs = at::arange(5, at::kFloat).reshape({5, 1});
  data.labels = at::arange(5, at::kLong);
  // Rows hold ids 40, 10, 30, 20, 50; the parties share 10, 30, 50.
  const Dataset aligned = AlignToSharedIds(data, {40, 10, 30, 20, 50}, {10, 30, 50});
  EXPECT_TRUE(at::equal(aligned.labels, at::tensor({1, 2, 4}, at::kLong)));
  EXPECT_THROW(AlignToSharedIds(data, {40, 10, 30, 20, 50}, {30, 10}), UserError);  // not sorted
  EXPECT_THROW(AlignToSharedIds(data, {40, 10, 30, 20, 50}, {10, 35}), UserError);  // not here
}

TEST(VerticalFeaturesTest, SharedIdsFileIsReadLineByLine) {
  test_support::TempDir dir;
  const std::string path = dir.path() + "/ids.txt";
  std::ofstream(path) << "1\n4\n\n7\n";
  EXPECT_EQ(ReadSharedIds(path), (std::vector<int64_t>{1, 4, 7}));
  std::ofstream(path) << "1\nfour\n";
  EXPECT_THROW(ReadSharedIds(path), UserError);
}

TEST(VerticalPartyTest, JoinRequestCarriesThePartyAndItsCutShape) {
  v1::JoinRequest request;
  DescribeVerticalParty(SplitConfig::kVertical, 1, 10, {32, 14, 14}, &request);
  EXPECT_EQ(request.vertical_party(), 1);
  EXPECT_EQ(request.vertical_cut_shape_size(), 3);
  EXPECT_EQ(request.model_fingerprint(), protocol::VerticalFingerprint(10));
  v1::JoinRequest vanilla;
  DescribeVerticalParty(SplitConfig::kVanilla, 1, 10, {32}, &vanilla);
  EXPECT_EQ(vanilla.vertical_cut_shape_size(), 0);
}

TEST(VerticalPartyTest, ARoleFromTheReplyAndAConfigurationMismatchIsFatal) {
  v1::JoinReply reply;
  reply.mutable_server()->set_config("vertical");
  reply.mutable_server()->set_vertical_parties(2);
  reply.mutable_server()->set_vertical_label_holder(1);
  reply.mutable_server()->set_vertical_batch_seed(99);
  const VerticalRole role = AdoptVerticalRole(SplitConfig::kVertical, 0, reply);
  EXPECT_TRUE(role.enabled);
  EXPECT_FALSE(role.holds_labels);
  EXPECT_EQ(role.batch_seed, 99u);
  EXPECT_TRUE(AdoptVerticalRole(SplitConfig::kVertical, 1, reply).holds_labels);
  EXPECT_THROW(AdoptVerticalRole(SplitConfig::kVertical, 2, reply), InvalidInput);
  try {
    AdoptVerticalRole(SplitConfig::kVanilla, 0, reply);
    FAIL() << "no error";
  } catch (const protocol::StatusError& error) {
    EXPECT_EQ(error.code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  v1::JoinReply old_server;  // says nothing: vanilla
  EXPECT_FALSE(AdoptVerticalRole(SplitConfig::kVanilla, 0, old_server).enabled);
}

}  // namespace
}  // namespace cleave::client
