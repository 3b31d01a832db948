#include "cleave/client/split_trainer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/optimizer.h>

#include <chrono>

#include "cleave/client/activation_compressor.h"
#include "cleave/core/error.h"
#include "cleave/core/optimizer_factory.h"
#include "cleave/privacy/distance_correlation.h"
#include "cleave/protocol/client_model_codec.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::client {
namespace {

// The noise defence draws from its own stream, apart from the seed's other uses.
constexpr uint64_t kNoiseSeedOffset = 0x6e6f697365;

}  // namespace

SplitTrainer::SplitTrainer(TrainerOptions options, protocol::SplitLink& link)
    : options_(std::move(options)),
      link_(link),
      augmentation_(options_.augmentation, options_.seed),
      noise_(options_.activation_noise, options_.seed + kNoiseSeedOffset) {
  CLEAVE_CHECK_USER(options_.batch_size >= 1, "batch size must be at least 1");
  CLEAVE_CHECK_USER(options_.nopeek_alpha >= 0, "the NoPeek weight alpha must be >= 0, got ", options_.nopeek_alpha);
  CLEAVE_CHECK_USER((options_.config == SplitConfig::kUShaped) == (options_.model.tail_layers > 0),
                    options_.config == SplitConfig::kUShaped
                        ? "the u-shaped configuration needs a tail of at least 1 block"
                        : "a tail (--tail-layers) needs --config u-shaped");
  model_ = BuildSplitModel(options_.model, options_.seed);
  model_.bottom->to(options_.device);
  if (model_.tail) model_.tail->to(options_.device);
  fingerprint_ = ModelFingerprint(options_.model);
  options_.schedule.Validate();
  std::vector<at::Tensor> parameters = model_.bottom->parameters();
  if (model_.tail) {  // U-shaped: one optimizer over bottom and tail
    for (const at::Tensor& parameter : model_.tail->parameters()) parameters.push_back(parameter);
  }
  optimizer_ = MakeOptimizer(options_.optimizer, parameters, options_.learning_rate,
                             options_.weight_decay);
}

SplitTrainer::~SplitTrainer() = default;

at::Tensor SplitTrainer::SentActivations(const at::Tensor& inputs) {
  return noise_.Apply(model_.bottom->forward(inputs));
}

namespace {

// Every reply says its protocol version; one from another version is not trusted.
void CheckReplyVersion(uint32_t version, const char* call) {
  CLEAVE_CHECK_INPUT(version == protocol::kProtocolVersion, "server answered ", call,
                     " with protocol version ", version, "; this client speaks ",
                     protocol::kProtocolVersion);
}

}  // namespace

v1::JoinReply SplitTrainer::Join(int64_t num_train_samples) {
  v1::JoinRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_model_fingerprint(fingerprint_);
  request.set_model_description(DescribeSpec(options_.model));
  request.set_num_train_samples(num_train_samples);
  DescribeVerticalParty(options_.config, options_.party, options_.model.num_classes,
                        model_.cut_shape, &request);
  v1::JoinReply reply = link_.Join(request);
  if (reply.protocol_version() != protocol::kProtocolVersion) {
    throw protocol::StatusError(
        grpc::StatusCode::FAILED_PRECONDITION,
        "server speaks protocol version " + std::to_string(reply.protocol_version()));
  }
  CLEAVE_CHECK_USER(options_.batch_size <= reply.server().max_batch(), "batch size ",
                    options_.batch_size, " exceeds the server's maximum of ",
                    reply.server().max_batch());
  vertical_ = AdoptVerticalRole(options_.config, options_.party, reply);
  server_config_ = reply.server();
  session_id_ = reply.session_id();
  link_spec_ = protocol::ParseLinkSpec(reply.compression());
  compressor_ = std::make_unique<ActivationCompressor>(link_spec_.activations, options_.seed);
  gradient_decoder_ = std::make_unique<protocol::GradientDecoder>(link_spec_.gradients);
  if (model_.tail) {
    u_shaped_ = std::make_unique<UShapedTail>(model_.tail, link_spec_, model_.middle_shape,
                                              server_config_.max_batch(), options_.seed);
  }
  return reply;
}

BatchCursor::BatchCursor(const Dataset& data, int64_t batch_size, uint64_t seed)
    : batches_(data, batch_size, seed) {}

void BatchCursor::Next(at::Tensor* inputs, at::Tensor* labels) {
  while (!batches_.Next(inputs, labels)) batches_.StartEpoch(++epoch_);
}

SplitTrainer::StepResult SplitTrainer::Step(const at::Tensor& inputs, const at::Tensor& labels,
                                            double* dcor_sum) {
  if (u_shaped_) return UShapedStep(inputs, labels, dcor_sum);
  const at::Tensor activations = SentActivations(inputs);
  // The mask is part of the forward pass: only what is sent carries gradient back.
  const SelectedActivations selected = compressor_->Select(activations);

  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session_id_);
  request.set_step(step_);
  request.set_model_version(model_version_);
  compressor_->Encode(activations, selected, request.mutable_activations());
  if (vertical_.holds_labels) protocol::EncodeDense(labels, request.mutable_labels());
  const v1::TrainReply reply = link_.TrainStep(request);
  CheckReplyVersion(reply.protocol_version(), "Train");
  counters_.dense_fp32_bytes += activations.numel() * 4;
  counters_.elements_total += activations.numel();
  counters_.elements_sent += selected.count(activations.numel());
  CLEAVE_CHECK_INPUT(reply.step() == step_, "server answered step ", reply.step(), ", expected ",
                     step_);

  const at::Tensor gradient = gradient_decoder_->Decode(
      reply.gradients(),
      std::vector<int64_t>(activations.sizes().begin(), activations.sizes().end()), selected)
                                  .to(options_.device);
  optimizer_->zero_grad();
  BackwardAtCut(inputs, activations, selected, gradient, dcor_sum);
  SetLearningRate(*optimizer_, options_.schedule.At(options_.learning_rate, step_));
  optimizer_->step();
  ++step_;
  step_losses_.push_back(reply.loss());
  return {reply.loss(), reply.correct(), labels.size(0), reply.round_closing()};
}

void SplitTrainer::BackwardAtCut(const at::Tensor& inputs, const at::Tensor& activations,
                                 const SelectedActivations& selected, const at::Tensor& gradient,
                                 double* dcor_sum) {
  if (options_.nopeek_alpha > 0) {
    // One backward pass through both terms: the server's gradient at the cut and the local
    // NoPeek penalty alpha * dCor(inputs, sent activations).
    const at::Tensor sent = selected.Apply(activations);
    const at::Tensor dcor = privacy::DistanceCorrelation(inputs, sent);
    *dcor_sum += dcor.item<double>();
    torch::autograd::backward({activations, options_.nopeek_alpha * dcor},
                              {gradient, at::ones({}, dcor.options())});
  } else {
    activations.backward(gradient);
  }
}

ProgressStats SplitTrainer::Shown(const EpochStats& stats, double loss_sum, int64_t correct,
                                  std::chrono::steady_clock::time_point start) const {
  ProgressStats shown;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  shown.loss = stats.steps > 0 ? loss_sum / stats.steps : 0;
  shown.accuracy = stats.samples > 0 ? static_cast<double>(correct) / stats.samples : 0;
  shown.samples_per_second = seconds > 0 ? stats.samples / seconds : 0;
  shown.has_loss = vertical_.holds_labels;
  const MessageBytes bytes = link_.bytes().Total();
  shown.bytes_sent = bytes.sent;
  shown.bytes_received = bytes.received;
  shown.density = counters_.elements_total > 0
                      ? static_cast<double>(counters_.elements_sent) / counters_.elements_total
                      : 1.0;
  return shown;
}

EpochStats SplitTrainer::RunSteps(const std::function<bool(at::Tensor*, at::Tensor*)>& next_batch,
                                  int64_t max_steps, bool until_round_closes,
                                  ProgressReporter* progress) {
  EpochStats stats;
  double loss_sum = 0, dcor_sum = 0;
  int64_t correct = 0;
  const auto start = std::chrono::steady_clock::now();
  model_.bottom->train();
  link_.OpenTrainStream();
  at::Tensor inputs, labels;
  bool round_closing = false;
  while (!(until_round_closes && round_closing) && (max_steps <= 0 || stats.steps < max_steps) &&
         next_batch(&inputs, &labels)) {
    const StepResult step =
        Step(augmentation_.Apply(inputs).to(options_.device), labels, &dcor_sum);
    ++stats.steps;
    stats.samples += step.samples;
    loss_sum += step.loss;
    correct += step.correct;
    round_closing = step.round_closing;
    if (progress) progress->Update(stats.steps, Shown(stats, loss_sum, correct, start));
  }
  link_.CloseTrainStream();
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.loss = stats.steps > 0 ? loss_sum / stats.steps : 0;
  stats.accuracy = stats.samples > 0 ? static_cast<double>(correct) / stats.samples : 0;
  stats.dcor = stats.steps > 0 ? dcor_sum / stats.steps : 0;
  if (progress) progress->FinishEpoch(Shown(stats, loss_sum, correct, start));
  return stats;
}

EpochStats SplitTrainer::TrainEpoch(const Dataset& train, int64_t epoch, int64_t epochs,
                                    ProgressReporter* progress) {
  CLEAVE_ENFORCE(!session_id_.empty(), "Join before training");
  // Vertical: every party draws the same samples, in the order of the server's seed.
  BatchIterator batches(train, options_.batch_size,
                        vertical_.enabled ? vertical_.batch_seed : options_.seed);
  batches.StartEpoch(epoch);
  int64_t total_steps = batches.batches_per_epoch();
  if (options_.max_steps_per_epoch > 0)
    total_steps = std::min(total_steps, options_.max_steps_per_epoch);
  if (progress) progress->StartEpoch(epoch + 1, epochs, total_steps);
  return RunSteps(
      [&batches](at::Tensor* inputs, at::Tensor* labels) { return batches.Next(inputs, labels); },
      total_steps, /*until_round_closes=*/false, progress);
}

EpochStats SplitTrainer::TrainRound(BatchCursor& cursor, int64_t round, int64_t rounds,
                                    ProgressReporter* progress, int64_t max_steps) {
  CLEAVE_ENFORCE(!session_id_.empty(), "Join before training");
  if (progress) progress->StartEpoch(round, rounds, 0, "round");
  return RunSteps(
      [&cursor](at::Tensor* inputs, at::Tensor* labels) {
        cursor.Next(inputs, labels);
        return true;
      },
      max_steps, /*until_round_closes=*/true, progress);
}

v1::SyncReply SplitTrainer::Sync(int64_t have_version, int64_t wait_ms) {
  CLEAVE_ENFORCE(!session_id_.empty(), "Join before syncing");
  v1::SyncRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session_id_);
  request.set_have_version(have_version);
  request.set_wait_ms(wait_ms);
  v1::SyncReply reply = link_.Sync(request);
  CheckReplyVersion(reply.protocol_version(), "Sync");
  return reply;
}

v1::UpdateReply SplitTrainer::SubmitUpdate(int64_t base_version, int64_t round, int64_t samples,
                                           const at::Tensor& base) {
  CLEAVE_ENFORCE(!session_id_.empty(), "Join before sending an update");
  const at::Tensor delta = ClientWeights() - base;
  v1::UpdateRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session_id_);
  request.set_base_version(base_version);
  request.set_round(round);
  request.set_samples(samples);
  if (!update_encoder_) {
    update_encoder_ = std::make_unique<protocol::UpdateEncoder>(link_spec_.updates, options_.seed);
  }
  // What is not sent now stays in the residual and goes with the next round's delta.
  update_encoder_->Encode(delta, request.mutable_delta());
  const v1::UpdateReply reply = link_.SubmitUpdate(request);
  CheckReplyVersion(reply.protocol_version(), "SubmitUpdate");
  counters_.update_dense_bytes += delta.numel() * 4;
  return reply;
}

void SplitTrainer::ResetUpdateFeedback() {
  if (update_encoder_) update_encoder_->Reset();
}

at::Tensor SplitTrainer::ClientWeights() const { return FlattenClientParameters(model_); }

void SplitTrainer::LoadClientWeights(const at::Tensor& flat, int64_t version) {
  AssignClientParameters(model_, flat);
  model_version_ = version;
}

LinkCounters SplitTrainer::counters() const {
  LinkCounters counters = counters_;
  const MessageBytes total = link_.bytes().Total();
  counters.bytes_sent = total.sent;
  counters.bytes_received = total.received;
  counters.update_bytes = link_.bytes().update.sent;
  if (u_shaped_) counters.u_shaped = u_shaped_->bytes();
  return counters;
}

int64_t SplitTrainer::EvaluationBatchSize(int64_t requested) const {
  // Vertical: every party must cut the test set into the same batches, whatever its cut layer.
  if (vertical_.enabled) return std::min(requested, server_config_.max_batch());
  int64_t sample_bytes = 4;  // fp32 activations of one sample ...
  for (int64_t d : model_.cut_shape) sample_bytes *= d;
  sample_bytes += 8;  // ... and its int64 label
  // Room for framing: 10% and 16 bytes a sample.
  const int64_t fits =
      std::max<int64_t>(1, server_config_.max_message_bytes() * 9 / 10 / (sample_bytes + 16));
  return std::min({requested, server_config_.max_batch(), fits});
}

v1::EvaluateReply SplitTrainer::EvaluateBatch(const at::Tensor& activations,
                                              const SelectedActivations& selected,
                                              const at::Tensor& labels, EvalStats* stats) {
  if (u_shaped_) return UShapedEvaluateBatch(activations, selected, labels, stats);
  v1::EvaluateRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session_id_);
  compressor_->Encode(activations, selected, request.mutable_activations());
  if (vertical_.holds_labels) protocol::EncodeDense(labels, request.mutable_labels());
  request.set_vertical_batch(evaluation_batch_++);
  const v1::EvaluateReply reply = link_.Evaluate(request);
  CheckReplyVersion(reply.protocol_version(), "Evaluate");
  counters_.dense_fp32_bytes += activations.numel() * 4;
  CLEAVE_CHECK_INPUT(reply.count() == labels.size(0), "server evaluated ", reply.count(),
                     " samples, sent ", labels.size(0));
  if (!vertical_.holds_labels) {  // vertical: the label holder alone learns how it went
    stats->samples += reply.count();
    return reply;
  }
  // Per-class counts: one per class, each within the batch's samples of that class, summing to
  // the correct count (which therefore lies within the batch too).
  const int64_t classes = options_.model.num_classes;
  CLEAVE_CHECK_INPUT(reply.correct_per_class_size() == classes, "server sent ",
                     reply.correct_per_class_size(), " per-class counts for ", classes, " classes");
  const at::Tensor batch_counts = at::bincount(labels.to(at::kLong), {}, classes).contiguous();
  const int64_t* in_batch = batch_counts.data_ptr<int64_t>();
  int64_t sum = 0;
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t correct = reply.correct_per_class(static_cast<int>(c));
    CLEAVE_CHECK_INPUT(correct >= 0 && correct <= in_batch[c], "server counted ", correct,
                       " correct of class ", c, ", the batch has ", in_batch[c]);
    sum += correct;
    stats->samples_per_class[c] += in_batch[c];
    stats->correct_per_class[c] += correct;
  }
  CLEAVE_CHECK_INPUT(sum == reply.correct(), "server's per-class counts sum to ", sum,
                     ", its correct count is ", reply.correct());
  stats->samples += reply.count();
  return reply;
}

EvalStats SplitTrainer::Evaluate(const Dataset& test, int64_t batch_size) {
  CLEAVE_ENFORCE(!session_id_.empty(), "Join before evaluating");
  at::NoGradGuard no_grad;
  model_.bottom->eval();
  batch_size = EvaluationBatchSize(batch_size);
  evaluation_batch_ = 0;
  BatchIterator batches(test, batch_size, options_.seed, /*shuffle=*/false);
  batches.StartEpoch(0);
  EvalStats stats;
  stats.samples_per_class.assign(options_.model.num_classes, 0);
  stats.correct_per_class.assign(options_.model.num_classes, 0);
  double loss_sum = 0, dcor_sum = 0, dcor_corrected_sum = 0;
  int64_t dcor_batches = 0;
  at::Tensor inputs, labels;
  while (batches.Next(&inputs, &labels)) {
    inputs = inputs.to(options_.device);
    const at::Tensor activations = SentActivations(inputs);
    const SelectedActivations selected = compressor_->Select(activations);
    // Leakage of what is sent: only full batches, so that every figure has the stated batch size
    // (the plain estimator's bias depends on it), unless the test set fits in one batch.
    const int64_t rows = inputs.size(0);
    if ((rows == batch_size || (dcor_batches == 0 && rows == test.size())) && rows >= 4) {
      const privacy::DistanceCorrelations dcor =
          privacy::BothDistanceCorrelations(inputs, selected.Apply(activations));
      dcor_sum += dcor.plain.item<double>();
      dcor_corrected_sum += dcor.bias_corrected.item<double>();
      stats.dcor_batch_size = rows;
      ++dcor_batches;
    }
    loss_sum += EvaluateBatch(activations, selected, labels, &stats).loss_sum();
  }
  int64_t correct = 0;
  for (int64_t c : stats.correct_per_class) correct += c;
  stats.loss = stats.samples > 0 ? loss_sum / stats.samples : 0;
  stats.accuracy = stats.samples > 0 ? static_cast<double>(correct) / stats.samples : 0;
  if (dcor_batches > 0) {
    stats.dcor = dcor_sum / dcor_batches;
    stats.dcor_bias_corrected = dcor_corrected_sum / dcor_batches;
  }
  return stats;
}

void SplitTrainer::Leave() {
  if (session_id_.empty()) return;
  v1::LeaveRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session_id_);
  link_.Leave(request);
  session_id_.clear();
}

double AccuracyWeightedByLabelMix(const EvalStats& test, const at::Tensor& train_labels) {
  const int64_t classes = static_cast<int64_t>(test.correct_per_class.size());
  CLEAVE_ENFORCE(static_cast<int64_t>(test.samples_per_class.size()) == classes,
                 "per-class counts of different lengths");
  const int64_t total = train_labels.numel();
  if (total == 0 || classes == 0) return 0;
  const at::Tensor train_counts =
      at::bincount(train_labels.reshape({-1}).to(at::kLong), {}, classes).contiguous();
  const int64_t* in_train = train_counts.data_ptr<int64_t>();
  double accuracy = 0;
  for (int64_t c = 0; c < classes; ++c) {
    if (in_train[c] == 0 || test.samples_per_class[c] == 0) continue;
    const double share = static_cast<double>(in_train[c]) / static_cast<double>(total);
    accuracy += share * static_cast<double>(test.correct_per_class[c]) /
                static_cast<double>(test.samples_per_class[c]);
  }
  return accuracy;
}

}  // namespace cleave::client
