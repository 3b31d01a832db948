// The privacy/utility curve: for each NoPeek alpha and activation density, trains a split model
// locally (SplitServer + InProcessLink + SplitTrainer, the same code path as cleave-client and
// cleave-server without a network), then measures test accuracy and leakage (dCor and the
// reconstruction attack). Writes the curve as CSV, a markdown table and a gnuplot plot.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cleave/client/progress.h"
#include "cleave/core/dataset.h"
#include "cleave/core/split_model.h"
#include "cleave/leakage/leakage_measurement.h"

namespace cleave::leakage {

struct SweepOptions {
  ModelSpec model;
  std::vector<double> alphas = {0, 1, 3, 10, 30};
  std::vector<double> densities = {1.0, 0.05};
  Method method = Method::kGaussianKPlus;  // compressor for densities below 1 (1.0 sends all)
  ValuePrecision precision = ValuePrecision::kFp32;
  int64_t epochs = 1;
  int64_t batch_size = 64;
  int64_t max_steps_per_epoch = 0;  // 0: whole epochs
  std::string optimizer = "adam";
  double server_learning_rate = 1e-3;
  double client_learning_rate = 1e-3;
  LeakageOptions leakage;  // transmission and send batch are set per setting from the above
  uint64_t seed = 1;
  std::string grid_dir;  // non-empty: one reconstruction grid PNG per setting goes here
  int grid_scale = 2;
};

struct SweepRow {
  double alpha = 0;
  double density = 1;  // requested
  Method method = Method::kNone;  // compressor used (none at density 1)
  ValuePrecision precision = ValuePrecision::kFp32;
  double test_accuracy = 0;
  double test_loss = 0;
  int64_t train_samples = 0;  // samples trained on, all epochs together
  double train_seconds = 0;
  double train_dcor_last_epoch = 0;  // mean NoPeek dCor over training batches (0 at alpha 0)
  LeakageReport leakage;             // grid tensors released after the grid is written
  std::string grid_path;             // empty when no grid was written
};

// Throws UserError for settings a sweep cannot run (no alpha or density, alpha < 0, a density
// outside (0, 1], fewer than one epoch). RunSweep checks too; callers may check before loading
// data.
void CheckSweepOptions(const SweepOptions& options);

// Runs every (density, alpha) setting in order, densities outer. `on_row` (optional) is called
// after each setting, so that callers can write partial results. Progress (a line per epoch and
// per setting) goes to `progress`.
std::vector<SweepRow> RunSweep(const Dataset& client_train, const Dataset& auxiliary,
                               const Dataset& test, const SweepOptions& options,
                               client::ProgressReporter* progress, std::FILE* log,
                               const std::function<void(const SweepRow&)>& on_row = {});

// leakage.csv: one row per setting, a header naming every column.
std::string SweepCsv(const std::vector<SweepRow>& rows);
// leakage.md: a markdown table (accuracy, dCor, bias-corrected dCor^2, baseline, attack scores).
std::string SweepMarkdown(const std::vector<SweepRow>& rows);
// The gnuplot script that draws leakage against accuracy into `png_path`: dCor, and attack SSIM
// (MSE for inputs that are not images), one curve per density, points labelled with alpha.
std::string SweepGnuplotScript(const std::vector<SweepRow>& rows, const std::string& png_path);

// Runs gnuplot on `script_path`. Returns false with `why_not` set when gnuplot is not installed
// or fails.
bool RunGnuplot(const std::string& script_path, std::string* why_not);

}  // namespace cleave::leakage
