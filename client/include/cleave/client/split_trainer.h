// The client side of split learning over any SplitLink: runs the bottom model on local data,
// sends cut-layer activations (compressed as the server asked at Join) with labels, applies the
// gradient the server returns, and evaluates through the server.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cleave/client/progress.h"
#include "cleave/core/dataset.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/split_link.h"

namespace torch::optim {
class Optimizer;
}

namespace cleave::client {

class ActivationCompressor;

struct TrainerOptions {
  ModelSpec model;
  uint64_t seed = 1;
  std::string optimizer = "adam";  // "adam" or "sgd"
  double learning_rate = 1e-3;
  int64_t batch_size = 64;
  int64_t max_steps_per_epoch = 0;  // 0: whole epoch (tests use small numbers)
  double nopeek_alpha = 0;          // weight of dCor(inputs, sent activations) in the client loss
};

struct EpochStats {
  double loss = 0;      // mean over the epoch's batches (server's loss)
  double accuracy = 0;  // training accuracy over the epoch
  double dcor = 0;      // mean dCor(inputs, sent activations) over batches (0 if not measured)
  int64_t samples = 0;
  int64_t steps = 0;
  double seconds = 0;
};

struct EvalStats {
  double loss = 0;
  double accuracy = 0;
  int64_t samples = 0;
  // dCor(test inputs, sent activations), per evaluation batch of `dcor_batch_size` samples and
  // averaged over the full batches (the last, smaller one only when it is the only one). The
  // plain estimator is biased upward on small batches; `dcor_bias_corrected` is the U-centred
  // estimate of dCor^2 (near 0 for independent data at any batch size). All 0 when no batch had
  // at least 4 samples.
  double dcor = 0;
  double dcor_bias_corrected = 0;
  int64_t dcor_batch_size = 0;
};

struct LinkCounters {
  int64_t bytes_sent = 0;        // protobuf bytes of requests
  int64_t bytes_received = 0;    // protobuf bytes of replies
  int64_t dense_fp32_bytes = 0;  // what the activations sent would take as dense fp32
  int64_t elements_total = 0;    // activation elements computed
  int64_t elements_sent = 0;     // activation elements sent
};

class SplitTrainer {
 public:
  SplitTrainer(TrainerOptions options, protocol::SplitLink& link);
  ~SplitTrainer();

  // Joins the server (FAILED_PRECONDITION if the model fingerprints differ) and adopts the
  // compression configuration it advertises.
  v1::JoinReply Join(int64_t num_train_samples);
  EpochStats TrainEpoch(const Dataset& train, int64_t epoch, int64_t epochs,
                        ProgressReporter* progress);
  EvalStats Evaluate(const Dataset& test, int64_t batch_size = 500);
  void Leave();

  SplitModel& model() { return model_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  const LinkCounters& counters() const { return counters_; }
  const std::vector<double>& step_losses() const { return step_losses_; }
  const std::string& fingerprint() const { return fingerprint_; }
  const v1::CompressionConfig& compression() const { return compression_; }

 private:
  TrainerOptions options_;
  protocol::SplitLink& link_;
  SplitModel model_;
  std::string fingerprint_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::string session_id_;
  v1::ServerConfig server_config_;
  v1::CompressionConfig compression_;
  std::unique_ptr<ActivationCompressor> compressor_;
  LinkCounters counters_;
  std::vector<double> step_losses_;
  int64_t step_ = 0;
};

}  // namespace cleave::client
