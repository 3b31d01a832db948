#include <cuda_runtime.h>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cmath>
#include <cub/cub.cuh>
#include <random>
#include <unordered_set>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/kernels/sparsify_cuda.h"

#define CLEAVE_CUDA_CHECK(call)                                                                  \
  do {                                                                                           \
    const cudaError_t status_ = (call);                                                          \
    if (status_ != cudaSuccess) {                                                                \
      throw ::cleave::Error(::cleave::detail::Concat(__FILE__, ":", __LINE__, ": ", #call,       \
                                                     " failed: ", cudaGetErrorString(status_))); \
    }                                                                                            \
  } while (0)

namespace cleave::kernels::cuda {

namespace {

constexpr int kThreads = 256;

cudaStream_t AsStream(Stream stream) { return static_cast<cudaStream_t>(stream); }

int BlocksFor(size_t n) {
  const size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<size_t>(1, std::min<size_t>(blocks, 4096)));
}

// Device scratch memory kept between calls, per host thread: a call takes numbered slots, each
// grown (cudaMalloc) only when it needs more than the slot holds or runs on another device, so a
// caller that selects from tensors of similar size allocates nothing after the first call. Safe
// because every operation here synchronises its stream before it returns.
enum Slot { kSums, kCounts, kSelected, kTemp, kKeys, kSortedKeys, kOrder, kSortedOrder, kSortTemp,
            kSlots };

class Scratch {
 public:
  ~Scratch() {
    for (Block& block : blocks_) Release(&block);
  }
  template <typename T>
  T* Get(Slot slot, size_t count) {
    Block& block = blocks_[slot];
    int device = 0;
    CLEAVE_CUDA_CHECK(cudaGetDevice(&device));
    const size_t bytes = std::max<size_t>(1, count) * sizeof(T);
    if (block.ptr == nullptr || block.bytes < bytes || block.device != device) {
      Release(&block);
      CLEAVE_CUDA_CHECK(cudaMalloc(&block.ptr, bytes));
      block.bytes = bytes;
      block.device = device;
    }
    return static_cast<T*>(block.ptr);
  }

 private:
  struct Block {
    void* ptr = nullptr;
    size_t bytes = 0;
    int device = -1;
  };
  static void Release(Block* block) {
    if (block->ptr != nullptr) cudaFree(block->ptr);  // unified addressing: from any device
    *block = Block{};
  }
  Block blocks_[kSlots];
};

template <typename T>
T* ScratchFor(Slot slot, size_t count) {
  thread_local Scratch scratch;
  return scratch.Get<T>(slot, count);
}

// A device buffer from the scratch slot `slot` (not freed: the slot keeps it).
template <typename T>
struct DeviceBuffer {
  T* ptr;
  DeviceBuffer(Slot slot, size_t count) : ptr(ScratchFor<T>(slot, count)) {}
};

struct MaxOp {
  __device__ double operator()(double a, double b) const { return a > b ? a : b; }
};

struct MomentSums {
  double sum, sum_squares;
  float max_abs;
};

// Sums of (v - shift) and its square in double, v = x or |x|, shift = the first v: the variance
// then comes from sums of size ~n * std rather than n * mean, so no catastrophic cancellation.
__global__ void MomentsKernel(const float* x, size_t n, MomentSums* out) {
  using BlockReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const double shift = x[0];
  double sum = 0, squares = 0;
  float max_abs = 0;
  for (size_t i = blockIdx.x * size_t{kThreads} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * kThreads) {
    const double v = x[i] - shift;
    sum += v;
    squares += v * v;
    max_abs = fmaxf(max_abs, fabsf(x[i]));
  }
  const double block_sum = BlockReduce(storage).Sum(sum);
  __syncthreads();
  const double block_squares = BlockReduce(storage).Sum(squares);
  __syncthreads();
  const double block_max = BlockReduce(storage).Reduce(static_cast<double>(max_abs), MaxOp());
  if (threadIdx.x == 0) {
    atomicAdd(&out->sum, block_sum);
    atomicAdd(&out->sum_squares, block_squares);
    // max of non-negative floats: their bit patterns order like unsigned ints.
    atomicMax(reinterpret_cast<unsigned int*>(&out->max_abs),
              __float_as_uint(static_cast<float>(block_max)));
  }
}

// Block-local histogram in shared memory, added to the global counts once per block.
__global__ void HistogramKernel(const float* x, size_t n, float lo, float hi, float scale,
                                unsigned bins, unsigned long long* counts) {
  extern __shared__ unsigned int local[];
  for (unsigned b = threadIdx.x; b < bins; b += kThreads) local[b] = 0;
  __syncthreads();
  const float last = static_cast<float>(bins - 1);
  for (size_t i = blockIdx.x * size_t{kThreads} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * kThreads) {
    const float magnitude = fabsf(x[i]);
    if (!(magnitude >= lo && magnitude < hi)) continue;
    const float position = __fmul_rn(__fsub_rn(magnitude, lo), scale);  // as on the CPU
    atomicAdd(&local[position < last ? static_cast<unsigned>(position) : bins - 1], 1u);
  }
  __syncthreads();
  for (unsigned b = threadIdx.x; b < bins; b += kThreads) {
    if (local[b] != 0) atomicAdd(&counts[b], static_cast<unsigned long long>(local[b]));
  }
}

__global__ void CountKernel(const float* x, size_t n, float threshold, unsigned long long* out) {
  using BlockReduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  unsigned long long count = 0;
  for (size_t i = blockIdx.x * size_t{kThreads} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * kThreads) {
    count += fabsf(x[i]) > threshold;
  }
  const unsigned long long block = BlockReduce(storage).Sum(count);
  if (threadIdx.x == 0) atomicAdd(out, block);
}

struct AbsAbove {
  const float* x;
  float threshold;
  __device__ bool operator()(uint32_t i) const { return fabsf(x[i]) > threshold; }
};

__global__ void GatherKernel(const float* x, const uint32_t* indices, size_t count, float* values) {
  for (size_t i = blockIdx.x * size_t{kThreads} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * kThreads) {
    values[i] = x[indices[i]];
  }
}

__global__ void AbsKernel(const float* x, size_t n, float* out, uint32_t* iota) {
  for (size_t i = blockIdx.x * size_t{kThreads} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * kThreads) {
    out[i] = fabsf(x[i]);
    iota[i] = static_cast<uint32_t>(i);
  }
}

// Stable selection of every index with |x| > threshold (ascending), into a scratch buffer of n.
size_t SelectIndices(const float* x, size_t n, float threshold, uint32_t* out, cudaStream_t s) {
  DeviceBuffer<size_t> count(kCounts, 1);
  thrust::counting_iterator<uint32_t> positions(0);
  size_t temp_bytes = 0;
  CLEAVE_CUDA_CHECK(cub::DeviceSelect::If(nullptr, temp_bytes, positions, out, count.ptr,
                                          static_cast<int64_t>(n), AbsAbove{x, threshold}, s));
  DeviceBuffer<char> temp(kTemp, temp_bytes);
  CLEAVE_CUDA_CHECK(cub::DeviceSelect::If(temp.ptr, temp_bytes, positions, out, count.ptr,
                                          static_cast<int64_t>(n), AbsAbove{x, threshold}, s));
  size_t host_count = 0;
  CLEAVE_CUDA_CHECK(
      cudaMemcpyAsync(&host_count, count.ptr, sizeof(size_t), cudaMemcpyDeviceToHost, s));
  CLEAVE_CUDA_CHECK(cudaStreamSynchronize(s));
  return host_count;
}

// Copies the first min(count, capacity) selected indices out and gathers their values.
size_t Emit(const float* x, const uint32_t* selected, size_t count, uint32_t* indices,
            float* values, size_t capacity, cudaStream_t s) {
  const size_t take = std::min(count, capacity);
  if (take > 0) {
    CLEAVE_CUDA_CHECK(
        cudaMemcpyAsync(indices, selected, take * sizeof(uint32_t), cudaMemcpyDeviceToDevice, s));
    GatherKernel<<<BlocksFor(take), kThreads, 0, s>>>(x, indices, take, values);
    CLEAVE_CUDA_CHECK(cudaGetLastError());
  }
  CLEAVE_CUDA_CHECK(cudaStreamSynchronize(s));
  return count;
}

}  // namespace

bool DeviceAvailable() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();  // clear the sticky error of a missing driver
  return ok;
}

namespace {

Moments MomentsOf(const float* x, size_t n, cudaStream_t s) {
  Moments out;
  out.n = n;
  if (n == 0) return out;
  DeviceBuffer<MomentSums> sums(kSums, 1);
  CLEAVE_CUDA_CHECK(cudaMemsetAsync(sums.ptr, 0, sizeof(MomentSums), s));
  MomentsKernel<<<BlocksFor(n), kThreads, 0, s>>>(x, n, sums.ptr);
  CLEAVE_CUDA_CHECK(cudaGetLastError());
  MomentSums host{};
  float first = 0;
  CLEAVE_CUDA_CHECK(cudaMemcpyAsync(&host, sums.ptr, sizeof(host), cudaMemcpyDeviceToHost, s));
  CLEAVE_CUDA_CHECK(cudaMemcpyAsync(&first, x, sizeof(float), cudaMemcpyDeviceToHost, s));
  CLEAVE_CUDA_CHECK(cudaStreamSynchronize(s));
  const double shift = first;
  const double shifted_mean = host.sum / static_cast<double>(n);
  out.mean = shift + shifted_mean;
  const double variance = host.sum_squares / static_cast<double>(n) - shifted_mean * shifted_mean;
  out.stddev = variance > 0 ? std::sqrt(variance) : 0.0;
  out.max_abs = host.max_abs;
  return out;
}

}  // namespace

Moments ComputeMoments(const float* x, size_t n, Stream stream) {
  return MomentsOf(x, n, AsStream(stream));
}

void AbsHistogram(const float* x, size_t n, float lo, float hi, size_t bins, uint64_t* counts,
                  Stream stream) {
  CLEAVE_ENFORCE(bins > 0 && bins <= 8192 && lo < hi, "histogram of ", bins, " bins over [", lo,
                 ", ", hi, ")");
  const cudaStream_t s = AsStream(stream);
  DeviceBuffer<unsigned long long> device_counts(kCounts, bins);
  CLEAVE_CUDA_CHECK(cudaMemsetAsync(device_counts.ptr, 0, bins * sizeof(unsigned long long), s));
  if (n > 0) {
    const float scale = static_cast<float>(bins) / (hi - lo);  // as on the CPU
    HistogramKernel<<<BlocksFor(n), kThreads, bins * sizeof(unsigned int), s>>>(
        x, n, lo, hi, scale, static_cast<unsigned>(bins), device_counts.ptr);
    CLEAVE_CUDA_CHECK(cudaGetLastError());
  }
  static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "64-bit counts");
  CLEAVE_CUDA_CHECK(cudaMemcpyAsync(counts, device_counts.ptr, bins * sizeof(uint64_t),
                                    cudaMemcpyDeviceToHost, s));
  CLEAVE_CUDA_CHECK(cudaStreamSynchronize(s));
}

float ThresholdByHistogram(const float* x, size_t n, size_t k, size_t* expected_count,
                           Stream stream) {
  struct Buffer {
    const float* x;
    size_t n;
    Stream stream;
  } buffer{x, n, stream};
  const Moments moments = ComputeMoments(x, n, stream);
  return kernels::ThresholdByHistogram(
      [](const void* context, float lo, float hi, size_t bins, uint64_t* counts) {
        const auto* data = static_cast<const Buffer*>(context);
        AbsHistogram(data->x, data->n, lo, hi, bins, counts, data->stream);
      },
      &buffer, n, static_cast<float>(moments.max_abs), k, expected_count);
}

size_t CountAbove(const float* x, size_t n, float threshold, Stream stream) {
  const cudaStream_t s = AsStream(stream);
  if (n == 0) return 0;
  DeviceBuffer<unsigned long long> count(kCounts, 1);
  CLEAVE_CUDA_CHECK(cudaMemsetAsync(count.ptr, 0, sizeof(unsigned long long), s));
  CountKernel<<<BlocksFor(n), kThreads, 0, s>>>(x, n, threshold, count.ptr);
  CLEAVE_CUDA_CHECK(cudaGetLastError());
  unsigned long long host = 0;
  CLEAVE_CUDA_CHECK(cudaMemcpyAsync(&host, count.ptr, sizeof(host), cudaMemcpyDeviceToHost, s));
  CLEAVE_CUDA_CHECK(cudaStreamSynchronize(s));
  return static_cast<size_t>(host);
}

size_t SelectAbove(const float* x, size_t n, float threshold, uint32_t* indices, float* values,
                   size_t capacity, Stream stream) {
  const cudaStream_t s = AsStream(stream);
  if (n == 0) return 0;
  DeviceBuffer<uint32_t> selected(kSelected, n);
  const size_t count = SelectIndices(x, n, threshold, selected.ptr, s);
  return Emit(x, selected.ptr, count, indices, values, capacity, s);
}

size_t TopK(const float* x, size_t n, size_t k, uint32_t* indices, float* values, Stream stream) {
  const cudaStream_t s = AsStream(stream);
  k = std::min(k, n);
  if (k == 0) return 0;
  DeviceBuffer<float> keys(kKeys, n), sorted_keys(kSortedKeys, n);
  DeviceBuffer<uint32_t> order(kOrder, n), sorted_order(kSortedOrder, n);
  AbsKernel<<<BlocksFor(n), kThreads, 0, s>>>(x, n, keys.ptr, order.ptr);
  CLEAVE_CUDA_CHECK(cudaGetLastError());
  // Radix sort is stable: equal magnitudes keep ascending indices, as on the CPU.
  size_t temp_bytes = 0;
  CLEAVE_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      nullptr, temp_bytes, keys.ptr, sorted_keys.ptr, order.ptr, sorted_order.ptr,
      static_cast<int64_t>(n), 0, 32, s));
  DeviceBuffer<char> temp(kTemp, temp_bytes);
  CLEAVE_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
      temp.ptr, temp_bytes, keys.ptr, sorted_keys.ptr, order.ptr, sorted_order.ptr,
      static_cast<int64_t>(n), 0, 32, s));
  size_t sort_bytes = 0;
  CLEAVE_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, sorted_order.ptr, order.ptr,
                                                   static_cast<int64_t>(k), 0, 32, s));
  DeviceBuffer<char> sort_temp(kSortTemp, sort_bytes);
  CLEAVE_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(sort_temp.ptr, sort_bytes, sorted_order.ptr,
                                                   order.ptr, static_cast<int64_t>(k), 0, 32, s));
  return Emit(x, order.ptr, k, indices, values, k, s);
}

size_t RandomK(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices, float* values,
               Stream stream) {
  const cudaStream_t s = AsStream(stream);
  k = std::min(k, n);
  if (k == 0) return 0;
  // Positions are drawn on the host with the CPU kernel's exact algorithm (same seed, same
  // positions), then gathered on the device.
  std::vector<float> dummy(n, 0.0f);
  std::vector<uint32_t> host_indices(k);
  std::vector<float> host_values(k);
  kernels::RandomK(dummy.data(), n, k, seed, host_indices.data(), host_values.data());
  CLEAVE_CUDA_CHECK(cudaMemcpyAsync(indices, host_indices.data(), k * sizeof(uint32_t),
                                    cudaMemcpyHostToDevice, s));
  GatherKernel<<<BlocksFor(k), kThreads, 0, s>>>(x, indices, k, values);
  CLEAVE_CUDA_CHECK(cudaGetLastError());
  CLEAVE_CUDA_CHECK(cudaStreamSynchronize(s));
  return k;
}

}  // namespace cleave::kernels::cuda
