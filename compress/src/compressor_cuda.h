// The CUDA path of the compressors, compiled only when both the kernels and LibTorch have CUDA
// (CLEAVE_COMPRESS_CUDA): CUDA tensors are selected on their device by the kernels' CUDA backend
// on the current stream, and only the selection comes back to the host.
#pragma once

#include <ATen/Tensor.h>

#include <cstddef>
#include <cstdint>

#include "cleave/compress/compressor.h"

namespace cleave::detail {

// `flat` is a contiguous 1-d float32 CUDA tensor. Fills out->indices/values; false for a method
// without a device path (the caller then copies to the CPU).
bool SelectOnCuda(Method method, const at::Tensor& flat, size_t k, uint64_t seed, Selection* out);

}  // namespace cleave::detail
