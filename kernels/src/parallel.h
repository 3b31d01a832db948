// Contiguous-chunk parallel loops for the CPU kernels (no pool: a kernel call on a large buffer
// costs milliseconds, thread start tens of microseconds; small buffers run on the caller).
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace cleave::kernels::detail {

constexpr size_t kMinElementsPerThread = size_t{1} << 16;

int ThreadsFor(size_t n);

// Calls fn(chunk, begin, end) for `chunks` contiguous chunks of [0, n), in parallel.
template <typename Fn>
void ParallelChunks(size_t n, int chunks, Fn&& fn) {
  if (chunks <= 1) {
    fn(0, size_t{0}, n);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(chunks - 1));
  for (int c = 1; c < chunks; ++c) {
    const size_t begin = n * static_cast<size_t>(c) / static_cast<size_t>(chunks);
    const size_t end = n * static_cast<size_t>(c + 1) / static_cast<size_t>(chunks);
    threads.emplace_back([&fn, c, begin, end] { fn(c, begin, end); });
  }
  fn(0, size_t{0}, n / static_cast<size_t>(chunks));
  for (auto& thread : threads) thread.join();
}

}  // namespace cleave::kernels::detail
