// cleave-leakage: how much a hospital's transmitted activations reveal about its raw inputs,
// for one trained client (measure) or across NoPeek strengths and densities (sweep).
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cleave/client/progress.h"
#include "cleave/client/training_data.h"
#include "cleave/compress/method.h"
#include "cleave/compress/sparse_codec.h"
#include "cleave/core/checkpoint.h"
#include "cleave/core/command_line.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/model_flags.h"
#include "cleave/leakage/leakage_measurement.h"
#include "cleave/leakage/leakage_sweep.h"
#include "cleave/privacy/png_grid.h"
#include "labels_command.h"

namespace {

constexpr const char* kDescription =
    R"(cleave-leakage: how much the activations a hospital sends reveal about its patients' data.

Subcommands:
  measure  one trained client (a checkpoint written by cleave-client --checkpoint)
  sweep    trains locally for each NoPeek alpha, noise sigma and density, then measures accuracy
           and leakage; writes the frontier (CSV, JSON, table, gnuplot PNG)
  labels   label leakage of each split configuration: the gradient attacks of Li et al. 2021

What the numbers mean for a hospital:
  dCor      distance correlation between raw test inputs and the activations that leave the
            hospital (after the sparsification and value rounding the server asks for). 1: the
            activations are the inputs up to rotation, scaling and shift; 0: independent. The
            plain estimate is biased upward on small batches, so it is always computed on
            batches of a stated size (--dcor-batch-size) and shown beside the independence
            baseline (the same estimate with the activations shuffled: what "reveals nothing"
            looks like at that batch size) and the bias-corrected estimate of dCor^2 (near 0
            when independent, at any batch size).
  attack    an attacker (e.g. the server) who has some (input, activation) pairs (--aux-samples,
            taken from the training data, disjoint from the test inputs) trains a decoder from
            activations back to inputs, then reconstructs the test inputs from what was sent.
            SSIM (structural similarity, 1 = perfect copy, near 0 = no structure recovered),
            PSNR (dB, higher = closer) and MSE (pixel error, inputs in [0, 1]), per image,
            averaged. The PNG grid shows originals above their reconstructions.
            Beside it: a stronger decoder (--strong-aux-samples pairs, --strong-width channels),
            a mask-only decoder (sparse links: trained on which positions were sent, 1 or 0,
            values dropped: what the sparsity pattern alone reveals) and, with
            --inversion-samples, UnSplit (no auxiliary data, the bottom's layers only).
  noise     --act-noise: the noise defence, Gaussian noise added by the client to every
            activation it sends (cleave-client --act-noise); every figure is of the noisy ones.
  AUC       (labels) how well a party that does not hold the labels ranks samples of a class
            above the others from the gradients it receives: by each sample's gradient norm, or
            by its cosine with the gradient of one sample whose class it knows. 0.5: nothing
            learned; 1: the labels are read off the gradients.

Examples:
  cleave-leakage measure --checkpoint runs/st-mary.ckpt --model cnn --cut 1 --density 0.05 \
                         --method gaussiank+ --grid runs/st-mary-grid.png
  cleave-leakage sweep --alphas 0 1 3 10 30 --densities 1 0.05 --epochs 1 --out runs/leakage
  cleave-leakage sweep --alphas 0 5 --act-noise 0 0.5 --seeds 1 2 3 --strong-aux-samples 10000 \
                       --out runs/frontier
  cleave-leakage labels --steps 300 --positive-class 0 --label-defence clip \
                        --label-defence-strength 0.5

Exit codes: 0 ok, 1 internal error, 2 bad flags or files.)";

// Sized for a 2-core machine (about a minute per measurement on Fashion-MNIST); a determined
// attacker has more pairs and compute, so treat the attack's scores as a lower bound.
// The flags' choices come from the contract's name lists.
std::string PrecisionList() {
  std::string out;
  for (const std::string& name : cleave::ValuePrecisionNames())
    out += (out.empty() ? "" : ", ") + name;
  return out;
}

// A sweep's densities below 1 need a compressor: every method but none.
std::vector<std::string> SparseMethodNames() {
  std::vector<std::string> names;
  for (const std::string& name : cleave::MethodNames()) {
    if (name != cleave::MethodName(cleave::Method::kNone)) names.push_back(name);
  }
  return names;
}

std::string SparseMethodList() {
  std::string out;
  for (const std::string& name : SparseMethodNames()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

cleave::privacy::ReconstructionAttackOptions DefaultAttack() {
  cleave::privacy::ReconstructionAttackOptions attack;
  attack.epochs = 4;
  attack.width = 32;
  return attack;
}

// Wider (128 channels) and, with --strong-aux-samples, trained on more pairs than the default.
cleave::privacy::ReconstructionAttackOptions StrongAttack() {
  cleave::privacy::ReconstructionAttackOptions attack = DefaultAttack();
  attack.width = 128;
  return attack;
}

struct AttackFlags {
  cleave::privacy::ReconstructionAttackOptions attack = DefaultAttack();
  int64_t aux_samples = 3000;
  int64_t dcor_batch_size = 1024;
  int64_t grid_images = 8;
  int64_t inversion_samples = 0;
  cleave::privacy::InversionOptions inversion;
  cleave::privacy::ReconstructionAttackOptions strong = StrongAttack();
  int64_t strong_aux_samples = 0;

  void Register(CLI::App& app) {
    RegisterStrong(app);
    app.add_option("--inversion-samples", inversion_samples,
                   "Also run model inversion without auxiliary data (UnSplit: the attacker knows "
                   "the bottom's layers, not its weights) on this many test images (0: off)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--inversion-rounds", inversion.rounds,
                   "UnSplit: alternations of input and surrogate steps")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--inversion-tv", inversion.total_variation,
                   "UnSplit: weight of the total-variation prior on the reconstructed images")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--aux-samples", aux_samples,
                   "Training samples the attacker holds as (input, activation) pairs; never "
                   "tested on (sweep: never trained on either)")
        ->capture_default_str();
    app.add_option("--attack-epochs", attack.epochs, "Epochs the attacker trains its decoder")
        ->capture_default_str();
    app.add_option("--attack-lr", attack.learning_rate, "Learning rate of the attacker's decoder")
        ->capture_default_str();
    app.add_option("--attack-width", attack.width, "Channels (or hidden units) of the decoder")
        ->capture_default_str();
    app.add_option("--attack-batch-size", attack.batch_size, "Decoder training batch size")
        ->capture_default_str();
    app.add_option("--dcor-batch-size", dcor_batch_size,
                   "Test rows per dCor estimate (the plain estimator is biased upward on small "
                   "batches: 0.54 at 64, 0.31 at 256, 0.16 at 1024 for independent data)")
        ->capture_default_str();
    app.add_option("--grid-images", grid_images, "Test images shown in reconstruction grids")
        ->capture_default_str();
  }
  // The stronger decoder, reported beside the default one.
  void RegisterStrong(CLI::App& app) {
    app.add_option("--strong-aux-samples", strong_aux_samples,
                   "Also run a stronger decoder trained on this many auxiliary pairs (e.g. "
                   "10000; the attacker's share grows to hold them; 0: off)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--strong-width", strong.width, "Channels of the stronger decoder")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--strong-epochs", strong.epochs, "Epochs the stronger decoder trains")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
  }
  // Pairs split off for the attacker: enough for both decoders.
  int64_t AttackerShare() const { return std::max(aux_samples, strong_aux_samples); }
  cleave::leakage::LeakageOptions Options(uint64_t seed) const {
    CLEAVE_CHECK_USER(grid_images >= 1, "--grid-images must be at least 1");
    CLEAVE_CHECK_USER(aux_samples >= 1, "--aux-samples must be at least 1");
    cleave::leakage::LeakageOptions options;
    options.attack = attack;
    options.dcor_batch_size = dcor_batch_size;
    options.grid_images = grid_images;
    options.seed = seed;
    options.inversion_samples = inversion_samples;
    options.inversion = inversion;
    options.attack_auxiliary_samples = aux_samples;
    options.strong_attack = strong;
    options.strong_auxiliary_samples = strong_aux_samples;
    return options;
  }
};

void PrintReport(const cleave::leakage::LeakageReport& report) {
  const auto& d = report.dcor;
  std::printf(
      "dCor(test inputs, transmitted activations)  %.4f   (mean of %lld batches of %lld)\n"
      "independence baseline (shuffled)            %.4f   (what 'reveals nothing' scores)\n"
      "bias-corrected dCor^2                       %.4f   (near 0 when independent)\n"
      "activation elements sent                    %.2f%%\n"
      "reconstruction attack (%lld auxiliary pairs, %lld test images):\n"
      "  SSIM %.4f (1 = perfect copy)   PSNR %.2f dB   MSE %.5f\n",
      d.dcor, static_cast<long long>(d.batches), static_cast<long long>(d.batch_size), d.baseline,
      d.dcor_bias_corrected, 100 * report.density_sent,
      static_cast<long long>(report.auxiliary_samples), static_cast<long long>(report.test_samples),
      report.attack_ssim, report.attack_psnr, report.attack_mse);
  if (report.strong_attack.auxiliary_samples > 0) {
    std::printf("stronger decoder (%lld auxiliary pairs):\n  SSIM %.4f   PSNR %.2f dB   MSE %.5f\n",
                static_cast<long long>(report.strong_attack.auxiliary_samples),
                report.strong_attack.ssim, report.strong_attack.psnr, report.strong_attack.mse);
  }
  if (report.mask_attack.auxiliary_samples > 0) {
    std::printf("mask-only decoder (which positions were sent, values dropped):\n"
                "  SSIM %.4f   PSNR %.2f dB   MSE %.5f\n",
                report.mask_attack.ssim, report.mask_attack.psnr, report.mask_attack.mse);
  }
  if (report.inversion_samples > 0) {
    std::printf(
        "inversion without auxiliary data (UnSplit, %lld test images):\n"
        "  SSIM %.4f (up to polarity)\n",
        static_cast<long long>(report.inversion_samples), report.inversion_ssim);
  }
}

nlohmann::json ReportJson(const cleave::leakage::LeakageReport& report) {
  auto number = [](double v) {
    return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v);
  };
  return {{"dcor", report.dcor.dcor},
          {"dcor_bias_corrected", report.dcor.dcor_bias_corrected},
          {"dcor_baseline", report.dcor.baseline},
          {"dcor_batch_size", report.dcor.batch_size},
          {"dcor_batches", report.dcor.batches},
          {"density_sent", report.density_sent},
          {"attack_mse", report.attack_mse},
          {"attack_psnr", report.attack_psnr},
          {"attack_ssim", number(report.attack_ssim)},
          {"auxiliary_samples", report.auxiliary_samples},
          {"test_samples", report.test_samples},
          {"inversion_ssim", number(report.inversion_ssim)},
          {"inversion_samples", report.inversion_samples},
          {"strong_attack_ssim", number(report.strong_attack.ssim)},
          {"strong_attack_mse", number(report.strong_attack.mse)},
          {"strong_auxiliary_samples", report.strong_attack.auxiliary_samples},
          {"mask_attack_ssim", number(report.mask_attack.ssim)},
          {"mask_attack_mse", number(report.mask_attack.mse)}};
}

// `measure`: one trained client's checkpoint, under the transmission the server asks for.
struct MeasureFlags {
  cleave::ModelFlags model;
  cleave::client::DataFlags data;
  AttackFlags attack;
  std::string method = cleave::MethodName(cleave::Method::kNone);
  std::string precision = cleave::ToString(cleave::ValuePrecision::kFp32);
  double density = 1.0;
  std::string checkpoint_path, grid_path, json_path;
  int64_t send_batch_size = 64;
  uint64_t seed = 1;
  double act_noise = 0;

  void Register(CLI::App& measure) {
    measure
        .add_option("--checkpoint", checkpoint_path,
                    "Client-side model written by cleave-client --checkpoint")
        ->required();
    model.Register(measure);
    data.Register(measure);
    measure
        .add_option("--method", method,
                    "Activation compressor the server asks for: " + cleave::MethodList())
        ->check(CLI::IsMember(cleave::MethodNames()))
        ->capture_default_str();
    measure
        .add_option("--density", density,
                    "Fraction of activation elements sent (with a compressor other than none)")
        ->capture_default_str();
    measure
        .add_option("--precision", precision,
                    "Value precision of sparse payloads: " + PrecisionList())
        ->check(CLI::IsMember(cleave::ValuePrecisionNames()))
        ->capture_default_str();
    measure
        .add_option("--batch-size", send_batch_size,
                    "Batch the client sends (the compressor selects per sent batch)")
        ->capture_default_str();
    measure
        .add_option("--act-noise", act_noise,
                    "Noise defence the client ran with (cleave-client --act-noise): Gaussian "
                    "noise of this sigma is added to what is measured (0: off)")
        ->check(CLI::Range(0.0, 1e6))
        ->capture_default_str();
    attack.Register(measure);
    measure.add_option("--grid", grid_path,
                       "Write originals above their reconstructions to this PNG");
    measure.add_option("--json", json_path, "Write the figures as JSON to this file");
    measure
        .add_option("--seed", seed, "Seed of the model skeleton, data split, decoder and sampling")
        ->capture_default_str();
  }
};

// `sweep`: one local training per (density, alpha), then accuracy and leakage of each.
struct SweepFlags {
  cleave::ModelFlags model;
  cleave::client::DataFlags data;
  AttackFlags attack;
  cleave::leakage::SweepOptions options;
  std::string method = cleave::MethodName(options.method);
  std::string precision = cleave::ToString(options.precision);
  std::string out_dir, progress_mode = "lines";
  double client_lr = -1;

  void Register(CLI::App& sweep) {
    RegisterSettings(sweep);
    model.Register(sweep);
    data.Register(sweep);
    sweep.get_option("--train-limit")
        ->description(
            "Samples the client trains on, drawn (seeded) from what is left after the "
            "attacker's --aux-samples (0: all of it)");
    RegisterTraining(sweep);
    attack.Register(sweep);
    sweep
        .add_option("--out", out_dir,
                    "Directory for leakage.csv, leakage.json, leakage.md, leakage.png, "
                    "leakage.gp and the reconstruction grids")
        ->required();
    sweep.add_option("--progress", progress_mode, "auto (bar on a terminal), bar, lines or none")
        ->capture_default_str();
    sweep
        .add_option("--seed", options.seed,
                    "Seed of weights, shuffling, data split, decoder and sampling")
        ->capture_default_str();
    sweep
        .add_option("--seeds", options.seeds,
                    "Run every setting once per seed (weights, shuffling, decoder, sampling); "
                    "the data split keeps --seed")
        ->expected(1, -1);
  }

  // The grid of settings: alphas x densities, and how sparse payloads are sent.
  void RegisterSettings(CLI::App& sweep) {
    sweep
        .add_option("--alphas", options.alphas,
                    "NoPeek weights: the client adds alpha * dCor(inputs, sent activations) to "
                    "its loss (0 = vanilla split learning)")
        ->capture_default_str();
    sweep
        .add_option("--densities", options.densities,
                    "Fractions of activation elements sent (1 = dense)")
        ->capture_default_str();
    sweep
        .add_option("--act-noise", options.noises,
                    "Noise defence sigmas (cleave-client --act-noise), each run with every alpha "
                    "(alpha > 0 and sigma > 0: NoPeek + noise)")
        ->check(CLI::Range(0.0, 1e6))
        ->capture_default_str();
    sweep.add_option("--method", method, "Compressor for densities below 1: " + SparseMethodList())
        ->check(CLI::IsMember(SparseMethodNames()))
        ->capture_default_str();
    sweep
        .add_option("--precision", precision,
                    "Value precision of sparse payloads: " + PrecisionList())
        ->check(CLI::IsMember(cleave::ValuePrecisionNames()))
        ->capture_default_str();
  }

  // How each setting trains.
  void RegisterTraining(CLI::App& sweep) {
    sweep.add_option("--epochs", options.epochs, "Training epochs per setting")
        ->capture_default_str();
    sweep
        .add_option("--batch-size", options.batch_size,
                    "Training batch (also the batch NoPeek's dCor is computed on)")
        ->capture_default_str();
    sweep
        .add_option("--max-steps-per-epoch", options.max_steps_per_epoch,
                    "Stop each epoch after N steps (0: whole epoch)")
        ->capture_default_str();
    sweep.add_option("--optimizer", options.optimizer, "adam or sgd (both halves)")
        ->check(CLI::IsMember({"adam", "sgd"}))
        ->capture_default_str();
    sweep
        .add_option("--lr", options.server_learning_rate,
                    "Learning rate of the server-side layers (and the client's, unless "
                    "--client-lr)")
        ->capture_default_str();
    sweep.add_option("--client-lr", client_lr,
                     "Learning rate of the client-side layers (default: --lr)");
    sweep
        .add_option("--client-optimizer", options.client_optimizer,
                    "Optimizer of the client-side layers, adam or sgd (default: --optimizer)")
        ->check(CLI::IsMember({"adam", "sgd"}));
  }
};

void WriteMeasureJson(const MeasureFlags& f, const cleave::ModelSpec& spec,
                      const cleave::leakage::TransmissionSettings& transmission,
                      const cleave::leakage::LeakageReport& report) {
  nlohmann::json json = ReportJson(report);
  json["checkpoint"] = f.checkpoint_path;
  json["model"] = cleave::DescribeSpec(spec);
  json["method"] = cleave::MethodName(transmission.method);
  json["density"] = transmission.density;
  json["precision"] = cleave::ToString(transmission.precision);
  json["send_batch_size"] = f.send_batch_size;
  json["act_noise"] = f.act_noise;
  json["seed"] = f.seed;
  cleave::WriteFileAtomic(f.json_path, json.dump(2) + "\n");
}

int Measure(const MeasureFlags& f) {
  const cleave::ModelSpec spec = f.model.Spec();
  cleave::SplitModel model = cleave::BuildSplitModel(spec, f.seed);
  cleave::LoadCheckpoint(f.checkpoint_path, *model.bottom, nullptr, cleave::ModelFingerprint(spec));
  const cleave::client::TrainingData data =
      cleave::client::LoadTrainingData(f.data, spec.num_classes);
  const cleave::leakage::ClientAndAuxiliary split =
      cleave::leakage::SplitOffAuxiliary(data.train, f.attack.AttackerShare(), 0, f.seed);
  if (!f.json_path.empty()) cleave::WriteFileAtomic(f.json_path, "{}\n");  // fail early
  const cleave::leakage::TransmissionSettings transmission = {
      cleave::ParseMethod(f.method), f.density, cleave::ParseValuePrecision(f.precision)};
  cleave::leakage::LeakageOptions options = f.attack.Options(f.seed);
  options.surrogate = [spec](uint64_t seed) { return cleave::BuildSplitModel(spec, seed).bottom; };
  options.transmission = transmission;
  options.send_batch_size = f.send_batch_size;
  options.activation_noise = f.act_noise;
  std::printf("measuring %s, transmission %s:%g:%s, %lld test samples\n",
              cleave::DescribeSpec(spec).c_str(), cleave::MethodName(transmission.method),
              transmission.density, cleave::ToString(transmission.precision),
              static_cast<long long>(data.test.size()));
  const cleave::leakage::LeakageReport report =
      cleave::leakage::MeasureLeakage(model.bottom, split.auxiliary, data.test, options);
  PrintReport(report);
  if (!f.grid_path.empty()) {
    std::vector<at::Tensor> rows = {report.grid_originals, report.grid_reconstructions};
    for (const at::Tensor& more :
         {report.strong_attack.grid_reconstructions, report.mask_attack.grid_reconstructions}) {
      if (more.defined()) rows.push_back(more);
    }
    cleave::privacy::WritePngGrid(f.grid_path, rows, 2);
    std::printf("grid (originals above the decoder's, then the strong and mask-only decoders' "
                "reconstructions when run) written to %s\n",
                f.grid_path.c_str());
  }
  if (!f.json_path.empty()) WriteMeasureJson(f, spec, transmission, report);
  return 0;
}

// The sweep's options from the flags, checked; the output directory exists afterwards.
cleave::leakage::SweepOptions ResolveSweep(const SweepFlags& f) {
  cleave::leakage::SweepOptions options = f.options;
  options.method = cleave::ParseMethod(f.method);
  options.precision = cleave::ParseValuePrecision(f.precision);
  options.model = f.model.Spec();
  options.client_learning_rate = f.client_lr > 0 ? f.client_lr : options.server_learning_rate;
  CLEAVE_CHECK_USER(options.server_learning_rate > 0, "--lr must be > 0");
  cleave::leakage::CheckSweepOptions(options);
  std::error_code error;
  std::filesystem::create_directories(f.out_dir, error);
  CLEAVE_CHECK_USER(!error && std::filesystem::is_directory(f.out_dir), "cannot create --out '",
                    f.out_dir, "'", error ? ": " + error.message() : std::string());
  options.leakage = f.attack.Options(options.seed);
  options.leakage.surrogate = [spec = options.model](uint64_t seed) {
    return cleave::BuildSplitModel(spec, seed).bottom;
  };
  options.grid_dir = f.out_dir;
  return options;
}

// leakage.gp and, when gnuplot runs, leakage.png; then the table on stdout.
void WriteSweepPlot(const std::string& out_dir, const std::vector<cleave::leakage::SweepRow>& rows,
                    const std::string& csv_path, const std::string& md_path) {
  const std::string plot_path = out_dir + "/leakage.png", script_path = out_dir + "/leakage.gp";
  cleave::WriteFileAtomic(script_path, cleave::leakage::SweepGnuplotScript(rows, plot_path));
  std::string why_not;
  if (cleave::leakage::RunGnuplot(script_path, &why_not)) {
    std::printf("wrote %s (and .json), %s, %s\n", csv_path.c_str(), md_path.c_str(),
                plot_path.c_str());
  } else {
    std::printf("%s\nwrote %s (and .json), %s\n", why_not.c_str(), csv_path.c_str(),
                md_path.c_str());
  }
  std::printf("%s", cleave::leakage::SweepMarkdown(rows).c_str());
}

int Sweep(const SweepFlags& f) {
  const cleave::leakage::SweepOptions options = ResolveSweep(f);
  cleave::client::DataFlags data_flags = f.data;
  data_flags.train_limit = 0;  // the limit applies after the attacker's share is taken
  const cleave::client::TrainingData data =
      cleave::client::LoadTrainingData(data_flags, options.model.num_classes);
  const cleave::leakage::ClientAndAuxiliary split = cleave::leakage::SplitOffAuxiliary(
      data.train, f.attack.AttackerShare(), f.data.train_limit, options.seed);
  const std::string csv_path = f.out_dir + "/leakage.csv", md_path = f.out_dir + "/leakage.md",
                    json_path = f.out_dir + "/leakage.json";
  cleave::WriteFileAtomic(csv_path, cleave::leakage::SweepCsv({}));  // fail early
  std::printf(
      "sweep: %s, client trains on %lld samples, attacker holds %lld, %lld test\n",
      cleave::DescribeSpec(options.model).c_str(), static_cast<long long>(split.client.size()),
      static_cast<long long>(split.auxiliary.size()), static_cast<long long>(data.test.size()));
  std::fflush(stdout);
  cleave::client::ProgressReporter progress(cleave::client::ParseProgressMode(f.progress_mode));
  std::vector<cleave::leakage::SweepRow> done;
  const auto rows = cleave::leakage::RunSweep(
      split.client, split.auxiliary, data.test, options, &progress, stdout,
      [&](const cleave::leakage::SweepRow& row) {
        done.push_back(row);
        cleave::WriteFileAtomic(csv_path, cleave::leakage::SweepCsv(done));
        cleave::WriteFileAtomic(md_path, cleave::leakage::SweepMarkdown(done));
        cleave::WriteFileAtomic(json_path, cleave::leakage::SweepJson(done));
      });
  WriteSweepPlot(f.out_dir, rows, csv_path, md_path);
  return 0;
}

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-leakage");
  app.get_formatter()->column_width(36);
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "LibTorch intra-op threads (0: LibTorch's default)")
      ->capture_default_str();
  CLI::App* measure = app.add_subcommand(
      "measure", "Leakage of one trained client: dCor and a reconstruction attack");
  MeasureFlags measure_flags;
  measure_flags.Register(*measure);
  CLI::App* sweep = app.add_subcommand(
      "sweep",
      "Train locally per NoPeek alpha, noise sigma and density; measure accuracy and leakage");
  SweepFlags sweep_flags;
  sweep_flags.Register(*sweep);
  CLI::App* labels = app.add_subcommand(
      "labels", "Label leakage of vanilla, vertical and u-shaped split learning (attack AUC)");
  cleave::leakage::LabelsFlags labels_flags;
  labels_flags.Register(*labels);
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  CLEAVE_CHECK_USER(threads >= 0, "--threads must be >= 0");
  if (threads > 0) at::set_num_threads(threads);
  if (labels->parsed()) return cleave::leakage::RunLabels(labels_flags);
  return measure->parsed() ? Measure(measure_flags) : Sweep(sweep_flags);
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("cleave-leakage", [&] { return Run(argc, argv); });
}
