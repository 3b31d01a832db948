// Label leakage of the split configurations (Li et al. 2021): trains a split model in process,
// records the gradients each party without the labels receives at its cut, and runs the norm and
// direction (cosine) label inference attacks on them (privacy/label_inference.h).
//
// Configurations (Vepakomma et al. 2018):
// * vanilla: the hospital runs the bottom and sends its labels with the activations; the server
//   holds the labels (AUC 1 by construction) and returns dL/da at the cut to the hospital. A
//   vertical passive party receives its slice of that same gradient, so the hospital's view here
//   is also the passive party's view.
// * u-shaped: bottom and tail (and the labels) at the hospital, the middle at the server; the
//   server receives dL/da2, the gradient at its middle's output.
// The defence (privacy/gradient_defence.h) is applied by the label holder to the gradient it
// returns at the observed cut, in training too, so its cost in accuracy is measured.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cleave/core/dataset.h"
#include "cleave/core/split_model.h"
#include "cleave/privacy/gradient_defence.h"

namespace cleave::leakage {

struct LabelLeakageOptions {
  ModelSpec model;     // cut: blocks of the bottom
  int tail_cut = 0;    // u-shaped: first block of the tail (cut < tail_cut < blocks); 0: last
  int64_t steps = 300;
  int64_t batch_size = 64;
  std::string optimizer = "adam";
  double learning_rate = 1e-3;
  privacy::GradientDefence defence;  // kNone: only the undefended rows
  uint64_t seed = 1;
};

struct LabelLeakageRow {
  std::string configuration;  // "vanilla", "u-shaped"
  std::string observer;       // who attacks, and what it receives
  std::string defence;        // "none" or e.g. "clip 0.5"
  bool holds_labels = false;  // the observer receives the labels themselves (AUC 1)
  double norm_auc = 1, cosine_auc = 1;
  double test_accuracy = 0;   // of the model trained under this configuration and defence
  int64_t observed_batches = 0;
};

// Throws UserError for options that cannot run (steps or batch < 1, learning rate <= 0, a cut
// or tail cut out of range, a torchscript model).
void CheckLabelLeakageOptions(const LabelLeakageOptions& options);

// For each configuration, undefended and (when options.defence is not kNone) defended: trains
// options.steps steps from the same seed and scores the attacks on every step's gradients.
// Rows: vanilla server, vanilla/vertical passive party, u-shaped server; each once per defence.
std::vector<LabelLeakageRow> MeasureLabelLeakage(const Dataset& train, const Dataset& test,
                                                 const LabelLeakageOptions& options);

// A markdown table of the rows (configuration, observer, defence, norm AUC, cosine AUC,
// accuracy).
std::string LabelLeakageMarkdown(const std::vector<LabelLeakageRow>& rows);

// Labels 1 where the label is `positive_class`, else 0, and num_classes 2: the skewed binary
// task of Li et al. Throws UserError if positive_class is outside 0..num_classes-1.
Dataset OneVsRest(const Dataset& data, int64_t positive_class);

}  // namespace cleave::leakage
