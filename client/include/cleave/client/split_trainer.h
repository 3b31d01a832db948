// The client side of split learning over any SplitLink: runs the bottom model on local data,
// sends cut-layer activations (compressed as the server asked at Join) with labels, applies the
// gradient the server returns, and evaluates through the server.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "cleave/client/batch_augmentation.h"
#include "cleave/client/byte_counting_link.h"
#include "cleave/client/progress.h"
#include "cleave/client/u_shaped_tail.h"
#include "cleave/client/vertical_party.h"
#include "cleave/core/dataset.h"
#include "cleave/core/lr_schedule.h"
#include "cleave/core/split_config.h"
#include "cleave/core/split_model.h"
#include "cleave/privacy/activation_noise.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/split_link.h"

namespace torch::optim {
class Optimizer;
}

namespace cleave::protocol {
class GradientDecoder;
class UpdateEncoder;
}  // namespace cleave::protocol

namespace cleave::client {

class ActivationCompressor;
struct SelectedActivations;

// Mini-batches drawn without end: a new seeded order each time the data is used up (rounds are
// not aligned with epochs).
class BatchCursor {
 public:
  BatchCursor(const Dataset& data, int64_t batch_size, uint64_t seed);
  void Next(at::Tensor* inputs, at::Tensor* labels);
  int64_t epoch() const { return epoch_; }

 private:
  BatchIterator batches_;
  int64_t epoch_ = 0;
};

struct TrainerOptions {
  ModelSpec model;
  uint64_t seed = 1;
  std::string optimizer = "adam";  // "adam", "adamw" or "sgd"
  double learning_rate = 1e-3;
  double weight_decay = 0;
  // Over the client's own steps; a cosine with total_steps 0 is given all its steps by the caller.
  LearningRateSchedule schedule;
  AugmentationOptions augmentation;  // applied to training batches only
  // Where the bottom, its activations, their compression and NoPeek run (core/device.h); data
  // and what goes on the wire stay on the host.
  c10::Device device = c10::Device(c10::kCPU);
  int64_t batch_size = 64;
  int64_t max_steps_per_epoch = 0;  // 0: whole epoch (tests use small numbers)
  double nopeek_alpha = 0;          // weight of dCor(inputs, sent activations) in the client loss
  // Noise defence (privacy/activation_noise.h): sigma of the Gaussian noise added to every
  // activation before it is selected and sent, in training and evaluation alike (the server never
  // sees a clean activation); 0: off. Seeded from `seed`.
  double activation_noise = 0;
#include "cleave/client/u_shaped_tail.h"
  // Split configuration; vertical: this client's party index (vertical_party.h).
  SplitConfig config = SplitConfig::kVanilla;
  int party = 0;
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
  // Per class (index = label, one entry per class of the model): test samples evaluated, and
  // those the server classified correctly (its per-class counts, checked against the labels).
  std::vector<int64_t> samples_per_class;
  std::vector<int64_t> correct_per_class;
};

// Per-class test accuracy weighted by the label mix of `train_labels` (each class's share of
// them): test accuracy as patients with that mix would see it. Classes absent from the training
// labels or from the test set add nothing. From `test`'s per-class counts, so one evaluation
// pass gives both this and the overall accuracy.
double AccuracyWeightedByLabelMix(const EvalStats& test, const at::Tensor& train_labels);

struct LinkCounters {
  int64_t bytes_sent = 0;        // protobuf bytes of every request (ByteCountingLink)
  int64_t bytes_received = 0;    // protobuf bytes of every reply
  int64_t dense_fp32_bytes = 0;  // what the activations sent would take as dense fp32
  int64_t elements_total = 0;    // activation elements computed
  int64_t elements_sent = 0;     // activation elements sent
  int64_t update_bytes = 0;       // protobuf bytes of client-model update requests (rounds)
  int64_t update_dense_bytes = 0;  // what those updates would take as dense fp32
  UShapedBytes u_shaped;           // U-shaped: each of the four directions (zero otherwise)
};

class SplitTrainer {
 public:
  SplitTrainer(TrainerOptions options, protocol::SplitLink& link);
  ~SplitTrainer();

  // Joins the server (FAILED_PRECONDITION if the model fingerprints differ) and adopts the
  // compression configuration it advertises (UserError if this client does not know it).
  v1::JoinReply Join(int64_t num_train_samples);
  EpochStats TrainEpoch(const Dataset& train, int64_t epoch, int64_t epochs,
                        ProgressReporter* progress);
  EvalStats Evaluate(const Dataset& test, int64_t batch_size = 500);
  void Leave();

  // Rounds (schedules sequential and splitfed). Trains on batches from `cursor` until the server
  // says the round is closing (or `max_steps` > 0 steps are done), stamping each step with the
  // current client-model version.
  EpochStats TrainRound(BatchCursor& cursor, int64_t round, int64_t rounds,
                        ProgressReporter* progress, int64_t max_steps = 0);
  v1::SyncReply Sync(int64_t have_version, int64_t wait_ms);
  // Sends new weights minus `base` (compressed as the server asked, with error feedback).
  v1::UpdateReply SubmitUpdate(int64_t base_version, int64_t round, int64_t samples,
                               const at::Tensor& base);
  // Forgets the update residual (after the server refused an update: the client resynchronises).
  void ResetUpdateFeedback();
  // The client-side model's parameters, flattened (see FlattenClientParameters: the bottom's,
  // then, U-shaped, the tail's).
  at::Tensor ClientWeights() const;
  void LoadClientWeights(const at::Tensor& flat, int64_t version);
  int64_t model_version() const { return model_version_; }
  bool joined() const { return !session_id_.empty(); }
  // Forgets the session without telling the server (it is gone or restarted).
  void DropSession() { session_id_.clear(); }

  SplitModel& model() { return model_; }
  const TrainerOptions& options() const { return options_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  // What went over the link so far (bytes from the ByteCountingLink every call goes through).
  LinkCounters counters() const;
  const LinkBytes& link_bytes() const { return link_.bytes(); }
  const std::vector<double>& step_losses() const { return step_losses_; }
  const std::string& fingerprint() const { return fingerprint_; }
  const protocol::LinkSpec& link_spec() const { return link_spec_; }
  const VerticalRole& vertical() const { return vertical_; }

 private:
  TrainerOptions options_;
  ByteCountingLink link_;  // every call to the server goes through it
  SplitModel model_;
  std::string fingerprint_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::string session_id_;
  v1::ServerConfig server_config_;
  protocol::LinkSpec link_spec_;
  std::unique_ptr<ActivationCompressor> compressor_;
  std::unique_ptr<protocol::GradientDecoder> gradient_decoder_;
  std::unique_ptr<UShapedTail> u_shaped_;  // null: not U-shaped
  LinkCounters counters_;
  std::vector<double> step_losses_;
  int64_t step_ = 0;
  int64_t model_version_ = 0;
  VerticalRole vertical_;       // from the Join reply
  int64_t evaluation_batch_ = 0;  // vertical: the index of the next evaluation batch
  // Built at the first update and kept: its error-feedback residual spans rounds and Joins.
  std::unique_ptr<protocol::UpdateEncoder> update_encoder_;
  BatchAugmentation augmentation_;
  privacy::ActivationNoise noise_;  // sigma 0: identity

  struct StepResult {
    double loss = 0;
    int64_t correct = 0;
    int64_t samples = 0;
    bool round_closing = false;
  };
  // One training step on a batch: forward, send, apply the server's gradient (+ NoPeek).
  StepResult Step(const at::Tensor& inputs, const at::Tensor& labels, double* dcor_sum);
  // Steps over batches from `next_batch` until it runs dry, `max_steps` (> 0) are done, or (with
  // `until_round_closes`) the server says the round is closing.
  EpochStats RunSteps(const std::function<bool(at::Tensor*, at::Tensor*)>& next_batch,
                      int64_t max_steps, bool until_round_closes, ProgressReporter* progress);
  // Progress figures for the steps so far.
  ProgressStats Shown(const EpochStats& stats, double loss_sum, int64_t correct,
                      std::chrono::steady_clock::time_point start) const;
  // The largest evaluation batch, up to `requested`, whose dense message fits the server's limits.
  int64_t EvaluationBatchSize(int64_t requested) const;
  // U-shaped (u_shaped_step.cc): a step's two messages, and one evaluation batch whose loss and
  // hits the tail computes here.
  StepResult UShapedStep(const at::Tensor& inputs, const at::Tensor& labels, double* dcor_sum);
  v1::EvaluateReply UShapedEvaluateBatch(const at::Tensor& activations,
                                         const SelectedActivations& selected,
                                         const at::Tensor& labels, EvalStats* stats);
  // The bottom's output as it leaves the hospital: with the noise defence's draw added.
  at::Tensor SentActivations(const at::Tensor& inputs);
  // Applies the server's gradient at the cut (and the NoPeek term) to the bottom.
  void BackwardAtCut(const at::Tensor& inputs, const at::Tensor& activations,
                     const SelectedActivations& selected, const at::Tensor& gradient,
                     double* dcor_sum);
  // Sends one evaluation batch and adds the server's checked answer to `stats`.
  v1::EvaluateReply EvaluateBatch(const at::Tensor& activations,
                                  const SelectedActivations& selected, const at::Tensor& labels,
                                  EvalStats* stats);
};

}  // namespace cleave::client
