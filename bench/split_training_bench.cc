// Split training over mutual-TLS loopback gRPC vs the same model trained locally, unsplit, in the
// same run: samples/s and bytes on the wire per sample. Google Benchmark; not a test.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>

#include <numeric>

#include "cleave/client/grpc_link.h"
#include "cleave/client/split_trainer.h"
#include "cleave/core/certificates.h"
#include "cleave/core/dataset.h"
#include "cleave/server/grpc_server.h"
#include "cleave/server/in_process_link.h"
#include "cleave/server/split_server.h"

namespace {

constexpr int64_t kSteps = 50;

const cleave::Dataset& Data() {
  static const cleave::Dataset data = [] {
    cleave::Dataset all = cleave::LoadFashionMnist(cleave::kDefaultFashionMnistDir,
                                                   cleave::FashionMnistSplit::kTrain);
    std::vector<int64_t> rows(8192);
    std::iota(rows.begin(), rows.end(), 0);
    return all.Subset(rows);
  }();
  return data;
}

cleave::ModelSpec Spec() {
  cleave::ModelSpec spec;
  spec.architecture = "cnn";
  spec.cut = 1;
  return spec;
}

// The baseline: bottom and top in one process, one optimizer, no serialisation.
void BM_LocalUnsplit(benchmark::State& state) {
  const int64_t batch = state.range(0);
  cleave::SplitModel model = cleave::BuildSplitModel(Spec(), 1);
  std::vector<at::Tensor> parameters = model.bottom->parameters();
  for (const auto& p : model.top->parameters()) parameters.push_back(p);
  torch::optim::Adam optimizer(parameters, torch::optim::AdamOptions(1e-3));
  cleave::BatchIterator batches(Data(), batch, 1);
  int64_t samples = 0;
  for (auto _ : state) {
    batches.StartEpoch(0);
    at::Tensor inputs, labels;
    for (int64_t step = 0; step < kSteps && batches.Next(&inputs, &labels); ++step) {
      optimizer.zero_grad();
      const at::Tensor loss = torch::nn::functional::cross_entropy(
          model.top->forward(model.bottom->forward(inputs)), labels);
      loss.backward();
      optimizer.step();
      samples += labels.size(0);
    }
  }
  state.counters["samples/s"] =
      benchmark::Counter(static_cast<double>(samples), benchmark::Counter::kIsRate);
  state.counters["bytes/sample"] = 0;
}

void RunSplit(benchmark::State& state, cleave::protocol::SplitLink& link,
              cleave::server::SplitServer& server) {
  const int64_t batch = state.range(0);
  cleave::client::TrainerOptions options;
  options.model = Spec();
  options.batch_size = batch;
  options.max_steps_per_epoch = kSteps;
  cleave::client::SplitTrainer trainer(options, link);
  trainer.Join(Data().size());
  int64_t samples = 0;
  for (auto _ : state) {
    samples += trainer.TrainEpoch(Data(), 0, 1, nullptr).samples;
  }
  const auto& counters = trainer.counters();
  state.counters["samples/s"] =
      benchmark::Counter(static_cast<double>(samples), benchmark::Counter::kIsRate);
  state.counters["bytes/sample"] =
      static_cast<double>(counters.bytes_sent + counters.bytes_received) / samples;
  state.counters["up_bytes/sample"] = static_cast<double>(counters.bytes_sent) / samples;
  trainer.Leave();
  benchmark::DoNotOptimize(server.step());
}

void BM_SplitInProcess(benchmark::State& state) {
  cleave::server::SplitServerOptions options;
  options.model = Spec();
  cleave::server::SplitServer server(options);
  cleave::server::InProcessLink link(server, "bench");
  RunSplit(state, link, server);
}

void SplitOverMutualTls(benchmark::State& state, const cleave::v1::CompressionConfig& compression) {
  const cleave::PemPair ca = cleave::CreateCertificateAuthority("bench CA");
  const cleave::PemPair server_pair = cleave::IssueServerCertificate(ca, "bench-server", {});
  const cleave::PemPair client_pair = cleave::IssueClientCertificate(ca, "bench-client");
  cleave::server::SplitServerOptions options;
  options.model = Spec();
  options.compression = compression;
  cleave::server::SplitServer server(options);
  cleave::server::ListenOptions listen;
  listen.address = "127.0.0.1:0";
  listen.tls = {ca.certificate_pem, server_pair.certificate_pem, server_pair.private_key_pem};
  cleave::server::GrpcServer grpc_server(server, listen);
  cleave::client::ConnectOptions connect;
  connect.target = "localhost:" + std::to_string(grpc_server.port());
  connect.tls = {ca.certificate_pem, client_pair.certificate_pem, client_pair.private_key_pem};
  cleave::client::GrpcLink link(connect);
  RunSplit(state, link, server);
}

void BM_SplitOverMutualTlsLoopback(benchmark::State& state) { SplitOverMutualTls(state, {}); }

// The best measured link (docs/PERFORMANCE.md, 50.8x fewer bytes within 0.5 pp): activations up
// by gaussiank+ at 11% in int4; of those positions, the 25% largest gradients back in int4.
void BM_SplitOverMutualTlsLoopbackGaussianK(benchmark::State& state) {
  cleave::v1::CompressionConfig compression;
  compression.mutable_activations()->set_method("gaussiank+");
  compression.mutable_activations()->set_density(0.11);
  compression.mutable_activations()->set_value_precision("int4");
  compression.mutable_gradients()->set_method("gaussiank+");
  compression.mutable_gradients()->set_density(0.25);
  compression.mutable_gradients()->set_value_precision("int4");
  SplitOverMutualTls(state, compression);
}

// Real time: the work happens on gRPC's threads too, not only the benchmark's.
BENCHMARK(BM_LocalUnsplit)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_SplitInProcess)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_SplitOverMutualTlsLoopback)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK(BM_SplitOverMutualTlsLoopbackGaussianK)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
