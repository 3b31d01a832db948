// Load benchmark: many hospitals against one cleave-server over mutual-TLS loopback gRPC, for a
// bounded time, in splitfed rounds. The server runs in a child process so that its memory is its
// own. Reports steps/s, p50/p99 step latency (client-side, one TrainStep round trip), the server's
// peak RSS, errors (target: none) and whether every accepted update was applied exactly once.
// With --merge-max-batch the server merges the steps of hospitals waiting at the same time
// (step_merger.h); it then also reports how many steps of its layers it took.
// It measures; it is not a test. Exit code 1 if an error occurred or an update was lost or doubled.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "cleave/client/grpc_link.h"
#include "cleave/client/round_participant.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/certificates.h"
#include "cleave/core/command_line.h"
#include "cleave/core/dataset.h"
#include "cleave/core/logging.h"
#include "cleave/protocol/status_error.h"
#include "cleave/server/grpc_server.h"
#include "cleave/server/split_server.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  int clients = 32;
  double seconds = 20;
  std::string model = "mlp";
  int64_t batch = 16;
  int64_t round_samples = 2048;
  int64_t merge_max_batch = 0;  // the server's --merge-max-batch (0: off)
  int64_t merge_wait_us = 0;
  std::string json_out;
};

cleave::ModelSpec Spec(const std::string& model) {
  cleave::ModelSpec spec;
  spec.architecture = model;
  if (model == "mlp") {
    spec.input_shape = {64};
    spec.hidden = {256, 128};
  }
  return spec;
}

// Loaded once, before the clock starts (the hospitals take slices).
const cleave::Dataset& FashionMnist() {
  static const cleave::Dataset all = cleave::LoadFashionMnist(
      cleave::kDefaultFashionMnistDir, cleave::FashionMnistSplit::kTrain);
  return all;
}

cleave::Dataset Data(const std::string& model, uint64_t seed) {
  if (model == "cnn") {
    const cleave::Dataset& all = FashionMnist();
    std::vector<int64_t> rows(2048);
    std::iota(rows.begin(), rows.end(), static_cast<int64_t>(seed % 28) * 2048);
    return all.Subset(rows);
  }
  at::manual_seed(seed);
  cleave::Dataset data;
  data.inputs = at::randn({2048, 64});
  data.labels = data.inputs.narrow(1, 0, 10).argmax(1);
  data.num_classes = 10;
  return data;
}

// The server process: serve until a byte arrives on `control`, then report its counters.
[[noreturn]] void ServeInChild(const Flags& flags, const cleave::TlsFiles& tls, int port_out,
                               int control, int report) {
  cleave::server::SplitServerOptions options;
  options.model = Spec(flags.model);
  options.max_batch = flags.batch;
  options.rounds.schedule = cleave::server::Schedule::kSplitFed;
  options.rounds.round_samples = flags.round_samples;
  options.rounds.round_deadline = std::chrono::milliseconds(5000);
  options.rounds.quorum = 1;
  options.compression.mutable_activations()->set_method("gaussiank");
  options.compression.mutable_activations()->set_density(0.1);
  options.compression.mutable_activations()->set_value_precision("fp16");
  options.compression.mutable_updates()->set_method("gaussiank+");
  options.compression.mutable_updates()->set_density(0.1);
  options.merge.max_batch = flags.merge_max_batch;
  options.merge.max_wait = std::chrono::microseconds(flags.merge_wait_us);
  cleave::server::SplitServer server(options);
  cleave::server::ListenOptions listen;
  listen.address = "127.0.0.1:0";
  listen.tls = tls;
  cleave::server::GrpcServer grpc_server(server, listen);
  const int port = grpc_server.port();
  if (::write(port_out, &port, sizeof(port)) != sizeof(port)) std::_Exit(3);
  char byte;
  if (::read(control, &byte, 1) != 1) std::_Exit(3);
  grpc_server.Shutdown(1000);
  const cleave::server::RoundState state = server.rounds()->Snapshot();
  const cleave::server::ServerCounters counters = server.counters();
  const int64_t numbers[7] = {state.updates_accepted,
                              state.updates_applied,
                              static_cast<int64_t>(state.pending.size()),
                              state.updates_duplicate,
                              server.step(),
                              counters.top_steps,
                              counters.merged_steps};
  if (::write(report, numbers, sizeof(numbers)) != sizeof(numbers)) std::_Exit(3);
  std::_Exit(0);
}

int64_t ProcessMemoryKb(pid_t pid, const std::string& key) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return -1;
}

// A SplitLink that times each training step.
class TimedLink final : public cleave::protocol::SplitLink {
 public:
  explicit TimedLink(const cleave::client::ConnectOptions& connect) : link_(connect) {}
  cleave::v1::JoinReply Join(const cleave::v1::JoinRequest& r) override { return link_.Join(r); }
  void OpenTrainStream() override { link_.OpenTrainStream(); }
  cleave::v1::TrainReply TrainStep(const cleave::v1::TrainRequest& request) override {
    const auto start = Clock::now();
    cleave::v1::TrainReply reply = link_.TrainStep(request);
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    return reply;
  }
  void CloseTrainStream() override { link_.CloseTrainStream(); }
  cleave::v1::EvaluateReply Evaluate(const cleave::v1::EvaluateRequest& r) override {
    return link_.Evaluate(r);
  }
  void Leave(const cleave::v1::LeaveRequest& r) override { link_.Leave(r); }
  cleave::v1::SyncReply Sync(const cleave::v1::SyncRequest& r) override { return link_.Sync(r); }
  cleave::v1::UpdateReply SubmitUpdate(const cleave::v1::UpdateRequest& r) override {
    return link_.SubmitUpdate(r);
  }
  std::vector<double> latencies_ms;

 private:
  cleave::client::GrpcLink link_;
};

struct HospitalResult {
  std::vector<double> latencies_ms;
  int64_t samples = 0;
  int64_t updates_acknowledged = 0;  // accepted by the server (not duplicates)
  int64_t errors = 0;
  std::string first_error;
};

HospitalResult RunHospital(const Flags& flags, const cleave::client::ConnectOptions& connect,
                           int index, Clock::time_point stop) {
  HospitalResult result;
  const cleave::Dataset data = Data(flags.model, 100 + index);
  TimedLink link(connect);
  cleave::client::TrainerOptions options;
  options.model = Spec(flags.model);
  options.batch_size = flags.batch;
  options.seed = 100 + index;
  cleave::client::SplitTrainer trainer(options, link);
  cleave::client::RoundParticipantOptions participant_options;
  participant_options.sync_wait_ms = 500;
  participant_options.seed = options.seed;
  participant_options.stop_at = stop;
  cleave::client::RoundParticipant participant(trainer, participant_options);
  try {
    const cleave::client::ParticipationStats stats =
        participant.Run(data, data.size(), nullptr);
    result.samples = stats.samples;
    result.updates_acknowledged = stats.updates_sent - stats.duplicates;
    // Too stale or not in the round (ABORTED) is the protocol working, not an error; every other
    // failure the participant recovered from (a lost connection, a refusal) is one.
    result.errors = stats.errors_recovered - stats.updates_refused;
    if (result.errors > 0) result.first_error = "recovered from failed calls (see the log)";
    trainer.Leave();
  } catch (const std::exception& error) {
    ++result.errors;
    result.first_error = error.what();
  }
  result.latencies_ms = std::move(link.latencies_ms);
  return result;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  return values[index];
}

int Run(int argc, char** argv) {
  CLI::App app(
      "bench_load: N hospitals train against one cleave-server (a child process) over mutual-TLS "
      "loopback gRPC in splitfed rounds for a bounded time; reports steps/s, p50/p99 step "
      "latency, the server's peak RSS, errors and whether every accepted update was applied "
      "exactly once.",
      "bench_load");
  Flags flags;
  app.add_option("--clients", flags.clients, "Hospitals (client threads)")->capture_default_str();
  app.add_option("--seconds", flags.seconds, "How long they train")->capture_default_str();
  app.add_option("--model", flags.model, "mlp (synthetic 64 features) or cnn (Fashion-MNIST)")
      ->check(CLI::IsMember({"mlp", "cnn"}))
      ->capture_default_str();
  app.add_option("--batch", flags.batch, "Batch size per step")->capture_default_str();
  app.add_option("--round-samples", flags.round_samples, "Samples (all hospitals) per round")
      ->capture_default_str();
  app.add_option("--merge-max-batch", flags.merge_max_batch,
                 "The server merges steps waiting at the same time, up to N samples (0: off)")
      ->capture_default_str();
  app.add_option("--merge-wait-us", flags.merge_wait_us,
                 "With --merge-max-batch: longest wait for company, microseconds")
      ->capture_default_str();
  app.add_option("--json", flags.json_out, "Also write the figures as JSON to this file");
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  CLEAVE_CHECK_USER(flags.clients >= 1 && flags.seconds > 0, "--clients and --seconds must be > 0");
  cleave::server::ValidateStepMergerOptions(
      {flags.merge_max_batch, std::chrono::microseconds(flags.merge_wait_us)});
  cleave::SetupLogging("warn");

  const cleave::PemPair ca = cleave::CreateCertificateAuthority("bench_load CA");
  const cleave::PemPair server_pair = cleave::IssueServerCertificate(ca, "cleave-server", {});
  const cleave::TlsFiles server_tls{ca.certificate_pem, server_pair.certificate_pem,
                                    server_pair.private_key_pem};
  std::vector<cleave::TlsFiles> client_tls;
  for (int i = 0; i < flags.clients; ++i) {
    const cleave::PemPair pair = cleave::IssueClientCertificate(ca, "hospital-" + std::to_string(i));
    client_tls.push_back({ca.certificate_pem, pair.certificate_pem, pair.private_key_pem});
  }

  int port_pipe[2], control_pipe[2], report_pipe[2];
  CLEAVE_ENFORCE(::pipe(port_pipe) == 0 && ::pipe(control_pipe) == 0 && ::pipe(report_pipe) == 0,
                 "pipe failed");
  const pid_t child = ::fork();
  CLEAVE_ENFORCE(child >= 0, "fork failed");
  if (child == 0) ServeInChild(flags, server_tls, port_pipe[1], control_pipe[0], report_pipe[1]);
  int port = 0;
  CLEAVE_ENFORCE(::read(port_pipe[0], &port, sizeof(port)) == sizeof(port), "server did not start");

  if (flags.model == "cnn") FashionMnist();
  std::printf("bench_load: %d hospitals, %s model, batch %lld, %.0f s, server pid %d port %d\n",
              flags.clients, flags.model.c_str(), static_cast<long long>(flags.batch),
              flags.seconds, static_cast<int>(child), port);
  std::fflush(stdout);
  const auto start = Clock::now();
  const auto stop = start + std::chrono::milliseconds(static_cast<int64_t>(flags.seconds * 1000));
  std::vector<HospitalResult> results(flags.clients);
  std::vector<std::thread> threads;
  std::atomic<int64_t> peak_rss_kb{0};
  std::atomic<bool> done{false};
  std::thread sampler([&] {  // the server's resident memory while under load
    while (!done) {
      peak_rss_kb = std::max<int64_t>(peak_rss_kb, ProcessMemoryKb(child, "VmRSS"));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  for (int i = 0; i < flags.clients; ++i) {
    threads.emplace_back([&, i] {
      cleave::client::ConnectOptions connect;
      connect.target = "localhost:" + std::to_string(port);
      connect.tls = client_tls[static_cast<size_t>(i)];
      connect.connect_timeout_seconds = 30;
      results[static_cast<size_t>(i)] = RunHospital(flags, connect, i, stop);
    });
  }
  for (auto& thread : threads) thread.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const int64_t server_peak_kb = ProcessMemoryKb(child, "VmHWM");
  done = true;
  sampler.join();
  const char byte = 1;
  CLEAVE_ENFORCE(::write(control_pipe[1], &byte, 1) == 1, "cannot stop the server");
  int64_t numbers[7] = {0, 0, 0, 0, 0, 0, 0};
  const bool reported = ::read(report_pipe[0], numbers, sizeof(numbers)) == sizeof(numbers);
  int child_status = 0;
  ::waitpid(child, &child_status, 0);

  std::vector<double> latencies;
  int64_t samples = 0, acknowledged = 0, errors = 0;
  std::string first_error;
  for (const HospitalResult& r : results) {
    latencies.insert(latencies.end(), r.latencies_ms.begin(), r.latencies_ms.end());
    samples += r.samples;
    acknowledged += r.updates_acknowledged;
    errors += r.errors;
    if (first_error.empty()) first_error = r.first_error;
  }
  const int64_t accepted = numbers[0], applied = numbers[1], pending = numbers[2];
  const bool exactly_once = reported && acknowledged == accepted && accepted == applied + pending;
  const double steps_per_second = static_cast<double>(latencies.size()) / elapsed;
  std::printf(
      "steps %zu (%.1f steps/s, %.0f samples/s), step latency p50 %.2f ms p99 %.2f ms, "
      "server RSS peak %.1f MB (sampled %.1f MB), errors %lld%s%s\n",
      latencies.size(), steps_per_second, samples / elapsed, Percentile(latencies, 0.5),
      Percentile(latencies, 0.99), server_peak_kb / 1024.0, peak_rss_kb / 1024.0,
      static_cast<long long>(errors), first_error.empty() ? "" : " (first: ",
      first_error.empty() ? "" : (first_error + ")").c_str());
  std::printf(
      "updates: %lld acknowledged to hospitals, %lld accepted by the server, %lld applied + %lld "
      "pending in the open round, %lld duplicates: %s\n",
      static_cast<long long>(acknowledged), static_cast<long long>(accepted),
      static_cast<long long>(applied), static_cast<long long>(pending),
      static_cast<long long>(numbers[3]),
      exactly_once ? "every accepted update applied exactly once" : "MISMATCH");
  std::printf("server: %lld hospital steps in %lld steps of its layers (%lld merged; merging %s)\n",
              static_cast<long long>(numbers[4]), static_cast<long long>(numbers[5]),
              static_cast<long long>(numbers[6]),
              flags.merge_max_batch > 0
                  ? ("up to " + std::to_string(flags.merge_max_batch) + " samples, wait " +
                     std::to_string(flags.merge_wait_us) + " us")
                        .c_str()
                  : "off");
  if (!flags.json_out.empty()) {
    const nlohmann::json json = {
        {"clients", flags.clients},       {"model", flags.model},
        {"batch", flags.batch},           {"seconds", elapsed},
        {"steps", latencies.size()},      {"steps_per_second", steps_per_second},
        {"samples_per_second", samples / elapsed},
        {"p50_step_ms", Percentile(latencies, 0.5)},
        {"p99_step_ms", Percentile(latencies, 0.99)},
        {"server_peak_rss_mb", server_peak_kb / 1024.0},
        {"errors", errors},               {"updates_acknowledged", acknowledged},
        {"updates_accepted", accepted},   {"updates_applied", applied},
        {"updates_pending", pending},     {"exactly_once", exactly_once},
        {"merge_max_batch", flags.merge_max_batch},
        {"merge_wait_us", flags.merge_wait_us},
        {"server_steps", numbers[4]},     {"server_top_steps", numbers[5]},
        {"server_merged_steps", numbers[6]},
    };
    std::ofstream(flags.json_out) << json.dump(2) << "\n";
  }
  return errors == 0 && exactly_once ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("bench_load", [&] { return Run(argc, argv); });
}
