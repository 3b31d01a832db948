// ActivationCompressor's choice of cut-layer elements: over the whole batch or per sample.
#include "cleave/client/activation_compressor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cleave/compress/sparse_codec.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::client {
namespace {

constexpr int64_t kRows = 8;
constexpr int64_t kRowNumel = 32 * 14 * 14;  // the CNN's cut layer

protocol::DirectionSpec Settings(Method method, double density, bool per_sample) {
  return {method, density, ValuePrecision::kFp16, per_sample};
}

// A batch whose first sample is 100x larger than the others: selected over the whole batch it
// takes nearly all of the budget.
at::Tensor LopsidedBatch() {
  at::manual_seed(7);
  at::Tensor batch = at::randn({kRows, 32, 14, 14}).abs();
  batch[0].mul_(100.0);
  return batch;
}

std::vector<int64_t> CountPerRow(const std::vector<uint32_t>& indices) {
  std::vector<int64_t> counts(kRows, 0);
  for (uint32_t index : indices) ++counts.at(index / kRowNumel);
  return counts;
}

TEST(ActivationCompressorTest, PerSampleGivesEveryRowItsShareInAscendingOrder) {
  for (const Method method : {Method::kGaussianKPlus, Method::kTopK, Method::kGaussianK}) {
    SCOPED_TRACE(MethodName(method));
    ActivationCompressor compressor(Settings(method, 0.05, /*per_sample=*/true), 1);
    const SelectedActivations selected = compressor.Select(LopsidedBatch());
    ASSERT_FALSE(selected.all);
    EXPECT_TRUE(std::is_sorted(selected.indices.begin(), selected.indices.end()));
    EXPECT_EQ(std::adjacent_find(selected.indices.begin(), selected.indices.end()),
              selected.indices.end());
    const auto k = std::llround(0.05 * kRowNumel);  // 314
    for (int64_t count : CountPerRow(selected.indices)) {
      if (method == Method::kGaussianK) {
        // The paper's threshold rule lands near k, not on it.
        EXPECT_NEAR(count, k, 0.5 * k);
      } else {
        EXPECT_EQ(count, k);
      }
    }
  }
}

TEST(ActivationCompressorTest, PerSampleKeepsTheLargestOfEachRow) {
  ActivationCompressor compressor(Settings(Method::kGaussianKPlus, 0.05, /*per_sample=*/true), 1);
  const at::Tensor batch = LopsidedBatch();
  const SelectedActivations selected = compressor.Select(batch);
  const at::Tensor magnitude = batch.abs().reshape({kRows, kRowNumel});
  const at::Tensor kept = selected.mask.reshape({kRows, kRowNumel}).gt(0.5);
  for (int64_t row = 0; row < kRows; ++row) {
    const float smallest_kept = magnitude[row].masked_select(kept[row]).min().item<float>();
    const float largest_dropped =
        magnitude[row].masked_select(kept[row].logical_not()).max().item<float>();
    EXPECT_GE(smallest_kept, largest_dropped) << "row " << row;
  }
}

TEST(ActivationCompressorTest, WholeBatchSelectionLetsOneLargeSampleTakeTheBudget) {
  ActivationCompressor compressor(Settings(Method::kGaussianKPlus, 0.05, /*per_sample=*/false), 1);
  const SelectedActivations selected = compressor.Select(LopsidedBatch());
  const std::vector<int64_t> counts = CountPerRow(selected.indices);
  const auto total = std::llround(0.05 * kRows * kRowNumel);
  EXPECT_EQ(static_cast<int64_t>(selected.indices.size()), total);
  EXPECT_GT(counts[0], total / 2);
  for (int64_t row = 1; row < kRows; ++row) EXPECT_LT(counts[row], total / kRows) << row;
}

TEST(ActivationCompressorTest, MaskMatchesTheIndicesAndGradientComesBackAtThem) {
  ActivationCompressor compressor(Settings(Method::kGaussianKPlus, 0.1, /*per_sample=*/true), 1);
  const at::Tensor batch = LopsidedBatch();
  const SelectedActivations selected = compressor.Select(batch);
  EXPECT_EQ(selected.mask.sum().item<int64_t>(), static_cast<int64_t>(selected.indices.size()));
  const at::Tensor ones = selected.mask.reshape({-1}).nonzero().reshape({-1});
  EXPECT_TRUE(at::equal(
      ones, at::tensor(std::vector<int64_t>(selected.indices.begin(), selected.indices.end()),
                       at::kLong)));
  v1::Tensor message;
  compressor.Encode(batch, selected, &message);
  ASSERT_EQ(message.payload_case(), v1::Tensor::kSparse);

  // The server's reply: gradient values at exactly the sent positions (here, the values sent).
  v1::Tensor reply;
  protocol::EncodeValuesAt(batch, selected.indices, ValuePrecision::kFp32, &reply);
  const at::Tensor gradient = protocol::GradientDecoder(protocol::DirectionSpec{})
                                  .Decode(reply, {kRows, 32, 14, 14}, selected);
  EXPECT_TRUE(at::equal(gradient, batch * selected.mask));
  EXPECT_TRUE(at::equal(selected.Apply(batch), batch * selected.mask));
}

// The mask is made on the activations' device: a CUDA bottom model keeps its forward pass there.
TEST(ActivationCompressorTest, MaskLivesOnTheActivationsDevice) {
  if (!at::hasCUDA()) GTEST_SKIP() << "LibTorch without CUDA or no device";
  ActivationCompressor compressor(Settings(Method::kTopK, 0.05, /*per_sample=*/false), 1);
  const at::Tensor batch = LopsidedBatch();
  const SelectedActivations on_cpu = compressor.Select(batch);
  ActivationCompressor again(Settings(Method::kTopK, 0.05, /*per_sample=*/false), 1);
  const SelectedActivations on_device = again.Select(batch.to(at::kCUDA));
  EXPECT_TRUE(on_device.mask.is_cuda());
  EXPECT_EQ(on_device.indices, on_cpu.indices);
  EXPECT_TRUE(at::equal(on_device.mask.cpu(), on_cpu.mask));
}

}  // namespace
}  // namespace cleave::client
