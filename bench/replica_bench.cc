// Replicas of the server, in one process, without gRPC: W SplitServers (W = 1: a plain server;
// W = 2: two replicas on c10d ProcessGroupGloo over loopback) and H hospital threads, hospital
// h on replica h % W, each sending Train steps of one batch back to back for a bounded time.
// With --merge-max-batch, steps waiting on a server (or replica) merge into one step of the top.
// Reports samples/s, p50/p99 Train latency and the server's step count; with --allreduce also
// the cost of one gradient allreduce of the top's size (median of N) between two replicas, and
// of one forward/backward/step of the top at --batch: the model in docs/PERFORMANCE.md.
// It measures; it is not a test.
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "cleave/core/command_line.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/replica_group.h"
#include "cleave/server/split_server.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string model = "mlp";
  int replicas = 1;
  int hospitals = 8;
  double seconds = 10;
  int64_t batch = 16;
  int64_t idle_us = 2000;
  int allreduce_iterations = 0;
  int64_t merge_max_batch = 0;
  int64_t merge_wait_us = 0;
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

// Rank 0 hands its store's port to the others.
struct Rendezvous {
  std::promise<uint16_t> port;
  std::shared_future<uint16_t> known{port.get_future().share()};
  cleave::server::ReplicaGroupOptions For(int replicas, int rank) {
    cleave::server::ReplicaGroupOptions options;
    options.replicas = replicas;
    options.rank = rank;
    if (rank == 0) {
      options.on_store_listening = [this](uint16_t listening) { port.set_value(listening); };
    } else {
      options.rendezvous_port = known.get();
    }
    return options;
  }
};

std::vector<std::unique_ptr<cleave::server::SplitServer>> StartServers(const Flags& flags) {
  Rendezvous rendezvous;
  std::vector<std::future<std::unique_ptr<cleave::server::SplitServer>>> starting;
  for (int rank = 0; rank < flags.replicas; ++rank) {
    starting.push_back(std::async(std::launch::async, [&, rank] {
      cleave::server::SplitServerOptions options;
      options.model = Spec(flags.model);
      options.max_batch = flags.batch;
      options.max_sessions_per_identity = flags.hospitals;
      if (flags.replicas > 1) options.replicas = rendezvous.For(flags.replicas, rank);
      options.replica_idle_tick = std::chrono::microseconds(flags.idle_us);
      options.merge.max_batch = flags.merge_max_batch;
      options.merge.max_wait = std::chrono::microseconds(flags.merge_wait_us);
      return std::make_unique<cleave::server::SplitServer>(options);
    }));
  }
  std::vector<std::unique_ptr<cleave::server::SplitServer>> servers;
  for (auto& server : starting) servers.push_back(server.get());
  return servers;
}

// One hospital: back-to-back steps until `end`; appends its latencies (seconds).
void Hospital(cleave::server::SplitServer& server, const Flags& flags, int index,
              Clock::time_point end, std::vector<double>* latencies, std::mutex* mutex) {
  cleave::v1::JoinRequest join;
  join.set_protocol_version(cleave::protocol::kProtocolVersion);
  join.set_model_fingerprint(server.fingerprint());
  const std::string session = server.Join("hospital", join).session_id();
  const cleave::SplitModel model = cleave::BuildSplitModel(Spec(flags.model), index);
  std::vector<int64_t> shape{flags.batch};
  shape.insert(shape.end(), model.cut_shape.begin(), model.cut_shape.end());
  cleave::v1::TrainRequest request;
  request.set_protocol_version(cleave::protocol::kProtocolVersion);
  request.set_session_id(session);
  cleave::protocol::EncodeDense(at::rand(shape), request.mutable_activations());
  cleave::protocol::EncodeDense(at::randint(0, 10, {flags.batch}, at::kLong),
                                request.mutable_labels());
  std::vector<double> mine;
  while (Clock::now() < end) {
    const auto start = Clock::now();
    server.Train("hospital", request);
    mine.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::lock_guard<std::mutex> lock(*mutex);
  latencies->insert(latencies->end(), mine.begin(), mine.end());
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(q * static_cast<double>(values.size() - 1))];
}

void RunLoad(const Flags& flags) {
  auto servers = StartServers(flags);
  std::vector<double> latencies;
  std::mutex mutex;
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(flags.seconds));
  std::vector<std::thread> hospitals;
  for (int h = 0; h < flags.hospitals; ++h) {
    hospitals.emplace_back(Hospital, std::ref(*servers[h % flags.replicas]), std::cref(flags), h,
                           end, &latencies, &mutex);
  }
  for (auto& hospital : hospitals) hospital.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "model %s, %d replica(s), %d hospitals, batch %lld, merge %lld/%lld us: %.0f samples/s "
      "(%zu steps in %.1f s), p50 %.2f ms, p99 %.2f ms, server steps %lld\n",
      flags.model.c_str(), flags.replicas, flags.hospitals, static_cast<long long>(flags.batch),
      static_cast<long long>(flags.merge_max_batch), static_cast<long long>(flags.merge_wait_us),
      static_cast<double>(latencies.size() * flags.batch) / elapsed, latencies.size(), elapsed,
      Quantile(latencies, 0.5) * 1e3, Quantile(latencies, 0.99) * 1e3,
      static_cast<long long>(servers[0]->step()));
}

// Median seconds of `iterations` calls of `call`.
template <typename Call>
double Median(int iterations, Call&& call) {
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    const auto start = Clock::now();
    call();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  return Quantile(times, 0.5);
}

void RunAllReduce(const Flags& flags) {
  const cleave::SplitModel model = cleave::BuildSplitModel(Spec(flags.model), 1);
  std::vector<at::Tensor> grads;
  int64_t values = 0;
  for (const at::Tensor& p : model.top->parameters()) {
    grads.push_back(at::randn_like(p));
    values += p.numel();
  }
  Rendezvous rendezvous;
  double seconds[2] = {0, 0};
  double vote = 0;
  std::vector<std::future<void>> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.push_back(std::async(std::launch::async, [&, rank] {
      cleave::server::ReplicaGroup group(rendezvous.For(2, rank));
      std::vector<at::Tensor> mine;
      for (const at::Tensor& g : grads) mine.push_back(g.clone());
      group.AllReduceGradients(mine, 1);  // warm-up
      seconds[rank] = Median(flags.allreduce_iterations,
                             [&] { group.AllReduceGradients(mine, 1 + rank); });
      const double v = Median(flags.allreduce_iterations, [&] { group.AllReduceSums({1, 0}); });
      if (rank == 0) vote = v;
    }));
  }
  for (auto& rank : ranks) rank.get();
  std::printf(
      "model %s: top %lld values (%.2f MB fp32): gradient allreduce between 2 replicas on "
      "loopback %.3f ms (median of %d), vote %.3f ms\n",
      flags.model.c_str(), static_cast<long long>(values), values * 4 / 1e6, seconds[0] * 1e3,
      flags.allreduce_iterations, vote * 1e3);
}

int Run(int argc, char** argv) {
  CLI::App app("bench_replicas: hospitals against 1 or 2 server replicas, in one process",
               "bench_replicas");
  Flags flags;
  app.add_option("--model", flags.model, "mlp (64 features, 256-128) or cnn")
      ->check(CLI::IsMember({"mlp", "cnn"}))
      ->capture_default_str();
  app.add_option("--replicas", flags.replicas, "1 or 2")->check(CLI::Range(1, 2));
  app.add_option("--hospitals", flags.hospitals, "Hospital threads")->check(CLI::Range(1, 256));
  app.add_option("--seconds", flags.seconds, "How long they train")->check(CLI::Range(0.1, 600.0));
  app.add_option("--batch", flags.batch, "Samples per step")->check(CLI::Range(1, 4096));
  app.add_option("--idle-us", flags.idle_us, "--replica-idle-us of the replicas")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--allreduce", flags.allreduce_iterations,
                 "Instead of the load: time this many gradient allreduces of the top's size")
      ->check(CLI::Range(0, 100000));
  app.add_option("--merge-max-batch", flags.merge_max_batch,
                 "--merge-max-batch of the servers: merge waiting steps up to this many samples "
                 "(0: off)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--merge-wait-us", flags.merge_wait_us,
                 "--merge-wait-us of the servers (needs --merge-max-batch)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  spdlog::set_level(spdlog::level::warn);
  if (flags.allreduce_iterations > 0) {
    RunAllReduce(flags);
  } else {
    RunLoad(flags);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("bench_replicas", [&] { return Run(argc, argv); });
}
