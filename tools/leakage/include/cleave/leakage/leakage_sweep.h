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
  // Noise defence sigmas (cleave-client --act-noise); every alpha is run with every sigma, so
  // alphas > 0 with sigmas > 0 are NoPeek + noise.
  std::vector<double> noises = {0.0};
  // Seeds of weights, shuffling, sampling and decoder, one run per seed (empty: `seed` alone).
  // The attacker's share of the data is split off once, with `seed`.
  std::vector<uint64_t> seeds;
  Method method = Method::kGaussianKPlus;  // compressor for densities below 1 (1.0 sends all)
  ValuePrecision precision = ValuePrecision::kFp32;
  int64_t epochs = 1;
  int64_t batch_size = 64;
  int64_t max_steps_per_epoch = 0;  // 0: whole epochs
  std::string optimizer = "adam";
  std::string client_optimizer;  // empty: `optimizer`
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
  double noise = 0;    // sigma of the noise defence
  uint64_t seed = 1;
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

// Runs every (seed, density, alpha, noise) setting in order, seeds outermost, noises innermost. `on_row` (optional) is called
// after each setting, so that callers can write partial results. Progress (a line per epoch and
// per setting) goes to `progress`.
std::vector<SweepRow> RunSweep(const Dataset& client_train, const Dataset& auxiliary,
                               const Dataset& test, const SweepOptions& options,
                               client::ProgressReporter* progress, std::FILE* log,
                               const std::function<void(const SweepRow&)>& on_row = {});

// leakage.csv: one row per setting, a header naming every column (every attack's scores).
std::string SweepCsv(const std::vector<SweepRow>& rows);
// leakage.md: a markdown table (accuracy, dCor, bias-corrected dCor^2, baseline, attack scores).
std::string SweepMarkdown(const std::vector<SweepRow>& rows);
// leakage.json: the same rows as an array of objects (NaN as null).
std::string SweepJson(const std::vector<SweepRow>& rows);
// A short label of a row's setting for plots and file names: "a30 n0.5 d0.05" (parts at their
// defaults, alpha 0, noise 0 and density 1, left out; "vanilla" when all are).
std::string SettingLabel(const SweepRow& row);
// The gnuplot script that draws the frontier into `png_path`: test accuracy against dCor, and
// against every attack's SSIM (MSE for inputs that are not images), one point per setting,
// labelled with SettingLabel.
std::string SweepGnuplotScript(const std::vector<SweepRow>& rows, const std::string& png_path);

// Runs gnuplot on `script_path`. Returns false with `why_not` set when gnuplot is not installed
// or fails.
bool RunGnuplot(const std::string& script_path, std::string* why_not);

}  // namespace cleave::leakage
