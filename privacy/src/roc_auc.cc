#include "cleave/privacy/roc_auc.h"

#include <ATen/ATen.h>

#include <cstdint>

#include "cleave/core/error.h"

namespace cleave::privacy {

double RocAuc(const at::Tensor& scores, const at::Tensor& positives) {
  CLEAVE_CHECK_INPUT(scores.dim() == 1 && positives.dim() == 1 &&
                         scores.size(0) == positives.size(0),
                     "RocAuc: scores and positives must be two vectors of one length");
  const at::Tensor s = scores.detach().to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor p = positives.detach().to(at::kCPU).to(at::kBool).contiguous();
  CLEAVE_CHECK_INPUT(at::isfinite(s).all().item<bool>(), "RocAuc: a score is not finite");
  const int64_t n = s.size(0);
  const int64_t n_pos = p.sum().item<int64_t>(), n_neg = n - n_pos;
  CLEAVE_CHECK_INPUT(n_pos > 0 && n_neg > 0, "RocAuc: needs at least one positive and one "
                                             "negative (got ", n_pos, " and ", n_neg, ")");
  const at::Tensor order = at::argsort(s);
  const auto* sorted_index = order.data_ptr<int64_t>();
  const auto* value = s.data_ptr<double>();
  const auto* positive = p.data_ptr<bool>();
  // Walk runs of equal scores; each member of a run gets the run's average 1-based rank.
  double positive_rank_sum = 0;
  for (int64_t start = 0; start < n;) {
    int64_t end = start + 1;
    while (end < n && value[sorted_index[end]] == value[sorted_index[start]]) ++end;
    const double average_rank = 0.5 * static_cast<double>(start + 1 + end);
    for (int64_t i = start; i < end; ++i) {
      if (positive[sorted_index[i]]) positive_rank_sum += average_rank;
    }
    start = end;
  }
  const double u = positive_rank_sum - 0.5 * static_cast<double>(n_pos) * (n_pos + 1);
  return u / (static_cast<double>(n_pos) * static_cast<double>(n_neg));
}

}  // namespace cleave::privacy
