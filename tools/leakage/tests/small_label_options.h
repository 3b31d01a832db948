// The small label-leakage task both label tests run: an MLP on 20 features, two classes, the
// server's cut after the first block and (U-shaped) the output layer at the hospital.
#pragma once

#include "cleave/leakage/label_leakage.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave::leakage::test {

inline LabelLeakageOptions SmallOptions() {
  LabelLeakageOptions options;
  options.model = test_support::MlpSpec(20, {32, 16}, 2);  // blocks: 2 hidden + output
  options.model.cut = 1;
  options.tail_cut = 2;  // u-shaped: the output Linear(16 -> 2) at the hospital
  options.steps = 60;
  options.batch_size = 32;
  options.learning_rate = 3e-3;
  return options;
}

}  // namespace cleave::leakage::test
