// cleave-client: a hospital's side of split learning over mutual-TLS gRPC.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cleave/client/grpc_link.h"
#include "cleave/client/split_trainer.h"
#include "cleave/client/training_data.h"
#include "cleave/core/certificates.h"
#include "cleave/core/checkpoint.h"
#include "cleave/core/command_line.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/logging.h"
#include "cleave/core/model_flags.h"
#include "cleave/protocol/status_error.h"

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

Exit codes: 0 ok, 1 internal error, 2 bad flags or files, 3 refused or failed by the server.)";

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-client");
  app.get_formatter()->column_width(36);
  std::string server = "localhost:50051";
  std::string ca_path = "pki/ca.crt", cert_path, key_path, server_name;
  bool insecure = false;
  cleave::ModelFlags model_flags;
  cleave::client::TrainerOptions options;
  cleave::client::DataFlags data_flags;
  int64_t epochs = 1;
  std::string metrics_out, checkpoint_path, progress_mode = "auto", log_level = "info";
  double max_message_mb = 64;
  int connect_timeout = 30;

  app.add_option("--server", server, "Server address host:port")->capture_default_str();
  app.add_option("--ca", ca_path, "CA certificate that signed the server's certificate (PEM)")
      ->capture_default_str();
  app.add_option("--cert", cert_path, "This hospital's client certificate (PEM)");
  app.add_option("--key", key_path, "This hospital's private key (PEM)");
  app.add_option(
      "--server-name", server_name,
      "Name to check in the server certificate when it differs from the host in --server");
  app.add_flag("--insecure", insecure,
               "Plaintext without certificates. For debugging only: anyone on the path reads "
               "activations and labels");
  model_flags.Register(app);
  data_flags.Register(app);
  app.add_option("--epochs", epochs, "Training epochs")->capture_default_str();
  app.add_option("--batch-size", options.batch_size, "Mini-batch size")->capture_default_str();
  app.add_option("--max-steps-per-epoch", options.max_steps_per_epoch,
                 "Stop each epoch after N steps (0: whole epoch)")
      ->capture_default_str();
  app.add_option("--optimizer", options.optimizer, "Client-side optimizer: adam or sgd")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  app.add_option("--lr", options.learning_rate, "Learning rate of the client-side layers")
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Seed of weights, shuffling and sampling")
      ->capture_default_str();
  app.add_option("--nopeek-alpha", options.nopeek_alpha,
                 "NoPeek weight: adds alpha * dCor(inputs, sent activations) to the client loss "
                 "(0 = vanilla split learning)")
      ->capture_default_str();
  app.add_option("--metrics-out", metrics_out, "Write final figures as JSON to this file");
  app.add_option("--checkpoint", checkpoint_path,
                 "Write the client-side model here after every epoch (atomically)");
  app.add_option("--progress", progress_mode, "auto (bar on a terminal), bar, lines or none")
      ->capture_default_str();
  app.add_option("--max-message-mb", max_message_mb, "Largest gRPC message sent or accepted, MiB")
      ->capture_default_str();
  app.add_option("--connect-timeout", connect_timeout, "Seconds to wait for the server at Join")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  cleave::SetupLogging(log_level);
  const auto progress = cleave::client::ParseProgressMode(progress_mode);
  options.model = model_flags.Spec();

  cleave::client::ConnectOptions connect;
  connect.target = server;
  connect.insecure = insecure;
  connect.server_name_override = server_name;
  connect.max_message_bytes = static_cast<int64_t>(max_message_mb * 1024 * 1024);
  connect.connect_timeout_seconds = connect_timeout;
  if (insecure) {
    spdlog::warn(
        "--insecure: plaintext, the server is not authenticated and anyone on the path "
        "can read what is sent. Use only for local debugging.");
  } else {
    CLEAVE_CHECK_USER(!cert_path.empty() && !key_path.empty(),
                      "--cert and --key are required (or --insecure for debugging)");
    connect.tls = cleave::LoadTlsFiles(ca_path, cert_path, key_path);
  }
  const cleave::client::TrainingData data = cleave::client::LoadTrainingData(data_flags);
  if (!metrics_out.empty()) {
    // Fail on an unwritable metrics path now, not after hours of training.
    cleave::WriteFileAtomic(metrics_out, "{}\n");
  }

  cleave::client::GrpcLink link(connect);
  cleave::client::SplitTrainer trainer(options, link);
  const cleave::v1::JoinReply joined = trainer.Join(data.train.size());
  spdlog::info("joined as '{}' (session {}), model {}, compression act={}:{}:{}",
               joined.client_name(), joined.session_id().substr(0, 8),
               joined.server().model_description(), joined.compression().activations().method(),
               joined.compression().activations().density(),
               joined.compression().activations().value_precision());

  cleave::client::ProgressReporter reporter(progress);
  cleave::client::EpochStats last;
  double seconds = 0;
  int64_t samples = 0;
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    last = trainer.TrainEpoch(data.train, epoch, epochs, &reporter);
    seconds += last.seconds;
    samples += last.samples;
    if (options.nopeek_alpha > 0) spdlog::info("epoch {} mean dCor {:.4f}", epoch + 1, last.dcor);
    if (!checkpoint_path.empty()) {
      cleave::CheckpointMeta meta;
      meta.fingerprint = trainer.fingerprint();
      meta.counters["epoch"] = epoch + 1;
      cleave::SaveCheckpoint(checkpoint_path, *trainer.model().bottom, &trainer.optimizer(), meta);
    }
  }
  const cleave::client::LinkCounters training = trainer.counters();  // before evaluation
  const cleave::client::EvalStats test = trainer.Evaluate(data.test);
  trainer.Leave();

  const auto& counters = trainer.counters();
  const double density = counters.elements_total > 0
                             ? static_cast<double>(counters.elements_sent) / counters.elements_total
                             : 1.0;
  std::printf("test accuracy %.2f%%  test loss %.4f  (%lld test samples)\n", 100 * test.accuracy,
              test.loss, static_cast<long long>(test.samples));
  std::printf(
      "test dCor(inputs, sent activations) %.4f, bias-corrected dCor^2 %.4f (batches of %lld; "
      "1 = activations reveal the inputs up to a similarity transform, 0 = independent)\n",
      test.dcor, test.dcor_bias_corrected, static_cast<long long>(test.dcor_batch_size));
  std::printf("trained %lld samples in %.1f s (%.0f samples/s), sent %s, received %s\n",
              static_cast<long long>(samples), seconds, seconds > 0 ? samples / seconds : 0,
              cleave::client::HumanBytes(counters.bytes_sent).c_str(),
              cleave::client::HumanBytes(counters.bytes_received).c_str());
  if (!metrics_out.empty()) {
    nlohmann::json metrics = {
        {"client_name", joined.client_name()},
        {"model", joined.server().model_description()},
        {"fingerprint", trainer.fingerprint()},
        {"test_accuracy", test.accuracy},
        {"test_loss", test.loss},
        {"test_samples", test.samples},
        {"train_loss_last_epoch", last.loss},
        {"train_accuracy_last_epoch", last.accuracy},
        {"epochs", epochs},
        {"samples", samples},
        {"seconds", seconds},
        {"samples_per_second", seconds > 0 ? samples / seconds : 0},
        {"bytes_sent", counters.bytes_sent},
        {"bytes_received", counters.bytes_received},
        {"train_bytes_sent", training.bytes_sent},
        {"train_bytes_received", training.bytes_received},
        {"train_bytes_per_sample",
         samples > 0 ? static_cast<double>(training.bytes_sent + training.bytes_received) / samples
                     : 0.0},
        {"activation_density", density},
        {"compression_ratio",
         counters.bytes_sent > 0
             ? static_cast<double>(counters.dense_fp32_bytes) / counters.bytes_sent
             : 0.0},
        {"nopeek_alpha", options.nopeek_alpha},
        {"train_dcor_last_epoch", last.dcor},
        {"test_dcor", test.dcor},
        {"test_dcor_bias_corrected", test.dcor_bias_corrected},
        {"test_dcor_batch_size", test.dcor_batch_size},
    };
    cleave::WriteFileAtomic(metrics_out, metrics.dump(2) + "\n");
    spdlog::info("metrics written to '{}'", metrics_out);
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
