#include "cleave/leakage/leakage_sweep.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

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
}

namespace {

server::SplitServerOptions ServerOptionsFor(const SweepOptions& options,
                                            const TransmissionSettings& transmission) {
  server::SplitServerOptions server_options;
  server_options.model = options.model;
  server_options.seed = options.seed;
  server_options.optimizer = options.optimizer;
  server_options.learning_rate = options.server_learning_rate;
  server_options.max_batch = std::max<int64_t>(4096, options.batch_size);
  protocol::LinkSpec link_spec;
  link_spec.activations = transmission;
  server_options.compression = protocol::ToProto(link_spec);
  return server_options;
}

client::TrainerOptions TrainerOptionsFor(const SweepOptions& options, double alpha) {
  client::TrainerOptions trainer_options;
  trainer_options.model = options.model;
  trainer_options.seed = options.seed;
  trainer_options.optimizer = options.optimizer;
  trainer_options.learning_rate = options.client_learning_rate;
  trainer_options.batch_size = options.batch_size;
  trainer_options.max_steps_per_epoch = options.max_steps_per_epoch;
  trainer_options.nopeek_alpha = alpha;
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
  server::SplitServer split_server(ServerOptionsFor(options, transmission));
  server::InProcessLink link(split_server, "leakage-sweep");
  client::SplitTrainer trainer(TrainerOptionsFor(options, row->alpha), link);
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

// dCor and the reconstruction attack on what the trained bottom sends; the grid PNG if asked.
void MeasureSetting(torch::nn::Sequential& bottom, const Dataset& auxiliary, const Dataset& test,
                    const SweepOptions& options, const TransmissionSettings& transmission,
                    std::FILE* log, SweepRow* row) {
  if (log) {
    std::fprintf(log,
                 "  measuring: dCor on %lld test inputs, attack decoder on %lld auxiliary "
                 "pairs for %d epochs\n",
                 static_cast<long long>(test.size()), static_cast<long long>(auxiliary.size()),
                 options.leakage.attack.epochs);
    std::fflush(log);
  }
  LeakageOptions leakage_options = options.leakage;
  leakage_options.transmission = transmission;
  leakage_options.send_batch_size = options.batch_size;
  leakage_options.seed = options.seed;
  row->leakage = MeasureLeakage(bottom, auxiliary, test, leakage_options);
  if (!options.grid_dir.empty()) {
    row->grid_path = options.grid_dir + "/grid_alpha" + Short(row->alpha) + "_density" +
                     Short(row->density) + ".png";
    privacy::WritePngGrid(row->grid_path,
                          {row->leakage.grid_originals, row->leakage.grid_reconstructions},
                          options.grid_scale);
  }
  row->leakage.grid_originals = at::Tensor();
  row->leakage.grid_reconstructions = at::Tensor();
  if (log) {
    std::fprintf(log,
                 "  test accuracy %.2f%%, dCor %.4f (bias-corrected dCor^2 %.4f, baseline "
                 "%.4f, batches of %lld), attack SSIM %.4f PSNR %.2f dB MSE %.5f\n",
                 100 * row->test_accuracy, row->leakage.dcor.dcor,
                 row->leakage.dcor.dcor_bias_corrected, row->leakage.dcor.baseline,
                 static_cast<long long>(row->leakage.dcor.batch_size), row->leakage.attack_ssim,
                 row->leakage.attack_psnr, row->leakage.attack_mse);
    std::fflush(log);
  }
}

}  // namespace

std::vector<SweepRow> RunSweep(const Dataset& client_train, const Dataset& auxiliary,
                               const Dataset& test, const SweepOptions& options,
                               client::ProgressReporter* progress, std::FILE* log,
                               const std::function<void(const SweepRow&)>& on_row) {
  CheckSweepOptions(options);
  std::vector<SweepRow> rows;
  const int64_t settings = static_cast<int64_t>(options.alphas.size() * options.densities.size());
  for (double density : options.densities) {
    for (double alpha : options.alphas) {
      SweepRow row;
      row.alpha = alpha;
      row.density = density;
      row.method = density >= 1 ? Method::kNone : options.method;
      row.precision = options.precision;
      const TransmissionSettings transmission = {
          row.method, row.method == Method::kNone ? 1.0 : density, row.precision};
      if (log) {
        std::fprintf(log, "[setting %zu/%lld] alpha %s, density %s (%s, %s): training\n",
                     rows.size() + 1, static_cast<long long>(settings), Short(alpha).c_str(),
                     Short(density).c_str(), MethodName(row.method), ToString(row.precision));
        std::fflush(log);
      }
      torch::nn::Sequential bottom =
          TrainAndEvaluate(client_train, test, options, transmission, progress, log, &row);
      MeasureSetting(bottom, auxiliary, test, options, transmission, log, &row);
      rows.push_back(row);
      if (on_row) on_row(rows.back());
    }
  }
  return rows;
}

std::string SweepCsv(const std::vector<SweepRow>& rows) {
  std::ostringstream csv;
  csv << "alpha,density,method,precision,density_sent,test_accuracy,test_loss,dcor,"
         "dcor_bias_corrected,dcor_baseline,dcor_batch_size,dcor_batches,attack_mse,attack_psnr,"
         "attack_ssim,auxiliary_samples,test_samples,train_samples,train_seconds,"
         "train_dcor_last_epoch,grid,inversion_ssim,inversion_samples\n";
  for (const SweepRow& row : rows) {
    const LeakageReport& l = row.leakage;
    csv << Short(row.alpha) << ',' << Short(row.density) << ',' << MethodName(row.method) << ','
        << ToString(row.precision) << ',' << Number(l.density_sent, 5) << ','
        << Number(row.test_accuracy, 5) << ',' << Number(row.test_loss, 5) << ','
        << Number(l.dcor.dcor, 5) << ',' << Number(l.dcor.dcor_bias_corrected, 5) << ','
        << Number(l.dcor.baseline, 5) << ',' << l.dcor.batch_size << ',' << l.dcor.batches << ','
        << Number(l.attack_mse, 6) << ',' << Number(l.attack_psnr, 3) << ','
        << Number(l.attack_ssim, 5) << ',' << l.auxiliary_samples << ',' << l.test_samples << ','
        << row.train_samples << ',' << Number(row.train_seconds, 1) << ','
        << Number(row.train_dcor_last_epoch, 5) << ',' << row.grid_path << ','
        << Number(l.inversion_ssim, 5) << ',' << l.inversion_samples << '\n';
  }
  return csv.str();
}

std::string SweepMarkdown(const std::vector<SweepRow>& rows) {
  std::ostringstream md;
  const int64_t batch = rows.empty() ? 0 : rows.front().leakage.dcor.batch_size;
  md << "| alpha | density | test accuracy | dCor (n = " << batch
     << ") | bias-corrected dCor^2 | independence baseline | attack SSIM | attack PSNR (dB) | "
        "attack MSE |\n";
  md << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const SweepRow& row : rows) {
    const LeakageReport& l = row.leakage;
    md << "| " << Short(row.alpha) << " | " << Short(row.density) << " | "
       << Number(100 * row.test_accuracy, 2) << "% | " << Number(l.dcor.dcor, 3) << " | "
       << Number(l.dcor.dcor_bias_corrected, 3) << " | " << Number(l.dcor.baseline, 3) << " | "
       << Number(l.attack_ssim, 3) << " | " << Number(l.attack_psnr, 2) << " | "
       << Number(l.attack_mse, 4) << " |\n";
  }
  return md.str();
}

std::string SweepGnuplotScript(const std::vector<SweepRow>& rows, const std::string& png_path) {
  // One data block per density: accuracy (%), dCor, attack SSIM, alpha.
  std::map<double, std::vector<const SweepRow*>> by_density;
  for (const SweepRow& row : rows) by_density[row.density].push_back(&row);
  std::ostringstream gp;
  gp << "# Generated by cleave-leakage sweep: leakage against test accuracy.\n";
  int block = 0;
  for (const auto& [density, members] : by_density) {
    gp << "$density" << block++ << " << EOD\n";
    for (const SweepRow* row : members) {
      gp << Number(100 * row->test_accuracy, 3) << ' ' << Number(row->leakage.dcor.dcor, 5) << ' '
         << Number(row->leakage.attack_ssim, 5) << ' ' << Number(row->leakage.attack_mse, 6) << ' '
         << Short(row->alpha) << '\n';
    }
    gp << "EOD\n";
  }
  const int64_t batch = rows.empty() ? 0 : rows.front().leakage.dcor.batch_size;
  // SSIM needs images; for tabular inputs the second panel shows the attack's MSE.
  const bool have_ssim = std::any_of(rows.begin(), rows.end(), [](const SweepRow& row) {
    return !std::isnan(row.leakage.attack_ssim);
  });
  gp << "set terminal pngcairo size 1200,480 font \"sans,10\"\n"
     << "set output " << GnuplotQuote(png_path) << "\n"
     << "set multiplot layout 1,2 title \"NoPeek: leakage against test accuracy (labels: "
        "alpha)\"\n"
     << "set grid\nset key bottom left\nset xlabel \"test accuracy (%)\"\n";
  for (int panel = 0; panel < 2; ++panel) {
    const int column = panel == 0 ? 2 : have_ssim ? 3 : 4;
    // dCor and SSIM live in [0, 1]: a fixed axis keeps small changes from looking large.
    gp << (panel == 0 || have_ssim ? "set yrange [0:1.05]\n" : "set autoscale y\n");
    if (panel == 0) {
      gp << "set ylabel \"dCor(inputs, transmitted activations), batches of " << batch << "\"\n";
    } else if (have_ssim) {
      gp << "set ylabel \"reconstruction attack SSIM (1 = perfect copy)\"\n";
    } else {
      gp << "set ylabel \"reconstruction attack MSE (lower = closer copy)\"\n";
    }
    gp << "plot ";
    int index = 0;
    for (const auto& [density, members] : by_density) {
      if (index > 0) gp << ", \\\n     ";
      gp << "$density" << index << " using 1:" << column
         << " with linespoints pointtype 7 linewidth 2 title \"density " << Short(density)
         << "\", $density" << index << " using 1:" << column
         << ":(sprintf(\"%g\", $5)) with labels offset char 1,0.6 notitle";
      ++index;
    }
    gp << "\n";
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
