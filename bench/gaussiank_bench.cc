// CPU selection of ~k of n elements by magnitude: Gaussian-k (paper), gaussiank+ (ours), exact
// top-k by torch::topk and by std::nth_element, and the memory floor (two plain reads of the
// same buffer: statistics, then selection), all in one run.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "cleave/compress/compressor.h"
#include "cleave/kernels/sparsify.h"

namespace {

const std::vector<float>& Data(size_t n) {
  static std::vector<float> data;
  if (data.size() != n) {
    data.resize(n);
    std::mt19937_64 rng(1);
    std::normal_distribution<float> normal(0, 1);
    for (float& v : data) v = normal(rng);
  }
  return data;
}

size_t N(const benchmark::State& state) { return size_t{1} << state.range(0); }
double Density(const benchmark::State& state) { return state.range(1) / 1000.0; }

void Report(benchmark::State& state, size_t selected) {
  const size_t n = N(state);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * sizeof(float)));
  state.counters["selected/k"] =
      static_cast<double>(selected) / std::max(1.0, std::round(Density(state) * n));
}

void BM_MemoryFloorTwoReads(benchmark::State& state) {
  const auto& x = Data(N(state));
  for (auto _ : state) {
    // Read 1 (statistics) and read 2 (selection) as plain multithreaded passes.
    benchmark::DoNotOptimize(cleave::kernels::CountAbove(x.data(), x.size(), 1e30f));
    benchmark::DoNotOptimize(cleave::kernels::CountAbove(x.data(), x.size(), 1e30f));
  }
  Report(state, static_cast<size_t>(std::round(Density(state) * N(state))));
}

void RunCompressor(benchmark::State& state, cleave::Method method) {
  const auto& x = Data(N(state));
  const at::Tensor tensor =
      at::from_blob(const_cast<float*>(x.data()), {static_cast<int64_t>(x.size())}, at::kFloat);
  auto compressor = cleave::MakeCompressor({method, Density(state), 1});
  cleave::Selection selection;  // reused, as a caller compressing one tensor shape would
  for (auto _ : state) compressor->Compress(tensor, &selection);
  Report(state, selection.indices.size());
}

void BM_GaussianK(benchmark::State& state) { RunCompressor(state, cleave::Method::kGaussianK); }
void BM_GaussianKPlus(benchmark::State& state) {
  RunCompressor(state, cleave::Method::kGaussianKPlus);
}

// gaussiank+'s kernel alone: outputs and workspace allocated once, outside the loop (what the
// compressor adds on top is the Selection it returns).
void BM_SampledTopKKernel(benchmark::State& state) {
  const auto& x = Data(N(state));
  const size_t k = static_cast<size_t>(std::round(Density(state) * N(state)));
  std::vector<uint32_t> indices(k);
  std::vector<float> values(k);
  cleave::kernels::SelectionWorkspace workspace;
  size_t selected = 0;
  uint64_t seed = 1;
  for (auto _ : state) {
    selected = cleave::kernels::SelectTopKBySampling(x.data(), x.size(), k, ++seed, indices.data(),
                                                     values.data(), &workspace);
  }
  Report(state, selected);
}

// The GPU's gaussiank+ method (histogram zoom + one selection) run on the CPU kernels.
void BM_HistogramThreshold(benchmark::State& state) {
  const auto& x = Data(N(state));
  const size_t k = static_cast<size_t>(std::round(Density(state) * N(state)));
  std::vector<uint32_t> indices(x.size());
  std::vector<float> values(x.size());
  size_t selected = 0;
  for (auto _ : state) {
    size_t expected = 0;
    const float t = cleave::kernels::ThresholdByHistogram(x.data(), x.size(), k, &expected);
    selected = cleave::kernels::SelectAbove(x.data(), x.size(), t, indices.data(), values.data(),
                                            x.size());
  }
  Report(state, selected);
}

void BM_TorchTopK(benchmark::State& state) {
  const auto& x = Data(N(state));
  const at::Tensor tensor =
      at::from_blob(const_cast<float*>(x.data()), {static_cast<int64_t>(x.size())}, at::kFloat);
  const int64_t k = static_cast<int64_t>(std::round(Density(state) * N(state)));
  int64_t selected = 0;
  for (auto _ : state) {
    const auto [values, indices] = tensor.abs().topk(k);
    benchmark::DoNotOptimize(values.data_ptr());
    selected = indices.numel();
  }
  Report(state, static_cast<size_t>(selected));
}

void BM_NthElement(benchmark::State& state) {
  const auto& x = Data(N(state));
  const size_t k = static_cast<size_t>(std::round(Density(state) * N(state)));
  std::vector<float> magnitudes(x.size());
  for (auto _ : state) {
    for (size_t i = 0; i < x.size(); ++i) magnitudes[i] = std::fabs(x[i]);
    std::nth_element(magnitudes.begin(), magnitudes.begin() + static_cast<long>(k - 1),
                     magnitudes.end(), std::greater<float>());
    benchmark::DoNotOptimize(magnitudes[k - 1]);
  }
  Report(state, k);
}

void Args(benchmark::internal::Benchmark* b) {
  for (int log_n : {16, 20, 24}) {
    for (int per_mille : {1, 10, 100, 250}) b->Args({log_n, per_mille});
  }
  b->ArgNames({"log2n", "density_permille"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_MemoryFloorTwoReads)->Apply(Args);
BENCHMARK(BM_GaussianK)->Apply(Args);
BENCHMARK(BM_GaussianKPlus)->Apply(Args);
BENCHMARK(BM_SampledTopKKernel)->Apply(Args);
BENCHMARK(BM_HistogramThreshold)->Apply(Args);
BENCHMARK(BM_NthElement)->Apply(Args);
BENCHMARK(BM_TorchTopK)->Apply(Args);

}  // namespace

BENCHMARK_MAIN();
