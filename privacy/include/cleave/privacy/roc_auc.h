// Area under the ROC curve of a score that should rank positives above negatives: the attack
// AUC of the label inference attacks (0.5: the score tells nothing; 1: perfect ranking).
#pragma once

#include <ATen/Tensor.h>

namespace cleave::privacy {

// AUC = P(score of a random positive > score of a random negative) + 0.5 * P(equal), computed
// from average ranks (the Mann-Whitney U statistic), so tied scores count one half. scores:
// [n] finite floats; positives: [n] bool (or 0/1). Throws InvalidInput if the sizes differ, a
// score is not finite, or there is no positive or no negative.
double RocAuc(const at::Tensor& scores, const at::Tensor& positives);

}  // namespace cleave::privacy
