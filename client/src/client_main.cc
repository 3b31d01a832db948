// cleave-client: a hospital's side of split learning over mutual-TLS gRPC.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cleave/client/feature_stats.h"
#include "cleave/client/failover_link.h"
#include "cleave/client/grpc_link.h"
#include "cleave/client/round_participant.h"
#include "cleave/client/split_trainer.h"
#include "cleave/client/training_data.h"
#include "cleave/client/vertical_features.h"
#include "cleave/core/certificates.h"
#include "cleave/core/checkpoint.h"
#include "cleave/core/command_line.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/logging.h"
#include "cleave/core/device.h"
#include "cleave/core/model_flags.h"
#include "cleave/core/script_half.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"

namespace {

constexpr const char* kDescription =
    R"(cleave-client: trains the bottom of a split model on local data with a cleave-server.

Raw data never leaves this process: only cut-layer activations (optionally sparsified, as the
server asks) and labels are sent; the server returns the gradient at the cut. The client proves
its identity with its certificate (CN = hospital name) and checks the server's against --ca.

Example:
  cleave-client --server localhost:50051 --ca pki/ca.crt --cert pki/clients/st-mary.crt \
                --key pki/clients/st-mary.key --dataset fashion-mnist --epochs 10 \
                --metrics-out runs/st-mary.json

Bring your own model: export it with tools/export/cleave_export.py and pass --bottom bottom.pt
(the server runs --top top.pt of the same export); --save-bottom writes the trained half back as
TorchScript. U-shaped (--config u-shaped): export with --tail-layers N and pass --tail tail.pt
too (the server runs the middle as --top top.pt); --save-tail writes the trained tail.

When the server runs rounds (cleave-server --schedule sequential or splitfed), the client follows
them: it trains each round from the current shared client-side weights, sends its weight delta
(compressed as the server asks), and stops when the server says training is over (--epochs is
then ignored). If the server goes away it reconnects with exponential backoff and jitter and
carries on; if its update is too stale it resynchronises.

Tabular data (--dataset csv): standardise every hospital's features with the same statistics.
Fit them once (no server needed; each hospital may fit its own and one pools them):
  cleave-client --csv st-mary.csv --fit-stats st-mary.stats.json
  cleave-client --pool-stats st-mary.stats.json riverside.stats.json --fit-stats shared.json
then train everywhere with --dataset csv --csv FILE --stats shared.json.

Vertical split learning (cleave-server --config vertical): several parties hold different
features of the same samples; each runs its own bottom on its part and sends only its cut
activations (the label holder also the labels) and gets back its slice of the gradient:
  cleave-client ... --config vertical --party 0 --image-part left
  cleave-client ... --config vertical --party 1 --image-part right
Every party must hold the same samples in the same order (--shared-ids: the ids a private set
intersection left; a row's id is its index); the batch order comes from the server.

Exit codes: 0 ok, 1 internal error, 2 bad flags or files, 3 refused or failed by the server.)";

// Every flag's destination, registered by concern in the order --help shows them.
struct Flags {
  std::string server = "localhost:50051";
  std::string ca_path = "pki/ca.crt", cert_path, key_path, server_name;
  bool insecure = false;
  cleave::ModelFlags model_flags;
  cleave::client::DataFlags data_flags;
  cleave::client::TrainerOptions options;
  int64_t epochs = 1;
  std::string device = "cpu";
  std::string metrics_out, checkpoint_path, save_bottom, save_tail, progress_mode = "auto", log_level = "info";
  double max_message_mb = 64;
  int connect_timeout = 30;
  cleave::client::FeaturePartFlags part;  // vertical
};

// A cosine learning-rate schedule without --lr-schedule-steps spans every step of --epochs over
// `train_samples`.
void SpanScheduleOverEpochs(Flags* f, int64_t train_samples) {
  if (f->options.schedule.kind == "cosine" && f->options.schedule.total_steps == 0) {
    int64_t per_epoch = (train_samples + f->options.batch_size - 1) / f->options.batch_size;
    if (f->options.max_steps_per_epoch > 0) {
      per_epoch = std::min(per_epoch, f->options.max_steps_per_epoch);
    }
    f->options.schedule.total_steps =
        std::max<int64_t>(1, f->epochs * per_epoch - f->options.schedule.warmup_steps);
  }
}

// Which server, and how this hospital proves who it is.
void AddConnectionFlags(CLI::App& app, Flags* f) {
  app.add_option("--server", f->server,
                 "Server address host:port, or a comma-separated list of replicas of one server "
                 "(cleave-server --replicas): when the one in use is unavailable the hospital "
                 "joins the next and goes on")
      ->capture_default_str();
  app.add_option("--ca", f->ca_path, "CA certificate that signed the server's certificate (PEM)")
      ->capture_default_str();
  app.add_option("--cert", f->cert_path, "This hospital's client certificate (PEM)");
  app.add_option("--key", f->key_path, "This hospital's private key (PEM)");
  app.add_option(
      "--server-name", f->server_name,
      "Name to check in the server certificate when it differs from the host in --server");
  app.add_flag("--insecure", f->insecure,
               "Plaintext without certificates. For debugging only: anyone on the path reads "
               "activations and labels");
}

// The model, the data and how the client-side layers train.
void AddTrainingFlags(CLI::App& app, Flags* f) {
  cleave::client::TrainerOptions& options = f->options;
  f->model_flags.Register(app);
  f->model_flags.RegisterScript(app, /*top=*/false);
  f->model_flags.RegisterSplitConfig(app);
  f->data_flags.Register(app);
  app.add_option("--epochs", f->epochs, "Training epochs")->capture_default_str();
  app.add_option("--batch-size", options.batch_size, "Mini-batch size")->capture_default_str();
  app.add_option("--max-steps-per-epoch", options.max_steps_per_epoch,
                 "Stop each epoch after N steps (0: whole epoch)")
      ->capture_default_str();
  app.add_option("--optimizer", options.optimizer,
                 "Client-side optimizer: adam, adamw (decoupled weight decay) or sgd (momentum 0.9)")
      ->check(CLI::IsMember({"adam", "adamw", "sgd"}))
      ->capture_default_str();
  app.add_option("--lr", options.learning_rate, "Learning rate of the client-side layers")
      ->capture_default_str();
  cleave::AddOptimizerTuningFlags(app, "client-side", &options.weight_decay, &options.schedule);
  app.add_option("--device", f->device, cleave::kDeviceFlagHelp)->capture_default_str();
  app.add_option("--augment-crop", options.augmentation.crop_padding,
                 "Images: shift each training sample by up to N pixels (random crop after zero "
                 "padding by N; 0: off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--augment-flip", options.augmentation.horizontal_flip,
               "Images: mirror each training sample left-right with probability 1/2");
  app.add_option("--seed", options.seed, "Seed of weights, shuffling and sampling")
      ->capture_default_str();
  app.add_option("--nopeek-alpha", options.nopeek_alpha,
                 "NoPeek weight: adds alpha * dCor(inputs, sent activations) to the client loss "
                 "(0 = vanilla split learning)")
      ->capture_default_str();
  app.add_option("--act-noise", options.activation_noise,
                 "Noise defence: adds Gaussian noise of this standard deviation to every "
                 "activation sent, in training and evaluation (0 = off; combines with NoPeek)")
      ->check(CLI::Range(0.0, 1e6))
      ->capture_default_str();
}

// In the vertical configuration, this party's index and share of the features (--config itself
// is ModelFlags::RegisterSplitConfig).
void AddConfigFlags(CLI::App& app, Flags* f) {
  app.add_option("--party", f->options.party,
                 "Vertical: this party's index (0..parties-1); the server's --label-holder "
                 "sends the labels")
      ->capture_default_str();
  f->part.Register(app);
}

// What the run writes (metrics, checkpoints, progress, logs) and the link's limits.
void AddOutputFlags(CLI::App& app, Flags* f) {
  app.add_option("--metrics-out", f->metrics_out, "Write final figures as JSON to this file");
  app.add_option("--checkpoint", f->checkpoint_path,
                 "Write the client-side model here after every epoch (atomically)");
  app.add_option("--save-bottom", f->save_bottom,
                 "With --bottom: write the trained half as TorchScript (with its metadata) here "
                 "after every epoch and at the end (atomically)")
      ->needs("--bottom");
  app.add_option("--save-tail", f->save_tail,
                 "With --tail (u-shaped): write the trained tail as TorchScript (with its "
                 "metadata) here after every epoch and at the end (atomically)")
      ->needs("--tail");
  app.add_option("--progress", f->progress_mode, "auto (bar on a terminal), bar, lines or none")
      ->capture_default_str();
  app.add_option("--max-message-mb", f->max_message_mb,
                 "Largest gRPC message sent or accepted, MiB")
      ->capture_default_str();
  app.add_option("--connect-timeout", f->connect_timeout, "Seconds to wait for the server at Join")
      ->capture_default_str();
  app.add_option("--log-level", f->log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
}

// The link's options from the flags: address, limits and (unless --insecure) the TLS files,
// loaded and checked now.
cleave::client::ConnectOptions ResolveConnection(const Flags& f) {
  cleave::client::ConnectOptions connect;
  connect.target = f.server;
  connect.insecure = f.insecure;
  connect.server_name_override = f.server_name;
  connect.max_message_bytes = static_cast<int64_t>(f.max_message_mb * 1024 * 1024);
  connect.connect_timeout_seconds = f.connect_timeout;
  if (f.insecure) {
    spdlog::warn(
        "--insecure: plaintext, the server is not authenticated and anyone on the path "
        "can read what is sent. Use only for local debugging.");
  } else {
    CLEAVE_CHECK_USER(!f.cert_path.empty() && !f.key_path.empty(),
                      "--cert and --key are required (or --insecure for debugging)");
    connect.tls = cleave::LoadTlsFiles(f.ca_path, f.cert_path, f.key_path);
  }
  return connect;
}

// One server: its gRPC link; several (replicas): a FailoverLink over their gRPC links.
std::unique_ptr<cleave::protocol::SplitLink> MakeLink(const cleave::client::ConnectOptions& connect) {
  std::vector<std::string> targets = cleave::client::ParseServerList(connect.target);
  if (targets.size() == 1) return std::make_unique<cleave::client::GrpcLink>(connect);
  return std::make_unique<cleave::client::FailoverLink>(
      std::move(targets), [connect](const std::string& target) {
        cleave::client::ConnectOptions one = connect;
        one.target = target;
        return std::make_unique<cleave::client::GrpcLink>(one);
      });
}

// The checkpoint (weights and optimizer state) and, with --save-bottom / --save-tail, the
// TorchScript parts.
void SaveClientCheckpoint(cleave::client::SplitTrainer& trainer, const Flags& f,
                          const std::string& counter, int64_t value) {
  if (!f.save_bottom.empty()) {
    cleave::SaveScriptHalf(*cleave::FindScriptHalf(*trainer.model().bottom), f.save_bottom);
  }
  if (!f.save_tail.empty()) {
    cleave::SaveScriptHalf(*cleave::FindScriptHalf(*trainer.model().tail), f.save_tail);
  }
  if (f.checkpoint_path.empty()) return;
  cleave::CheckpointMeta meta;
  meta.fingerprint = trainer.fingerprint();
  meta.counters[counter] = value;
  cleave::SaveCheckpoint(f.checkpoint_path, *trainer.model().bottom, &trainer.optimizer(), meta);
}

// What training did, whichever way it ran.
struct Training {
  bool rounds = false;
  cleave::client::EpochStats last;  // the last epoch or round
  double seconds = 0;
  int64_t samples = 0;
  cleave::client::ParticipationStats participation;  // rounds only
};

// The server runs rounds: follow them until it says training is over (--epochs is ignored).
Training TrainRounds(cleave::client::SplitTrainer& trainer, const cleave::Dataset& train,
                     const cleave::v1::JoinReply& joined, const Flags& f,
                     cleave::client::ProgressReporter* reporter) {
  spdlog::info("server runs the {} schedule ({} rounds); following its rounds",
               joined.server().schedule(), joined.server().rounds());
  cleave::client::RoundParticipantOptions round_options;
  round_options.seed = f.options.seed;
  cleave::client::RoundParticipant participant(trainer, round_options);
  Training training;
  training.rounds = true;
  training.participation = participant.Run(train, train.size(), reporter);
  const cleave::client::ParticipationStats& p = training.participation;
  training.last = p.last_round;
  training.seconds = p.seconds;
  training.samples = p.samples;
  spdlog::info(
      "training over after round {} (client model version {}): trained {} round(s), "
      "sent {} update(s), {} refused as stale, {} reconnect(s)",
      p.final_round, p.final_version, p.rounds_trained, p.updates_sent, p.updates_refused,
      p.reconnects);
  SaveClientCheckpoint(trainer, f, "version", p.final_version);
  return training;
}

// No rounds: --epochs over the local training data, checkpointing after each.
Training TrainEpochs(cleave::client::SplitTrainer& trainer, const cleave::Dataset& train,
                     const Flags& f, cleave::client::ProgressReporter* reporter) {
  Training training;
  for (int64_t epoch = 0; epoch < f.epochs; ++epoch) {
    training.last = trainer.TrainEpoch(train, epoch, f.epochs, reporter);
    training.seconds += training.last.seconds;
    training.samples += training.last.samples;
    if (f.options.nopeek_alpha > 0) {
      spdlog::info("epoch {} mean dCor {:.4f}", epoch + 1, training.last.dcor);
    }
    SaveClientCheckpoint(trainer, f, "epoch", epoch + 1);
  }
  return training;
}

// What the test set says after training, from one evaluation pass.
struct Results {
  cleave::client::LinkCounters training_counters;  // before evaluation
  cleave::client::EvalStats test;
  // Test accuracy as this hospital's own patients would see it: per-class test accuracy weighted
  // by the label mix of its training shard (non-IID shards differ from the balanced test set).
  double local_accuracy = 0;  // rounds only
};

Results EvaluateAndLeave(cleave::client::SplitTrainer& trainer,
                         const cleave::client::TrainingData& data, const Training& training) {
  Results results;
  results.training_counters = trainer.counters();
  results.test = trainer.Evaluate(data.test);
  if (training.rounds) {
    results.local_accuracy =
        cleave::client::AccuracyWeightedByLabelMix(results.test, data.train.labels);
  }
  trainer.Leave();
  return results;
}

// U-shaped: what crossed the wire in each of the four directions (nothing otherwise).
void PrintUShapedBytes(const cleave::client::UShapedBytes& bytes) {
  if (bytes.activations_up.messages == 0) return;
  const auto shown = [](const cleave::client::DirectionBytes& direction) {
    return cleave::client::HumanBytes(direction.messages) + " (dense fp32 " +
           cleave::client::HumanBytes(direction.dense_fp32) + ")";
  };
  std::printf(
      "u-shaped: activations up %s, middle output down %s, middle gradient up %s, cut gradient "
      "down %s\n",
      shown(bytes.activations_up).c_str(), shown(bytes.middle_output_down).c_str(),
      shown(bytes.middle_gradient_up).c_str(), shown(bytes.gradient_down).c_str());
}

nlohmann::json UShapedJson(const cleave::client::UShapedBytes& bytes) {
  const auto direction = [](const cleave::client::DirectionBytes& d) {
    return nlohmann::json{{"bytes", d.messages}, {"dense_fp32_bytes", d.dense_fp32}};
  };
  return {{"activations_up", direction(bytes.activations_up)},
          {"middle_output_down", direction(bytes.middle_output_down)},
          {"middle_gradient_up", direction(bytes.middle_gradient_up)},
          {"gradient_down", direction(bytes.gradient_down)}};
}

void PrintResults(const cleave::client::SplitTrainer& trainer, const Training& training,
                  const Results& results) {
  const cleave::client::EvalStats& test = results.test;
  const auto& counters = trainer.counters();
  if (!trainer.vertical().holds_labels) {
    std::printf("test accuracy: known to the label holder only (%lld test samples sent)\n",
                static_cast<long long>(test.samples));
  } else {
    std::printf("test accuracy %.2f%%  test loss %.4f  (%lld test samples)\n",
                100 * test.accuracy, test.loss, static_cast<long long>(test.samples));
  }
  if (training.rounds) {
    std::printf(
        "test accuracy weighted by this hospital's label mix %.2f%%; client model version "
        "%lld after %lld round(s) trained here\n",
        100 * results.local_accuracy, static_cast<long long>(training.participation.final_version),
        static_cast<long long>(training.participation.rounds_trained));
  }
  std::printf(
      "test dCor(inputs, sent activations) %.4f, bias-corrected dCor^2 %.4f (batches of %lld; "
      "1 = activations reveal the inputs up to a similarity transform, 0 = independent)\n",
      test.dcor, test.dcor_bias_corrected, static_cast<long long>(test.dcor_batch_size));
  const double seconds = training.seconds;
  const int64_t samples = training.samples;
  std::printf("trained %lld samples in %.1f s (%.0f samples/s), sent %s, received %s\n",
              static_cast<long long>(samples), seconds, seconds > 0 ? samples / seconds : 0,
              cleave::client::HumanBytes(counters.bytes_sent).c_str(),
              cleave::client::HumanBytes(counters.bytes_received).c_str());
  PrintUShapedBytes(counters.u_shaped);
}

nlohmann::json MetricsJson(const cleave::client::SplitTrainer& trainer,
                           const cleave::v1::JoinReply& joined, const Flags& f,
                           const Training& training, const Results& results) {
  const auto& counters = trainer.counters();
  const auto& train_counters = results.training_counters;
  const cleave::client::EvalStats& test = results.test;
  const cleave::client::ParticipationStats& participation = training.participation;
  const double seconds = training.seconds;
  const int64_t samples = training.samples;
  const double density = counters.elements_total > 0
                             ? static_cast<double>(counters.elements_sent) / counters.elements_total
                             : 1.0;
  return {
      {"client_name", joined.client_name()},
      {"model", joined.server().model_description()},
      {"fingerprint", trainer.fingerprint()},
      {"test_accuracy", test.accuracy},
      {"test_loss", test.loss},
      {"test_samples", test.samples},
      {"train_loss_last_epoch", training.last.loss},
      {"train_accuracy_last_epoch", training.last.accuracy},
      {"epochs", f.epochs},
      {"samples", samples},
      {"seconds", seconds},
      {"samples_per_second", seconds > 0 ? samples / seconds : 0},
      {"bytes_sent", counters.bytes_sent},
      {"bytes_received", counters.bytes_received},
      {"train_bytes_sent", train_counters.bytes_sent},
      {"train_bytes_received", train_counters.bytes_received},
      {"train_bytes_per_sample", samples > 0 ? static_cast<double>(train_counters.bytes_sent +
                                                                   train_counters.bytes_received) /
                                                   samples
                                             : 0.0},
      {"activation_density", density},
      {"compression_ratio",
       counters.bytes_sent > 0
           ? static_cast<double>(counters.dense_fp32_bytes) / counters.bytes_sent
           : 0.0},
      {"schedule", joined.server().schedule()},
      {"rounds_trained", participation.rounds_trained},
      {"final_model_version", participation.final_version},
      {"updates_sent", participation.updates_sent},
      {"updates_refused", participation.updates_refused},
      {"reconnects", participation.reconnects},
      {"local_test_accuracy", results.local_accuracy},
      {"update_bytes", counters.update_bytes},
      {"update_dense_fp32_bytes", counters.update_dense_bytes},
      {"nopeek_alpha", f.options.nopeek_alpha},
      {"act_noise", f.options.activation_noise},
      {"config", f.model_flags.config},
      {"party", f.options.party},
      {"holds_labels", trainer.vertical().holds_labels},
      {"train_dcor_last_epoch", training.last.dcor},
      {"test_dcor", test.dcor},
      {"test_dcor_bias_corrected", test.dcor_bias_corrected},
      {"test_dcor_batch_size", test.dcor_batch_size},
      {"config", joined.server().config().empty() ? "vanilla" : joined.server().config()},
      {"u_shaped_bytes", UShapedJson(counters.u_shaped)},
  };
}

// The model must take the data's samples as they are: a mismatch would otherwise surface as a
// LibTorch shape error deep in the first forward pass.
void CheckDataFitsModel(const cleave::client::TrainingData& data, const cleave::ModelSpec& model) {
  const auto sample = data.train.inputs.sizes().slice(1);
  const std::vector<int64_t> shape(sample.begin(), sample.end());
  const std::string expected = model.architecture == "torchscript"
                                   ? "'" + model.bottom_script + "' takes "
                                   : std::string("--input-shape is ");
  CLEAVE_CHECK_USER(shape == model.input_shape, "the data's samples have shape ",
                    cleave::protocol::ShapeToString(shape), " but ", expected,
                    cleave::protocol::ShapeToString(model.input_shape));
}

// --fit-stats: the feature statistics every hospital shares, written to a file; no server.
int FitStats(const Flags& f) {
  const cleave::client::FeatureStats stats =
      cleave::client::FitSharedStats(f.data_flags, f.options.model.num_classes);
  cleave::client::SaveFeatureStats(f.data_flags.fit_stats_path, stats);
  std::printf("wrote the mean and std of %zu feature column(s) over %lld row(s) to %s\n",
              stats.columns.size(), static_cast<long long>(stats.rows),
              f.data_flags.fit_stats_path.c_str());
  return 0;
}

// Per-file standardisation differs between hospitals with different files: say so once rounds
// (several hospitals, one model) are on.
void WarnIfStandardizedPerFile(const Flags& f, const cleave::v1::JoinReply& joined) {
  if (f.data_flags.dataset != "csv" || joined.server().schedule() == "single") return;
  if (cleave::client::ParseStandardization(f.data_flags.standardize, f.data_flags.stats_path) !=
      cleave::client::Standardization::kFile) {
    return;
  }
  spdlog::warn(
      "features are standardised with this file's own statistics: hospitals with other files "
      "feed the shared model other numbers; share statistics with --fit-stats and --stats");
}

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-client");
  app.get_formatter()->column_width(36);
  Flags f;
  AddConnectionFlags(app, &f);
  AddTrainingFlags(app, &f);
  AddOutputFlags(app, &f);
  AddConfigFlags(app, &f);
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  cleave::SetupLogging(f.log_level);
  const auto progress = cleave::client::ParseProgressMode(f.progress_mode);
  f.options.model = f.model_flags.Spec();
  f.options.config = f.model_flags.Config();
  if (!f.data_flags.fit_stats_path.empty()) return FitStats(f);
  f.options.device = cleave::ResolveDevice(f.device);
  const cleave::client::ConnectOptions connect = ResolveConnection(f);
  CLEAVE_CHECK_USER(f.options.config == cleave::SplitConfig::kVertical || f.part.empty(),
                    "--image-part, --columns and --shared-ids need --config vertical");
  cleave::client::TrainingData data =
      cleave::client::LoadTrainingData(f.data_flags, f.options.model.num_classes);
  data.train = cleave::client::ApplyFeaturePart(data.train, f.part, /*align=*/true);
  data.test = cleave::client::ApplyFeaturePart(data.test, f.part, /*align=*/false);
  CheckDataFitsModel(data, f.options.model);
  cleave::client::CheckAugmentationFits(
      f.options.augmentation, {data.train.inputs.sizes().begin() + 1, data.train.inputs.sizes().end()});
  if (!f.metrics_out.empty()) {
    // Fail on an unwritable metrics path now, not after hours of training.
    cleave::WriteFileAtomic(f.metrics_out, "{}\n");
  }

  const bool schedule_steps_given = f.options.schedule.total_steps > 0;
  SpanScheduleOverEpochs(&f, data.train.size());
  const std::unique_ptr<cleave::protocol::SplitLink> link = MakeLink(connect);
  cleave::client::SplitTrainer trainer(f.options, *link);
  const cleave::v1::JoinReply joined = trainer.Join(data.train.size());
  CLEAVE_CHECK_USER(joined.server().schedule() == "single" || f.options.schedule.kind != "cosine" ||
                        schedule_steps_given,
                    "the server runs rounds: --lr-schedule cosine needs --lr-schedule-steps");
  spdlog::info("joined as '{}' (session {}), model {}, compression act={}:{}:{}",
               joined.client_name(), joined.session_id().substr(0, 8),
               joined.server().model_description(), joined.compression().activations().method(),
               joined.compression().activations().density(),
               joined.compression().activations().value_precision());
  WarnIfStandardizedPerFile(f, joined);

  cleave::client::ProgressReporter reporter(progress);
  const Training training = joined.server().schedule() != "single"
                                ? TrainRounds(trainer, data.train, joined, f, &reporter)
                                : TrainEpochs(trainer, data.train, f, &reporter);
  const Results results = EvaluateAndLeave(trainer, data, training);
  PrintResults(trainer, training, results);
  if (!f.metrics_out.empty()) {
    cleave::WriteFileAtomic(f.metrics_out,
                            MetricsJson(trainer, joined, f, training, results).dump(2) + "\n");
    spdlog::info("metrics written to '{}'", f.metrics_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("cleave-client", [&] {
    try {
      return Run(argc, argv);
    } catch (const cleave::protocol::StatusError& e) {
      // Refused or failed by the server (or unreachable): its own exit code.
      std::fprintf(stderr, "cleave-client: error: %s\n", e.what());
      return 3;
    }
  });
}
