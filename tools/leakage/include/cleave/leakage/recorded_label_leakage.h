// Label leakage measured on real runs: each configuration trains through the same code the
// binaries run (SplitServer, InProcessLink with messages serialised as on the wire, SplitTrainer),
// and the label inference attacks of Li et al. 2021 (privacy/label_inference.h) score what the
// party without the labels actually receives:
// * vanilla: the server receives the labels in every Train request (counted on the wire): AUC 1;
// * u-shaped: the server receives dL/da2 from the hospital, recorded where the server has
//   validated it (UShapedMiddle::SetGradientObserver);
// * vertical, two parties joined by sum, party 1 holding the labels: passive party 0 receives
//   its gradient in each Train reply, recorded from the reply it parses.
// The defence (privacy/gradient_defence.h) is applied to the gradient as it goes on the wire by
// whoever sends it while holding the labels (the hospital in u-shaped, the server in vertical),
// during training, so the model trains on it and the accuracy beside it is its cost. The labels a
// recorded gradient is scored against are the trainer's own batch (BatchIterator's order depends
// on seed and epoch only; in vertical, checked against the labels the label holder sends).
#pragma once

#include <vector>

#include "cleave/core/dataset.h"
#include "cleave/leakage/label_leakage.h"

namespace cleave::leakage {

// Throws UserError for options a real run cannot take (besides CheckLabelLeakageOptions: a
// dense link is used, so nothing else is needed).
void CheckRecordedLabelLeakageOptions(const LabelLeakageOptions& options);

// Rows: vanilla server; u-shaped server and vertical passive party, undefended and (when
// options.defence is not kNone) defended. Each run trains options.steps steps (rounded up to
// whole epochs of equal length) from options.seed. options.tail_cut sets the U-shaped tail
// (blocks - tail_cut blocks at the hospital). Vertical: images are split into left and right
// halves (the other pixels zero), flat features into the first and second half of the columns.
std::vector<LabelLeakageRow> MeasureRecordedLabelLeakage(const Dataset& train, const Dataset& test,
                                                         const LabelLeakageOptions& options);

}  // namespace cleave::leakage
