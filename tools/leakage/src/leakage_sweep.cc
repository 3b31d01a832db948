#include "cleave/leakage/leakage_sweep.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cleave/client/split_trainer.h"
#include "cleave/core/error.h"
#include "cleave/privacy/png_grid.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/server/in_process_link.h"
#include "cleave/server/split_server.h"

namespace cleave::leakage {
namespace {

std::string Number(double value, int digits) {
  if (std::isnan(value)) return "nan";
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", digits, value);
  return text;
}

// "0.05" -> "0.05", 1 -> "1", 30 -> "30": for file names and labels.
std::string Short(double value) {
  char text[64];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string GnuplotQuote(const std::string& text) {
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return quoted + "\"";
}

}  // namespace

void CheckSweepOptions(const SweepOptions& options) {
  CLEAVE_CHECK_USER(!options.alphas.empty() && !options.densities.empty(),
                    "the sweep needs at least one alpha and one density");
  for (double alpha : options.alphas) CLEAVE_CHECK_USER(alpha >= 0, "alpha ", alpha, " < 0");
  for (double density : options.densities) {
    CLEAVE_CHECK_USER(density > 0 && density <= 1, "density ", density, " is outside (0, 1]");
  }
  CLEAVE_CHECK_USER(options.epochs >= 1, "--epochs must be at least 1");
  CLEAVE_CHECK_USER(!options.noises.empty(), "the sweep needs at least one noise sigma");
  for (double sigma : options.noises) {
    CLEAVE_CHECK_USER(std::isfinite(sigma) && sigma >= 0, "noise sigma ", sigma,
                      " must be finite and >= 0");
  }
}

namespace {

server::SplitServerOptions ServerOptionsFor(const SweepOptions& options,
                                            const TransmissionSettings& transmission,
                                            uint64_t seed) {
  server::SplitServerOptions server_options;
  server_options.model = options.model;
  server_options.seed = seed;
  server_options.optimizer = options.optimizer;
  server_options.learning_rate = options.server_learning_rate;
  server_options.max_batch = std::max<int64_t>(4096, options.batch_size);
  protocol::LinkSpec link_spec;
  link_spec.activations = transmission;
  server_options.compression = protocol::ToProto(link_spec);
  return server_options;
}

client::TrainerOptions TrainerOptionsFor(const SweepOptions& options, const SweepRow& row) {
  client::TrainerOptions trainer_options;
  trainer_options.model = options.model;
  trainer_options.seed = row.seed;
  trainer_options.optimizer =
      options.client_optimizer.empty() ? options.optimizer : options.client_optimizer;
  trainer_options.learning_rate = options.client_learning_rate;
  trainer_options.batch_size = options.batch_size;
  trainer_options.max_steps_per_epoch = options.max_steps_per_epoch;
  trainer_options.nopeek_alpha = row.alpha;
  trainer_options.activation_noise = row.noise;
  return trainer_options;
}

void LogEpoch(std::FILE* log, int64_t epoch, const SweepOptions& options,
              const client::EpochStats& stats) {
  if (!log) return;
  std::fprintf(log,
               "  epoch %lld/%lld: loss %.4f, train accuracy %.2f%%, %.0f samples/s, "
               "NoPeek dCor %.4f (batches of %lld)\n",
               static_cast<long long>(epoch + 1), static_cast<long long>(options.epochs),
               stats.loss, 100 * stats.accuracy,
               stats.seconds > 0 ? stats.samples / stats.seconds : 0.0, stats.dcor,
               static_cast<long long>(options.batch_size));
  std::fflush(log);
}

// Trains the setting's split model from scratch through SplitServer + InProcessLink +
// SplitTrainer and evaluates it; fills the row's training and test figures and returns the
// trained client-side model.
torch::nn::Sequential TrainAndEvaluate(const Dataset& client_train, const Dataset& test,
                                       const SweepOptions& options,
                                       const TransmissionSettings& transmission,
                                       client::ProgressReporter* progress, std::FILE* log,
                                       SweepRow* row) {
  server::SplitServer split_server(ServerOptionsFor(options, transmission, row->seed));
  server::InProcessLink link(split_server, "leakage-sweep");
  client::SplitTrainer trainer(TrainerOptionsFor(options, *row), link);
  trainer.Join(client_train.size());
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const client::EpochStats stats =
        trainer.TrainEpoch(client_train, epoch, options.epochs, progress);
    row->train_samples += stats.samples;
    row->train_seconds += stats.seconds;
    row->train_dcor_last_epoch = stats.dcor;
    LogEpoch(log, epoch, options, stats);
  }
  const client::EvalStats evaluation = trainer.Evaluate(test);
  trainer.Leave();
  row->test_accuracy = evaluation.accuracy;
  row->test_loss = evaluation.loss;
  return trainer.model().bottom;
}

// Originals above every attack's reconstructions (decoder, strong decoder, mask-only, UnSplit:
// those that ran), then the tensors are released.
void WriteGrid(const SweepOptions& options, SweepRow* row) {
  LeakageReport& l = row->leakage;
  if (!options.grid_dir.empty()) {
    std::vector<at::Tensor> grid_rows = {l.grid_originals, l.grid_reconstructions};
    for (const at::Tensor& more : {l.strong_attack.grid_reconstructions,
                                   l.mask_attack.grid_reconstructions, l.grid_inversions}) {
      // UnSplit may cover fewer images than the grid: only full rows.
      if (more.defined() && more.size(0) == l.grid_originals.size(0)) grid_rows.push_back(more);
    }
    std::string name = SettingLabel(*row);
    std::replace(name.begin(), name.end(), ' ', '_');
    row->grid_path = options.grid_dir + "/grid_" + name + "_seed" + std::to_string(row->seed) +
                     ".png";
    privacy::WritePngGrid(row->grid_path, grid_rows, options.grid_scale);
  }
  l.grid_originals = l.grid_reconstructions = l.grid_inversions = at::Tensor();
  l.strong_attack.grid_reconstructions = l.mask_attack.grid_reconstructions = at::Tensor();
}

void LogMeasured(std::FILE* log, const SweepRow& row) {
  if (!log) return;
  const LeakageReport& l = row.leakage;
  std::fprintf(log,
               "  test accuracy %.2f%%, dCor %.4f (bias-corrected dCor^2 %.4f, baseline %.4f, "
               "batches of %lld), attack SSIM %.4f PSNR %.2f dB MSE %.5f; strong decoder SSIM "
               "%.4f, mask-only SSIM %.4f, UnSplit SSIM %.4f\n",
               100 * row.test_accuracy, l.dcor.dcor, l.dcor.dcor_bias_corrected, l.dcor.baseline,
               static_cast<long long>(l.dcor.batch_size), l.attack_ssim, l.attack_psnr,
               l.attack_mse, l.strong_attack.ssim, l.mask_attack.ssim, l.inversion_ssim);
  std::fflush(log);
}

// dCor and the attacks on what the trained bottom sends; the grid PNG if asked.
void MeasureSetting(torch::nn::Sequential& bottom, const Dataset& auxiliary, const Dataset& test,
                    const SweepOptions& options, const TransmissionSettings& transmission,
                    std::FILE* log, SweepRow* row) {
  if (log) {
    const int64_t pairs = options.leakage.attack_auxiliary_samples > 0
                              ? std::min(options.leakage.attack_auxiliary_samples, auxiliary.size())
                              : auxiliary.size();
    std::fprintf(log,
                 "  measuring: dCor on %lld test inputs, attack decoder on %lld auxiliary "
                 "pairs for %d epochs\n",
                 static_cast<long long>(test.size()), static_cast<long long>(pairs),
                 options.leakage.attack.epochs);
    std::fflush(log);
  }
  LeakageOptions leakage_options = options.leakage;
  leakage_options.transmission = transmission;
  leakage_options.send_batch_size = options.batch_size;
  leakage_options.seed = row->seed;
  leakage_options.activation_noise = row->noise;
  row->leakage = MeasureLeakage(bottom, auxiliary, test, leakage_options);
  WriteGrid(options, row);
  LogMeasured(log, *row);
}

// One setting: trains, evaluates and measures.
SweepRow RunSetting(const Dataset& client_train, const Dataset& auxiliary, const Dataset& test,
                    const SweepOptions& options, SweepRow row, client::ProgressReporter* progress,
                    std::FILE* log) {
  const TransmissionSettings transmission = {
      row.method, row.method == Method::kNone ? 1.0 : row.density, row.precision};
  torch::nn::Sequential bottom =
      TrainAndEvaluate(client_train, test, options, transmission, progress, log, &row);
  MeasureSetting(bottom, auxiliary, test, options, transmission, log, &row);
  return row;
}

}  // namespace

std::string SettingLabel(const SweepRow& row) {
  std::string label;
  if (row.alpha > 0) label += "a" + Short(row.alpha);
  if (row.noise > 0) label += (label.empty() ? "n" : " n") + Short(row.noise);
  if (row.density < 1) label += (label.empty() ? "d" : " d") + Short(row.density);
  return label.empty() ? "vanilla" : label;
}

std::vector<SweepRow> RunSweep(const Dataset& client_train, const Dataset& auxiliary,
                               const Dataset& test, const SweepOptions& options,
                               client::ProgressReporter* progress, std::FILE* log,
                               const std::function<void(const SweepRow&)>& on_row) {
  CheckSweepOptions(options);
  const std::vector<uint64_t> seeds =
      options.seeds.empty() ? std::vector<uint64_t>{options.seed} : options.seeds;
  const size_t settings = seeds.size() * options.densities.size() * options.alphas.size() *
                          options.noises.size();
  std::vector<SweepRow> rows;
  for (uint64_t seed : seeds) {
    for (double density : options.densities) {
      for (double alpha : options.alphas) {
        for (double noise : options.noises) {
          SweepRow row;
          row.alpha = alpha;
          row.density = density;
          row.noise = noise;
          row.seed = seed;
          row.method = density >= 1 ? Method::kNone : options.method;
          row.precision = options.precision;
          if (log) {
            std::fprintf(log, "[setting %zu/%zu] %s, seed %llu (%s, %s): training\n",
                         rows.size() + 1, settings, SettingLabel(row).c_str(),
                         static_cast<unsigned long long>(seed), MethodName(row.method),
                         ToString(row.precision));
            std::fflush(log);
          }
          rows.push_back(
              RunSetting(client_train, auxiliary, test, options, row, progress, log));
          if (on_row) on_row(rows.back());
        }
      }
    }
  }
  return rows;
}

namespace {

// Every column of a row, named, in the CSV's order; numbers already formatted ("nan" for NaN).
std::vector<std::pair<std::string, std::string>> RowFields(const SweepRow& row) {
  const LeakageReport& l = row.leakage;
  return {{"alpha", Short(row.alpha)},
          {"act_noise", Short(row.noise)},
          {"density", Short(row.density)},
          {"seed", std::to_string(row.seed)},
          {"method", MethodName(row.method)},
          {"precision", ToString(row.precision)},
          {"density_sent", Number(l.density_sent, 5)},
          {"test_accuracy", Number(row.test_accuracy, 5)},
          {"test_loss", Number(row.test_loss, 5)},
          {"dcor", Number(l.dcor.dcor, 5)},
          {"dcor_bias_corrected", Number(l.dcor.dcor_bias_corrected, 5)},
          {"dcor_baseline", Number(l.dcor.baseline, 5)},
          {"dcor_batch_size", std::to_string(l.dcor.batch_size)},
          {"dcor_batches", std::to_string(l.dcor.batches)},
          {"attack_mse", Number(l.attack_mse, 6)},
          {"attack_psnr", Number(l.attack_psnr, 3)},
          {"attack_ssim", Number(l.attack_ssim, 5)},
          {"auxiliary_samples", std::to_string(l.auxiliary_samples)},
          {"strong_attack_ssim", Number(l.strong_attack.ssim, 5)},
          {"strong_attack_mse", Number(l.strong_attack.mse, 6)},
          {"strong_auxiliary_samples", std::to_string(l.strong_attack.auxiliary_samples)},
          {"mask_attack_ssim", Number(l.mask_attack.ssim, 5)},
          {"mask_attack_mse", Number(l.mask_attack.mse, 6)},
          {"inversion_ssim", Number(l.inversion_ssim, 5)},
          {"inversion_samples", std::to_string(l.inversion_samples)},
          {"test_samples", std::to_string(l.test_samples)},
          {"train_samples", std::to_string(row.train_samples)},
          {"train_seconds", Number(row.train_seconds, 1)},
          {"train_dcor_last_epoch", Number(row.train_dcor_last_epoch, 5)},
          {"grid", row.grid_path}};
}

// The columns that hold text rather than numbers (quoted in JSON).
bool IsTextField(const std::string& name) {
  return name == "method" || name == "precision" || name == "grid";
}

}  // namespace

std::string SweepCsv(const std::vector<SweepRow>& rows) {
  std::ostringstream csv;
  const auto header = RowFields(SweepRow{});
  for (size_t i = 0; i < header.size(); ++i) csv << (i ? "," : "") << header[i].first;
  csv << '\n';
  for (const SweepRow& row : rows) {
    const auto fields = RowFields(row);
    for (size_t i = 0; i < fields.size(); ++i) csv << (i ? "," : "") << fields[i].second;
    csv << '\n';
  }
  return csv.str();
}

std::string SweepJson(const std::vector<SweepRow>& rows) {
  std::ostringstream json;
  json << "[";
  for (size_t r = 0; r < rows.size(); ++r) {
    json << (r ? ",\n " : "\n ") << "{";
    const auto fields = RowFields(rows[r]);
    for (size_t i = 0; i < fields.size(); ++i) {
      const auto& [name, value] = fields[i];
      json << (i ? ", " : "") << '"' << name << "\": ";
      if (IsTextField(name)) {
        json << GnuplotQuote(value);  // the same escaping of quotes and backslashes
      } else {
        json << (value == "nan" ? "null" : value);
      }
    }
    json << "}";
  }
  json << "\n]\n";
  return json.str();
}

std::string SweepMarkdown(const std::vector<SweepRow>& rows) {
  std::ostringstream md;
  const int64_t batch = rows.empty() ? 0 : rows.front().leakage.dcor.batch_size;
  md << "| setting | seed | test accuracy | dCor (n = " << batch
     << ") | bias-corrected dCor^2 | independence baseline | decoder SSIM | strong decoder SSIM "
        "| mask-only SSIM | UnSplit SSIM | decoder PSNR (dB) |\n";
  md << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  auto ssim = [](double value) { return std::isnan(value) ? std::string("-") : Number(value, 3); };
  for (const SweepRow& row : rows) {
    const LeakageReport& l = row.leakage;
    md << "| " << SettingLabel(row) << " | " << row.seed << " | "
       << Number(100 * row.test_accuracy, 2) << "% | " << Number(l.dcor.dcor, 3) << " | "
       << Number(l.dcor.dcor_bias_corrected, 3) << " | " << Number(l.dcor.baseline, 3) << " | "
       << ssim(l.attack_ssim) << " | " << ssim(l.strong_attack.ssim) << " | "
       << ssim(l.mask_attack.ssim) << " | " << ssim(l.inversion_ssim) << " | "
       << Number(l.attack_psnr, 2) << " |\n";
  }
  return md.str();
}

std::string SweepGnuplotScript(const std::vector<SweepRow>& rows, const std::string& png_path) {
  // One data block: accuracy (%), dCor, SSIM of decoder, strong, mask-only, UnSplit, decoder MSE,
  // label.
  std::ostringstream gp;
  gp << "# Generated by cleave-leakage sweep: the privacy/accuracy frontier.\n"
     << "$rows << EOD\n";
  for (const SweepRow& row : rows) {
    const LeakageReport& l = row.leakage;
    gp << Number(100 * row.test_accuracy, 3) << ' ' << Number(l.dcor.dcor, 5) << ' '
       << Number(l.attack_ssim, 5) << ' ' << Number(l.strong_attack.ssim, 5) << ' '
       << Number(l.mask_attack.ssim, 5) << ' ' << Number(l.inversion_ssim, 5) << ' '
       << Number(l.attack_mse, 6) << ' ' << GnuplotQuote(SettingLabel(row)) << '\n';
  }
  gp << "EOD\n";
  const int64_t batch = rows.empty() ? 0 : rows.front().leakage.dcor.batch_size;
  // SSIM needs images; for tabular inputs the second panel shows the decoder's MSE.
  const bool have_ssim = std::any_of(rows.begin(), rows.end(), [](const SweepRow& row) {
    return !std::isnan(row.leakage.attack_ssim);
  });
  gp << "set terminal pngcairo size 1200,520 font \"sans,10\"\n"
     << "set output " << GnuplotQuote(png_path) << "\n"
     << "set datafile missing \"nan\"\n"
     << "set multiplot layout 1,2 title \"Leakage against test accuracy (labels: a = NoPeek "
        "alpha, n = noise sigma, d = density)\"\n"
     << "set grid\nset key top left\nset xlabel \"test accuracy (%)\"\n"
     << "set yrange [0:1.05]\n"
     << "set ylabel \"dCor(inputs, transmitted activations), batches of " << batch << "\"\n"
     << "plot $rows using 1:2 with points pointtype 7 pointsize 1.3 title \"dCor\", \\\n"
     << "     $rows using 1:2:8 with labels offset char 0.8,0.6 font \",8\" notitle\n";
  if (have_ssim) {
    gp << "set ylabel \"attack SSIM (1 = perfect copy)\"\n"
       << "plot $rows using 1:3 with points pointtype 7 pointsize 1.3 title \"decoder\", \\\n"
       << "     $rows using 1:4 with points pointtype 5 title \"strong decoder\", \\\n"
       << "     $rows using 1:5 with points pointtype 9 title \"mask-only\", \\\n"
       << "     $rows using 1:6 with points pointtype 13 title \"UnSplit (no aux. data)\", \\\n"
       << "     $rows using 1:3:8 with labels offset char 0.8,0.6 font \",8\" notitle\n";
  } else {
    gp << "set autoscale y\nset ylabel \"reconstruction attack MSE (lower = closer copy)\"\n"
       << "plot $rows using 1:7 with points pointtype 7 pointsize 1.3 title \"decoder\", \\\n"
       << "     $rows using 1:7:8 with labels offset char 0.8,0.6 font \",8\" notitle\n";
  }
  gp << "unset multiplot\n";
  return gp.str();
}

bool RunGnuplot(const std::string& script_path, std::string* why_not) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    *why_not = "gnuplot is not installed (apt-get install gnuplot-nox); no plot written";
    return false;
  }
  const int status = std::system(("gnuplot " + ShellQuote(script_path) + " 2>&1").c_str());
  if (status != 0) {
    *why_not = "gnuplot failed on '" + script_path + "' (exit status " + std::to_string(status) +
               "); no plot written";
    return false;
  }
  return true;
}

}  // namespace cleave::leakage
