#include "cleave/compress/compressor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cleave/core/error.h"
#include "cleave/kernels/sparsify.h"
#include "gaussiank_rule.h"
#ifdef CLEAVE_COMPRESS_CUDA
#include "compressor_cuda.h"
#endif

namespace cleave {

namespace {

void Resize(Selection* out, size_t capacity) {
  out->indices.resize(capacity);
  out->values.resize(capacity);
}

class NoneCompressor final : public Compressor {
 public:
  using Compressor::Compressor;

 protected:
  void SelectFrom(const float* data, size_t n, size_t, Selection* out) override {
    Resize(out, n);
    for (size_t i = 0; i < n; ++i) {
      out->indices[i] = static_cast<uint32_t>(i);
      out->values[i] = data[i];
    }
  }
};

class TopKCompressor final : public Compressor {
 public:
  using Compressor::Compressor;

 protected:
  void SelectFrom(const float* data, size_t n, size_t k, Selection* out) override {
    Resize(out, k);
    Resize(out, kernels::TopK(data, n, k, out->indices.data(), out->values.data()));
  }
};

class RandomKCompressor final : public Compressor {
 public:
  using Compressor::Compressor;

 protected:
  void SelectFrom(const float* data, size_t n, size_t k, Selection* out) override {
    Resize(out, k);
    Resize(out, kernels::RandomK(data, n, k, CallSeed(), out->indices.data(), out->values.data()));
  }
};

class GaussianKCompressor final : public Compressor {
 public:
  using Compressor::Compressor;

 protected:
  // The paper's rule, with the first count taken by a selection: when the first threshold is
  // accepted (count within [2k/3, 4k/3], the usual case) the data is read twice, not three times.
  void SelectFrom(const float* data, size_t n, size_t k, Selection* out) override {
    const size_t capacity = std::min(n, 4 * k / 3 + 1);  // holds any accepted first count
    Resize(out, capacity);
    int counts_taken = 0;
    size_t count = 0;
    const float threshold = detail::GaussianKRule(
        n, k, [&] { return kernels::ComputeMoments(data, n); },
        [&](float t) {
          return counts_taken++ == 0 ? kernels::SelectAbove(data, n, t, out->indices.data(),
                                                            out->values.data(), capacity)
                                     : kernels::CountAbove(data, n, t);
        },
        &count);
    const bool selected_already = counts_taken == 1 && count <= capacity;
    if (!selected_already) {
      Resize(out, count);
      kernels::SelectAbove(data, n, threshold, out->indices.data(), out->values.data(), count);
    }
    Resize(out, count);
  }
};

class GaussianKPlusCompressor final : public Compressor {
 public:
  using Compressor::Compressor;

 protected:
  void SelectFrom(const float* data, size_t n, size_t k, Selection* out) override {
    Resize(out, k);
    // One workspace per thread, kept between calls (no allocation after the first): the server
    // encodes several hospitals' gradients at once with one compressor.
    thread_local kernels::SelectionWorkspace workspace;
    Resize(out, kernels::SelectTopKBySampling(data, n, k, CallSeed(), out->indices.data(),
                                              out->values.data(), &workspace));
  }
};

}  // namespace

Compressor::Compressor(CompressorConfig config) : config_(std::move(config)) {
  CLEAVE_CHECK_USER(config_.density > 0.0 && config_.density <= 1.0, "density ", config_.density,
                    " is outside (0, 1]");
}

uint64_t Compressor::CallSeed() const { return config_.seed * 0x9E3779B97F4A7C15ULL + calls_.load(); }

int64_t Compressor::TargetCount(int64_t numel) const {
  if (numel <= 0) return 0;
  const auto k = static_cast<int64_t>(std::llround(config_.density * static_cast<double>(numel)));
  return std::min(numel, std::max<int64_t>(1, k));
}

Selection Compressor::Compress(const at::Tensor& dense) {
  Selection out;
  Compress(dense, &out);
  return out;
}

void Compressor::Compress(const at::Tensor& dense, Selection* out) {
  CLEAVE_ENFORCE(dense.scalar_type() == at::kFloat, "compressors take float32 tensors");
  CLEAVE_ENFORCE(dense.numel() <= std::numeric_limits<uint32_t>::max(),
                 "tensor too large for 32-bit indices");
  out->shape.assign(dense.sizes().begin(), dense.sizes().end());
  out->numel = dense.numel();
  const auto k = static_cast<size_t>(TargetCount(out->numel));
#ifdef CLEAVE_COMPRESS_CUDA
  // CUDA tensors stay on their device (kernels' CUDA backend, current stream).
  if (dense.is_cuda() && out->numel > 0 &&
      detail::SelectOnCuda(config_.method, dense.detach().contiguous().view(-1), k, CallSeed(),
                           out)) {
    ++calls_;
    return;
  }
#endif
  const at::Tensor flat = dense.detach().to(at::kCPU).contiguous().view(-1);
  SelectFrom(flat.data_ptr<float>(), static_cast<size_t>(out->numel), k, out);
  ++calls_;
}

std::unique_ptr<Compressor> MakeCompressor(const CompressorConfig& config) {
  switch (config.method) {
    case Method::kNone:
      return std::make_unique<NoneCompressor>(config);
    case Method::kTopK:
      return std::make_unique<TopKCompressor>(config);
    case Method::kGaussianK:
      return std::make_unique<GaussianKCompressor>(config);
    case Method::kGaussianKPlus:
      return std::make_unique<GaussianKPlusCompressor>(config);
    case Method::kRandomK:
      return std::make_unique<RandomKCompressor>(config);
  }
  throw Error(
      detail::Concat("compression method ", static_cast<int>(config.method), " has no compressor"));
}

at::Tensor Decompress(const Selection& selection) {
  at::Tensor dense = at::zeros({selection.numel}, at::kFloat);
  float* data = dense.data_ptr<float>();
  for (size_t i = 0; i < selection.indices.size(); ++i) {
    CLEAVE_ENFORCE(selection.indices[i] < static_cast<uint64_t>(selection.numel),
                   "index out of range");
    data[selection.indices[i]] = selection.values[i];
  }
  return dense.view(selection.shape);
}

double NormalQuantile(double p) {
  CLEAVE_ENFORCE(p > 0.0 && p < 1.0, "quantile of ", p);
  // Acklam's coefficients.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  double x;
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p > 1 - 0.02425) {
    const double q = std::sqrt(-2 * std::log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  // One Newton step on Phi(x) - p.
  const double error = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
  const double density = std::exp(-x * x / 2) / std::sqrt(2 * M_PI);
  return x - error / density;
}

float GaussianKThreshold(const float* data, size_t n, size_t k, size_t* count_at_threshold) {
  return detail::GaussianKRule(
      n, k, [&] { return kernels::ComputeMoments(data, n); },
      [&](float t) { return kernels::CountAbove(data, n, t); }, count_at_threshold);
}

ErrorFeedback::ErrorFeedback(const CompressorConfig& config)
    : compressor_(MakeCompressor(config)) {}

Selection ErrorFeedback::Compress(const std::string& key, const at::Tensor& update) {
  at::Tensor& residual = residuals_[key];
  const at::Tensor current = update.detach().contiguous();
  if (!residual.defined()) residual = at::zeros_like(current);
  CLEAVE_ENFORCE(residual.sizes() == current.sizes() && residual.device() == current.device(),
                 "update for '", key, "' changed shape or device");
  // acc = update + residual, computed once: the values sent are exactly acc's entries.
  const at::Tensor accumulated = current + residual;
  Selection selection = compressor_->Compress(accumulated);
  residual = accumulated;  // a fresh tensor: zero the sent entries in place
  if (residual.is_cpu()) {
    float* data = residual.view(-1).data_ptr<float>();
    for (uint32_t index : selection.indices) data[index] = 0.0f;
  } else if (!selection.indices.empty()) {
    const at::Tensor sent =
        at::tensor(std::vector<int64_t>(selection.indices.begin(), selection.indices.end()))
            .to(residual.device());
    residual.view(-1).index_fill_(0, sent, 0.0f);
  }
  return selection;
}

at::Tensor ErrorFeedback::Residual(const std::string& key) const {
  const auto it = residuals_.find(key);
  return it == residuals_.end() ? at::Tensor() : it->second;
}

}  // namespace cleave
