#include "compressor_cuda.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstring>

#include "cleave/kernels/sparsify_cuda.h"
#include "gaussiank_rule.h"

namespace cleave::detail {

namespace kc = kernels::cuda;

bool SelectOnCuda(Method method, const at::Tensor& flat, size_t k, uint64_t seed, Selection* out) {
  const bool topk = method == Method::kTopK, randomk = method == Method::kRandomK;
  const bool gaussiank = method == Method::kGaussianK;
  if (method == Method::kNone) return false;
  const c10::cuda::CUDAGuard guard(flat.device());
  void* stream = c10::cuda::getCurrentCUDAStream(flat.device().index()).stream();
  const float* x = flat.data_ptr<float>();
  const size_t n = static_cast<size_t>(flat.numel());

  // Device outputs from LibTorch's caching allocator; indices are uint32 in int32 storage.
  at::Tensor indices, values;
  size_t capacity = 0;
  auto allocate = [&](size_t count) {
    capacity = count;
    const auto length = static_cast<int64_t>(std::max<size_t>(1, count));
    indices = at::empty({length}, flat.options().dtype(at::kInt));
    values = at::empty({length}, flat.options());
  };
  auto index_ptr = [&] { return reinterpret_cast<uint32_t*>(indices.data_ptr<int32_t>()); };

  size_t count = 0;
  if (topk || randomk) {
    allocate(k);
    count = topk ? kc::TopK(x, n, k, index_ptr(), values.data_ptr<float>(), stream)
                 : kc::RandomK(x, n, k, seed, index_ptr(), values.data_ptr<float>(), stream);
  } else {
    size_t expected = 0;
    const float threshold =
        gaussiank ? GaussianKRule(
                        n, k, [&] { return kc::ComputeMoments(x, n, stream); },
                        [&](float t) { return kc::CountAbove(x, n, t, stream); }, &expected)
                  : kc::ThresholdByHistogram(x, n, k, &expected, stream);
    allocate(expected + expected / 64 + 16);  // bin-edge slack
    count =
        kc::SelectAbove(x, n, threshold, index_ptr(), values.data_ptr<float>(), capacity, stream);
    if (count > capacity) {
      allocate(count);
      kc::SelectAbove(x, n, threshold, index_ptr(), values.data_ptr<float>(), capacity, stream);
    }
  }
  out->indices.resize(count);
  out->values.resize(count);
  if (count > 0) {
    const auto length = static_cast<int64_t>(count);
    const at::Tensor host_indices = indices.narrow(0, 0, length).cpu();
    const at::Tensor host_values = values.narrow(0, 0, length).cpu();
    std::memcpy(out->indices.data(), host_indices.data_ptr<int32_t>(), count * sizeof(uint32_t));
    std::memcpy(out->values.data(), host_values.data_ptr<float>(), count * sizeof(float));
  }
  return true;
}

}  // namespace cleave::detail
