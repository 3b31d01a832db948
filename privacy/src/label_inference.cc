#include "cleave/privacy/label_inference.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/core/error.h"
#include "cleave/privacy/roc_auc.h"

namespace cleave::privacy {
namespace {

at::Tensor Rows(const at::Tensor& gradients) {
  CLEAVE_CHECK_INPUT(gradients.dim() >= 1 && gradients.size(0) > 0,
                     "label inference: gradients need a non-empty batch dimension");
  return gradients.detach().to(at::kCPU, at::kDouble).reshape({gradients.size(0), -1});
}

}  // namespace

at::Tensor GradientNormScores(const at::Tensor& gradients) {
  return Rows(gradients).norm(2, {1});
}

at::Tensor GradientCosineScores(const at::Tensor& gradients, const at::Tensor& reference) {
  const at::Tensor rows = Rows(gradients);
  const at::Tensor ref = reference.detach().to(at::kCPU, at::kDouble).reshape({-1});
  CLEAVE_CHECK_INPUT(ref.size(0) == rows.size(1),
                     "label inference: the reference has ", ref.size(0),
                     " elements, a gradient row ", rows.size(1));
  const at::Tensor dots = rows.matmul(ref);
  const at::Tensor norms = rows.norm(2, {1}) * ref.norm();
  return at::where(norms > 0, dots / norms.clamp_min(1e-300), at::zeros_like(dots));
}

LabelInference::LabelInference(int64_t num_classes)
    : num_classes_(num_classes), totals_(static_cast<size_t>(std::max<int64_t>(num_classes, 0))) {
  CLEAVE_CHECK_INPUT(num_classes >= 2, "label inference needs at least two classes");
}

void LabelInference::Observe(const at::Tensor& gradients, const at::Tensor& labels) {
  const at::Tensor flat = Rows(gradients);
  CLEAVE_CHECK_INPUT(labels.dim() == 1 && labels.size(0) == flat.size(0),
                     "label inference: ", flat.size(0), " gradients but labels of shape ",
                     labels.sizes());
  CLEAVE_CHECK_INPUT(at::isfinite(flat).all().item<bool>(),
                     "label inference: a gradient is not finite");
  const at::Tensor y = labels.to(at::kCPU, at::kLong);
  CLEAVE_CHECK_INPUT(y.min().item<int64_t>() >= 0 && y.max().item<int64_t>() < num_classes_,
                     "label inference: a label is outside 0..", num_classes_ - 1);
  const at::Tensor norms = flat.norm(2, {1});
  for (int64_t c = num_classes_ == 2 ? 1 : 0; c < num_classes_; ++c) {
    ObserveClass(flat, y, norms, c);
  }
  ++batches_;
  samples_ += flat.size(0);
}

void LabelInference::ObserveClass(const at::Tensor& flat, const at::Tensor& labels,
                                  const at::Tensor& norms, int64_t c) {
  const at::Tensor is_c = labels == c;
  const int64_t count = is_c.sum().item<int64_t>(), n = labels.size(0);
  ClassTotals& totals = totals_[static_cast<size_t>(c)];
  if (count == 0 || count == n) return;
  totals.norm_auc_sum += RocAuc(norms, is_c);
  ++totals.norm_batches;
  if (count < 2) return;
  const int64_t known = at::nonzero(is_c)[0][0].item<int64_t>();
  const at::Tensor others = at::arange(n) != known;
  const at::Tensor scores = GradientCosineScores(flat.index({others}), flat[known]);
  totals.cosine_auc_sum += RocAuc(scores, is_c.index({others}));
  ++totals.cosine_batches;
}

LabelInferenceReport LabelInference::Report() const {
  double norm_sum = 0, cosine_sum = 0;
  int64_t norm_classes = 0, cosine_classes = 0;
  for (const ClassTotals& totals : totals_) {
    if (totals.norm_batches > 0) {
      const double auc = totals.norm_auc_sum / static_cast<double>(totals.norm_batches);
      norm_sum += std::max(auc, 1 - auc);
      ++norm_classes;
    }
    if (totals.cosine_batches > 0) {
      cosine_sum += totals.cosine_auc_sum / static_cast<double>(totals.cosine_batches);
      ++cosine_classes;
    }
  }
  LabelInferenceReport report;
  if (norm_classes > 0) report.norm_auc = norm_sum / static_cast<double>(norm_classes);
  if (cosine_classes > 0) report.cosine_auc = cosine_sum / static_cast<double>(cosine_classes);
  report.batches = batches_;
  report.samples = samples_;
  return report;
}

}  // namespace cleave::privacy
