#include "cleave/protocol/tensor_message.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

#include "cleave/core/error.h"

namespace cleave::protocol {
namespace {

TensorSpec ImageSpec() {
  TensorSpec spec;
  spec.sample_shape = {2, 3};
  spec.max_batch = 8;
  return spec;
}

TEST(TensorMessageTest, DenseRoundTrip) {
  const at::Tensor original = at::randn({4, 2, 3});
  v1::Tensor message;
  EncodeDense(original, &message);
  const DecodedTensor decoded = DecodeTensor(message, ImageSpec());
  EXPECT_FALSE(decoded.was_sparse);
  EXPECT_TRUE(decoded.dense.equal(original));
}

// max_batch is the largest batch accepted: exactly it passes, one more does not.
TEST(TensorMessageTest, TheBatchLimitIsInclusive) {
  v1::Tensor message;
  EncodeDense(at::randn({8, 2, 3}), &message);
  EXPECT_EQ(DecodeTensor(message, ImageSpec()).dense.size(0), 8);
  EncodeDense(at::randn({9, 2, 3}), &message);
  EXPECT_THROW(DecodeTensor(message, ImageSpec()), InvalidInput);
  EncodeDense(at::randn({9, 2, 3}), &message);
  message.set_sparse(std::string());  // the limit holds before the payload is looked at
  TensorSpec sparse = ImageSpec();
  sparse.allow_sparse = true;
  EXPECT_THROW(DecodeTensor(message, sparse), InvalidInput);
}

TEST(TensorMessageTest, Int64LabelsWithBounds) {
  v1::Tensor message;
  EncodeDense(at::tensor({0, 3, 9}, at::kLong), &message);
  TensorSpec spec;
  spec.dtype = v1::Tensor::INT64;
  spec.int_upper_bound = 10;
  EXPECT_EQ(DecodeTensor(message, spec).dense.sum().item<int64_t>(), 12);
  spec.int_upper_bound = 9;
  EXPECT_THROW(DecodeTensor(message, spec), InvalidInput);
}

TEST(TensorMessageTest, FiniteValuesBeyondTheMagnitudeBoundAreRefused) {
  at::Tensor huge = at::ones({2, 2, 3});
  huge.view(-1)[4] = 3e38f;  // finite, and enough to overflow any layer it meets
  TensorSpec spec = ImageSpec();
  spec.allow_sparse = true;
  v1::Tensor dense;
  EncodeDense(huge, &dense);
  EXPECT_NO_THROW(DecodeTensor(dense, spec));  // no bound: only NaN/Inf are refused
  spec.max_abs = 1e4;
  try {
    DecodeTensor(dense, spec);
    FAIL() << "a value of 3e38 passed a bound of 1e4";
  } catch (const OutOfBounds& error) {
    EXPECT_NE(std::string(error.what()).find("element 4"), std::string::npos) << error.what();
  }
  v1::Tensor sparse;
  EncodeSparse(huge, {0, 4}, ValuePrecision::kFp32, &sparse);
  EXPECT_THROW(DecodeTensor(sparse, spec), OutOfBounds);
  EncodeSparse(huge, {0, 5}, ValuePrecision::kFp32, &sparse);
  EXPECT_NO_THROW(DecodeTensor(sparse, spec));
  huge.view(-1)[4] = -1e4f;  // the bound itself is allowed
  EncodeDense(huge, &dense);
  EXPECT_NO_THROW(DecodeTensor(dense, spec));
}

TEST(TensorMessageTest, SparseRoundTripKeepsSentPositions) {
  at::Tensor original = at::zeros({2, 2, 3});
  original.view(-1)[1] = 1.5;
  original.view(-1)[7] = -2.25;
  v1::Tensor message;
  EncodeSparse(original, {1, 7}, ValuePrecision::kFp32, &message);
  TensorSpec spec = ImageSpec();
  EXPECT_THROW(DecodeTensor(message, spec), InvalidInput);  // sparse not allowed by default
  spec.allow_sparse = true;
  const DecodedTensor decoded = DecodeTensor(message, spec);
  EXPECT_TRUE(decoded.was_sparse);
  EXPECT_EQ(decoded.sent_indices, (std::vector<uint32_t>{1, 7}));
  EXPECT_TRUE(decoded.dense.equal(original));
}

TEST(TensorMessageTest, ValuesAtKnownPositions) {
  const at::Tensor gradient = at::randn({2, 2, 3});
  const std::vector<uint32_t> positions = {0, 5, 11};
  v1::Tensor message;
  EncodeValuesAt(gradient, positions, ValuePrecision::kFp32, &message);
  const at::Tensor back = DecodeValuesAt(message, {2, 2, 3}, positions, ValuePrecision::kFp32);
  for (uint32_t p : positions) {
    EXPECT_EQ(back.view(-1)[p].item<float>(), gradient.view(-1)[p].item<float>());
  }
  EXPECT_EQ(back.view(-1)[1].item<float>(), 0.0f);
  EXPECT_THROW(DecodeValuesAt(message, {2, 2, 4}, positions, ValuePrecision::kFp32), InvalidInput);
  EXPECT_THROW(DecodeValuesAt(message, {2, 2, 3}, {0, 5}, ValuePrecision::kFp32), InvalidInput);
}

TEST(TensorMessageTest, RejectsEveryMalformation) {
  v1::Tensor good;
  EncodeDense(at::randn({4, 2, 3}), &good);
  auto expect_invalid = [](const v1::Tensor& message) {
    EXPECT_THROW(DecodeTensor(message, ImageSpec()), InvalidInput) << message.DebugString();
  };
  v1::Tensor bad = good;
  bad.set_dtype(v1::Tensor::INT64);
  expect_invalid(bad);
  bad = good;
  bad.set_shape(2, 4);
  expect_invalid(bad);
  bad = good;
  bad.add_shape(1);
  expect_invalid(bad);
  bad = good;
  bad.set_shape(0, 9);  // over max batch
  expect_invalid(bad);
  bad = good;
  bad.set_shape(0, 0);
  expect_invalid(bad);
  bad = good;
  bad.set_shape(0, std::numeric_limits<int64_t>::max());
  expect_invalid(bad);
  bad = good;
  bad.mutable_dense()->pop_back();
  expect_invalid(bad);
  bad = good;
  bad.clear_dense();
  expect_invalid(bad);
  bad = good;
  bad.set_values("abc");
  expect_invalid(bad);
  at::Tensor with_nan = at::randn({4, 2, 3});
  with_nan[3][1][2] = std::numeric_limits<float>::quiet_NaN();
  EncodeDense(with_nan, &bad);
  expect_invalid(bad);
}

}  // namespace
}  // namespace cleave::protocol
