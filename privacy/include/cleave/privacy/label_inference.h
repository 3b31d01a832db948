// Label inference from the gradients a party receives (Li et al. 2021, "Label Leakage and
// Protection in Two-party Split Learning"): a party that never sees the labels scores each
// sample of a batch from its gradient alone, and the attack AUC says how well that score
// separates the classes (0.5: nothing learned, 1: the labels are read off exactly).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

namespace cleave::privacy {

// Norm scoring: the L2 norm of each sample's gradient (rows of [n, ...] flattened) -> [n].
// With cross-entropy the gradient is proportional to (softmax - onehot), whose size differs
// between classes the model fits differently (the minority class of a skewed task most).
at::Tensor GradientNormScores(const at::Tensor& gradients);

// Direction scoring: the cosine of each sample's gradient with `reference` (one sample's
// gradient, any shape with the same number of elements as a row) -> [n]. Samples of the
// reference's class point its way. A zero gradient scores 0.
at::Tensor GradientCosineScores(const at::Tensor& gradients, const at::Tensor& reference);

struct LabelInferenceReport {
  double norm_auc = 0.5;    // norm scoring, oriented (see LabelInference)
  double cosine_auc = 0.5;  // direction scoring against a known sample of the class
  int64_t batches = 0;      // batches observed
  int64_t samples = 0;      // samples observed
};

// Collects batches of (received gradients, true labels) and scores both attacks. A batch's
// gradients are scored together because they come from one model state (across training the
// norms shrink as the loss falls). Per class c (class 1 only when there are two classes; every
// class one-vs-rest, averaged, for more):
// * norm: the AUC of the norm for "is c", averaged over the batches that hold both c and another
//   class, then oriented: max(AUC, 1 - AUC) (the attacker learns which side is c from one known
//   sample, or from knowing c is the minority);
// * cosine: in each batch holding at least two samples of c and one other, the first sample of
//   c is the attacker's known sample; the others are scored by their cosine with its gradient
//   and the AUC (not oriented: "pointing the same way" means "same class") is averaged over
//   batches.
// A class no batch can score is left out of the average; with no class scored the AUC is 0.5.
class LabelInference {
 public:
  explicit LabelInference(int64_t num_classes);
  // gradients: [n, ...] what the party received for a batch; labels: int64 [n] in
  // 0..num_classes-1. Throws InvalidInput on a size mismatch, a label out of range or a
  // non-finite gradient.
  void Observe(const at::Tensor& gradients, const at::Tensor& labels);
  LabelInferenceReport Report() const;

 private:
  struct ClassTotals {
    double norm_auc_sum = 0, cosine_auc_sum = 0;
    int64_t norm_batches = 0, cosine_batches = 0;
  };
  void ObserveClass(const at::Tensor& flat, const at::Tensor& labels, const at::Tensor& norms,
                    int64_t c);

  int64_t num_classes_;
  std::vector<ClassTotals> totals_;
  int64_t batches_ = 0, samples_ = 0;
};

}  // namespace cleave::privacy
