// Compressors choose which elements of a tensor travel: none, exact top-k, Gaussian-k as in
// Shi et al. 2019, our gaussiank+ (lands on k for any distribution), and seeded random-k.
// Selections come out in ascending index order, ready for the sparse codec.
#pragma once

#include <ATen/Tensor.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cleave/compress/method.h"

namespace cleave {

struct CompressorConfig {
  Method method = Method::kNone;
  double density = 1.0;  // fraction of elements kept, (0, 1]
  uint64_t seed = 1;     // randomk and gaussiank+'s sample
};

// The elements chosen from a dense tensor.
struct Selection {
  std::vector<uint32_t> indices;  // flat positions, strictly increasing
  std::vector<float> values;
  std::vector<int64_t> shape;  // of the dense tensor
  int64_t numel = 0;
};

class Compressor {
 public:
  explicit Compressor(CompressorConfig config);
  virtual ~Compressor() = default;
  // `dense` is float32, any shape. CUDA tensors are selected on their device when the build has
  // CUDA kernels and a CUDA LibTorch (CLEAVE_COMPRESS_CUDA; gaussiank+ there refines by histogram
  // and lands within 10% of k rather than on it), else copied to the CPU.
  Selection Compress(const at::Tensor& dense);
  // The same into `out`, whose memory is reused: a caller that compresses tensors of one size
  // again and again allocates and clears nothing after the first call.
  void Compress(const at::Tensor& dense, Selection* out);
  const CompressorConfig& config() const { return config_; }
  // k for a tensor of n elements: round(density * n), at least 1 (for n > 0).
  int64_t TargetCount(int64_t numel) const;

 protected:
  // Selects from a contiguous float buffer of n elements into `out` (indices, values).
  virtual void SelectFrom(const float* data, size_t n, size_t k, Selection* out) = 0;
  // The seed of this call: from config().seed, different on every call.
  uint64_t CallSeed() const;

 private:
  CompressorConfig config_;
  std::atomic<uint64_t> calls_{0};  // Compress may be called from several threads at once
};

// Throws UserError for a density outside (0, 1].
std::unique_ptr<Compressor> MakeCompressor(const CompressorConfig& config);

// A dense float32 tensor with the selected values in place and zeros elsewhere.
at::Tensor Decompress(const Selection& selection);

// Phi^-1(p) of the standard normal (Acklam's rational approximation refined by one Newton step;
// |error| < 1e-12 on (0, 1)).
double NormalQuantile(double p);

// The threshold rule of Gaussian-k (Shi et al. 2019): t = mean + std * Phi^-1(1 - density/2) on
// |x|, refined at most three times by x0.5 (count < 2k/3) or x1.5 (count > 4k/3). Exposed for
// the landing measurements.
float GaussianKThreshold(const float* data, size_t n, size_t k, size_t* count_at_threshold);

// Error feedback (Seide et al. 2014; Stich et al. 2018) for state that persists across steps,
// such as client-model weight deltas: what was not sent is kept and added to the next update of
// the same key. Invariant (exact): sent + new residual == update + old residual.
class ErrorFeedback {
 public:
  explicit ErrorFeedback(const CompressorConfig& config);
  Selection Compress(const std::string& key, const at::Tensor& update);
  // The residual kept for `key` (undefined tensor if none yet).
  at::Tensor Residual(const std::string& key) const;
  void Reset() { residuals_.clear(); }

 private:
  std::unique_ptr<Compressor> compressor_;
  std::map<std::string, at::Tensor> residuals_;
};

}  // namespace cleave
