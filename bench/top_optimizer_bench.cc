// Fashion-MNIST to a target test accuracy with the server's top on one optimizer (adam, sgd or
// kfac): steps and training wall time (evaluation excluded), one hospital over the in-process
// link (messages still serialised), the CNN cut after block 1, the client's bottom on Adam 1e-3,
// batch 64, seed 1: the same client side for every optimizer. The test set is evaluated every
// --eval-every steps. It measures; it is not a test. Prints one line per evaluation and a summary.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "cleave/client/split_trainer.h"
#include "cleave/core/command_line.h"
#include "cleave/core/dataset.h"
#include "cleave/core/logging.h"
#include "cleave/server/in_process_link.h"
#include "cleave/server/split_server.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string optimizer = "adam";
  double lr = 1e-3;
  double momentum = 0.9;
  cleave::server::KfacOptions kfac;
  double target = 0.90;
  int64_t eval_every = 250;
  int64_t max_steps = 10000;
  int cut = 1;
  std::string data_dir = cleave::kDefaultFashionMnistDir;
};

void Register(CLI::App& app, Flags* f) {
  app.add_option("--optimizer", f->optimizer, "Top optimizer: adam, sgd or kfac")
      ->capture_default_str();
  app.add_option("--lr", f->lr, "Top learning rate")->capture_default_str();
  app.add_option("--momentum", f->momentum, "sgd and kfac momentum")->capture_default_str();
  app.add_option("--kfac-damping", f->kfac.damping)->capture_default_str();
  app.add_option("--kfac-factor-decay", f->kfac.factor_decay)->capture_default_str();
  app.add_option("--kfac-factor-every", f->kfac.factor_every)->capture_default_str();
  app.add_option("--kfac-inverse-every", f->kfac.inverse_every)->capture_default_str();
  app.add_option("--kfac-kl-clip", f->kfac.kl_clip)->capture_default_str();
  app.add_option("--kfac-max-dim", f->kfac.max_dim)->capture_default_str();
  app.add_option("--target", f->target, "Test accuracy that ends the run")->capture_default_str();
  app.add_option("--eval-every", f->eval_every, "Steps between evaluations")->capture_default_str();
  app.add_option("--max-steps", f->max_steps, "Steps at most")->capture_default_str();
  app.add_option("--cut", f->cut, "CNN blocks on the client")->capture_default_str();
  app.add_option("--data", f->data_dir, "Fashion-MNIST directory")->capture_default_str();
}

int Run(const Flags& f) {
  const cleave::Dataset train =
      cleave::LoadFashionMnist(f.data_dir, cleave::FashionMnistSplit::kTrain);
  const cleave::Dataset test =
      cleave::LoadFashionMnist(f.data_dir, cleave::FashionMnistSplit::kTest);
  cleave::server::SplitServerOptions server_options;
  server_options.model.cut = f.cut;
  server_options.optimizer = f.optimizer;
  server_options.learning_rate = f.lr;
  server_options.momentum = f.momentum;
  server_options.kfac = f.kfac;
  server_options.session_idle_timeout = std::chrono::milliseconds(0);
  cleave::server::SplitServer server(server_options);
  cleave::server::InProcessLink link(server, "bench");
  cleave::client::TrainerOptions options;
  options.model = server_options.model;
  cleave::client::SplitTrainer trainer(options, link);
  trainer.Join(train.size());
  cleave::client::BatchCursor cursor(train, options.batch_size, options.seed);
  double train_seconds = 0;
  int64_t steps = 0;
  double best = 0;
  while (steps < f.max_steps) {
    const auto start = Clock::now();
    steps += trainer.TrainRound(cursor, 1, 1, nullptr, f.eval_every).steps;
    train_seconds += std::chrono::duration<double>(Clock::now() - start).count();
    const double accuracy = trainer.Evaluate(test).accuracy;
    best = std::max(best, accuracy);
    std::printf("step %lld epoch %.2f train_s %.1f test_acc %.4f\n", static_cast<long long>(steps),
                static_cast<double>(steps * options.batch_size) / train.size(), train_seconds,
                accuracy);
    std::fflush(stdout);
    if (accuracy >= f.target) break;
  }
  std::printf("summary optimizer %s lr %g reached %d steps %lld train_s %.1f best %.4f\n",
              f.optimizer.c_str(), f.lr, best >= f.target ? 1 : 0, static_cast<long long>(steps),
              train_seconds, best);
  trainer.Leave();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("bench_top_optimizer: Fashion-MNIST to a target accuracy, top on adam/sgd/kfac");
  Flags flags;
  Register(app, &flags);
  CLI11_PARSE(app, argc, argv);
  cleave::SetupLogging("warn");
  try {
    return Run(flags);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "bench_top_optimizer: %s\n", error.what());
    return 2;
  }
}
