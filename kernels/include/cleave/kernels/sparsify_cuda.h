// The CUDA backend of the sparsification kernels: the same operations as sparsify.h on device
// pointers, queued on a stream. Built when nvcc is found (CLEAVE_HAVE_CUDA); every CUDA call is
// checked and throws cleave::Error with the file, line and CUDA's message.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cleave/kernels/sparsify.h"

namespace cleave::kernels::cuda {

using Stream = void*;  // a cudaStream_t; nullptr is the default stream

// False (never throws) when there is no driver or no device.
bool DeviceAvailable();

// All pointers are device pointers; results that are sizes come back to the host (the call
// synchronises the stream for them).
Moments ComputeMoments(const float* x, size_t n, Stream stream = nullptr);
size_t CountAbove(const float* x, size_t n, float threshold, Stream stream = nullptr);
size_t SelectAbove(const float* x, size_t n, float threshold, uint32_t* indices, float* values,
                   size_t capacity, Stream stream = nullptr);
size_t TopK(const float* x, size_t n, size_t k, uint32_t* indices, float* values,
            Stream stream = nullptr);
size_t RandomK(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices, float* values,
               Stream stream = nullptr);
// `counts` is a host array of `bins` entries; the bins are exactly the CPU kernel's.
void AbsHistogram(const float* x, size_t n, float lo, float hi, size_t bins, uint64_t* counts,
                  Stream stream = nullptr);
// kernels::ThresholdByHistogram over the device histogram (same threshold as the CPU).
float ThresholdByHistogram(const float* x, size_t n, size_t k, size_t* expected_count,
                           Stream stream = nullptr);

}  // namespace cleave::kernels::cuda
