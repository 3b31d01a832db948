#include "cleave/server/split_server.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <random>
#include <set>
#include <sstream>

#include "cleave/compress/compressor.h"
#include "cleave/core/checkpoint.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/optimizer_factory.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::server {

using protocol::StatusError;

namespace {

const std::set<std::string>& KnownMethods() {
  static const std::set<std::string> methods = {"none", "topk", "gaussiank", "gaussiank+",
                                                "randomk"};
  return methods;
}

void NormalizeSettings(v1::CompressionSettings* settings, const char* direction) {
  if (settings->method().empty()) settings->set_method("none");
  if (settings->value_precision().empty()) settings->set_value_precision("fp32");
  if (settings->method() == "none") {
    settings->set_density(1.0);
    settings->set_per_sample(false);
  }
  CLEAVE_CHECK_USER(KnownMethods().count(settings->method()) == 1, "unknown ", direction,
                    " compression method '", settings->method(),
                    "' (use none, topk, gaussiank, gaussiank+, randomk)");
  CLEAVE_CHECK_USER(settings->density() > 0.0 && settings->density() <= 1.0, direction, " density ",
                    settings->density(), " is outside (0, 1]");
  ParseValuePrecision(settings->value_precision());  // throws UserError when unknown
}

std::string NewSessionId() {
  std::random_device entropy;
  char buffer[33];
  std::snprintf(buffer, sizeof(buffer), "%08x%08x%08x%08x", entropy(), entropy(), entropy(),
                entropy());
  return buffer;
}

}  // namespace

std::set<std::string> LoadClientAllowlist(const std::string& path) {
  std::istringstream lines(ReadFile(path, "client allowlist"));
  std::set<std::string> names;
  std::string line;
  int number = 0;
  while (std::getline(lines, line)) {
    ++number;
    const auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    const auto begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos) continue;
    const auto end = line.find_last_not_of(" \t\r");
    const std::string name = line.substr(begin, end - begin + 1);
    for (char c : name) {
      CLEAVE_CHECK_USER(
          std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-',
          "client allowlist '", path, "' line ", number, ": '", name, "' is not a client name");
    }
    names.insert(name);
  }
  CLEAVE_CHECK_USER(!names.empty(), "client allowlist '", path, "' names no client");
  return names;
}

v1::CompressionConfig NormalizeCompression(const v1::CompressionConfig& config) {
  v1::CompressionConfig out = config;
  NormalizeSettings(out.mutable_activations(), "activation");
  NormalizeSettings(out.mutable_gradients(), "gradient");
  NormalizeSettings(out.mutable_updates(), "update");
  // The gradients travel at the positions the activations took; only those are chosen per sample.
  CLEAVE_CHECK_USER(!out.gradients().per_sample(),
                    "per-sample selection applies to the activations only");
  return out;
}

std::string DescribeCompression(const v1::CompressionConfig& config) {
  auto one = [](const v1::CompressionSettings& s) {
    return s.method() + ":" + std::to_string(s.density()) + ":" + s.value_precision() +
           (s.per_sample() ? ":per-sample" : "");
  };
  return "act=" + one(config.activations()) + ";grad=" + one(config.gradients()) +
         ";update=" + one(config.updates());
}

// What a checkpoint holds, as one module so that it is written and checked as one file: the
// server-side model (the optimizer's parameters) and the round state's tensors; the round
// state's numbers travel as checkpoint counters.
struct SplitServer::CheckpointState : torch::nn::Module {
  CheckpointState(torch::nn::Sequential top, int64_t client_parameters) {
    register_module("top", std::move(top));
    client_weights = register_buffer("client_weights", at::zeros({client_parameters}));
    aggregate = register_buffer("aggregate", at::zeros({client_parameters}));
  }
  at::Tensor client_weights;
  at::Tensor aggregate;
};

namespace {

constexpr const char* kLastRoundPrefix = "last_round.";
constexpr const char* kSubmittedPrefix = "submitted.";
constexpr const char* kJoinPrefix = "join.";
constexpr const char* kStalenessPrefix = "staleness.";

bool StartsWith(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

void WriteRoundState(const RoundState& state, CheckpointMeta* meta) {
  auto& c = meta->counters;
  c["round"] = state.round;
  c["version"] = state.version;
  c["aggregate_samples"] = state.aggregate_samples;
  c["aggregate_updates"] = state.aggregate_updates;
  c["round_samples_trained"] = state.round_samples_trained;
  c["turn"] = state.turn;
  c["finished"] = state.finished ? 1 : 0;
  c["updates_accepted"] = state.updates_accepted;
  c["updates_applied"] = state.updates_applied;
  c["updates_refused"] = state.updates_refused;
  c["updates_duplicate"] = state.updates_duplicate;
  c["steps_refused"] = state.steps_refused;
  for (size_t s = 0; s < state.staleness_histogram.size(); ++s) {
    c[kStalenessPrefix + std::to_string(s)] = state.staleness_histogram[s];
  }
  for (const auto& [identity, round] : state.last_round_submitted) {
    c[kLastRoundPrefix + identity] = round;
  }
  for (const std::string& identity : state.submitted) c[kSubmittedPrefix + identity] = 1;
  for (size_t i = 0; i < state.join_order.size(); ++i) {
    c[kJoinPrefix + state.join_order[i]] = static_cast<int64_t>(i);
  }
}

RoundState ReadRoundState(const CheckpointMeta& meta) {
  RoundState state;
  std::map<int64_t, std::string> joined;
  for (const auto& [name, value] : meta.counters) {
    if (name == "round") state.round = value;
    else if (name == "version") state.version = value;
    else if (name == "aggregate_samples") state.aggregate_samples = value;
    else if (name == "aggregate_updates") state.aggregate_updates = value;
    else if (name == "round_samples_trained") state.round_samples_trained = value;
    else if (name == "turn") state.turn = value;
    else if (name == "finished") state.finished = value != 0;
    else if (name == "updates_accepted") state.updates_accepted = value;
    else if (name == "updates_applied") state.updates_applied = value;
    else if (name == "updates_refused") state.updates_refused = value;
    else if (name == "updates_duplicate") state.updates_duplicate = value;
    else if (name == "steps_refused") state.steps_refused = value;
    else if (StartsWith(name, kLastRoundPrefix))
      state.last_round_submitted[name.substr(std::strlen(kLastRoundPrefix))] = value;
    else if (StartsWith(name, kSubmittedPrefix))
      state.submitted.insert(name.substr(std::strlen(kSubmittedPrefix)));
    else if (StartsWith(name, kJoinPrefix))
      joined[value] = name.substr(std::strlen(kJoinPrefix));
    else if (StartsWith(name, kStalenessPrefix)) {
      const auto s = static_cast<size_t>(std::stoll(name.substr(std::strlen(kStalenessPrefix))));
      if (s < 1024) {
        if (state.staleness_histogram.size() <= s) state.staleness_histogram.resize(s + 1, 0);
        state.staleness_histogram[s] = value;
      }
    }
  }
  for (const auto& [index, identity] : joined) state.join_order.push_back(identity);
  CLEAVE_CHECK_USER(state.round >= 1 && state.version >= 0 && state.aggregate_samples >= 0,
                    "checkpoint has an impossible round state (round ", state.round, ", version ",
                    state.version, ")");
  return state;
}

}  // namespace

SplitServer::SplitServer(SplitServerOptions options) : options_(std::move(options)) {
  options_.compression = NormalizeCompression(options_.compression);
  fingerprint_ = ModelFingerprint(options_.model);
  if (options_.compression.gradients().method() != "none") {
    gradient_compressor_ =
        MakeCompressor({options_.compression.gradients().method(),
                        options_.compression.gradients().density(), options_.seed});
  }
  model_ = BuildSplitModel(options_.model, options_.seed);
  optimizer_ = MakeOptimizer(options_.optimizer, model_.top->parameters(), options_.learning_rate);
  const at::Tensor initial_client_weights = FlattenParameters(*model_.bottom);
  checkpoint_state_ =
      std::make_shared<CheckpointState>(model_.top, initial_client_weights.numel());
  if (options_.rounds.schedule != Schedule::kSingle) {
    coordinator_ = std::make_unique<RoundCoordinator>(options_.rounds, initial_client_weights);
  }
  CLEAVE_CHECK_USER(!options_.resume || !options_.checkpoint_path.empty(),
                    "--resume needs --checkpoint FILE");
  if (options_.resume && options_.require_checkpoint) {
    ReadFile(options_.checkpoint_path, "checkpoint");  // names the file if it is missing
  }
  if (options_.resume && FileExists(options_.checkpoint_path)) {
    const CheckpointMeta meta = LoadCheckpoint(options_.checkpoint_path, *checkpoint_state_,
                                               optimizer_.get(), fingerprint_);
    const auto it = meta.counters.find("step");
    step_ = it == meta.counters.end() ? 0 : it->second;
    if (coordinator_ && meta.counters.count("round") == 1) {
      RoundState state = ReadRoundState(meta);
      state.weights = checkpoint_state_->client_weights.clone();
      state.aggregate = checkpoint_state_->aggregate.clone();
      coordinator_->Restore(std::move(state));
      spdlog::info("resumed from checkpoint '{}' at step {}, round {}, client model version {}",
                   options_.checkpoint_path, step_, coordinator_->round(),
                   coordinator_->version());
    } else {
      spdlog::info("resumed from checkpoint '{}' at step {}", options_.checkpoint_path, step_);
    }
  }
  if (coordinator_) {
    coordinator_->SetRoundClosedCallback(
        [this](const RoundSummary& summary) { OnRoundClosed(summary); });
    spdlog::info("schedule {}: {} round(s) of {} samples, deadline {} ms, quorum {}, {} "
                 "hospital(s) to start, max staleness {}",
                 ScheduleName(options_.rounds.schedule), options_.rounds.rounds,
                 options_.rounds.round_samples, options_.rounds.round_deadline.count(),
                 options_.rounds.quorum, options_.rounds.min_clients,
                 options_.rounds.max_staleness);
  }
  spdlog::info("model {} (fingerprint {}), compression {}", DescribeSpec(options_.model),
               fingerprint_, DescribeCompression(options_.compression));
}

SplitServer::~SplitServer() {
  // Its deadline thread calls back into this object: stop it first.
  coordinator_.reset();
}

v1::JoinReply SplitServer::Join(const std::string& identity, const v1::JoinRequest& request) {
  if (request.protocol_version() != protocol::kProtocolVersion) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      detail::Concat("client speaks protocol version ", request.protocol_version(),
                                     ", server speaks ", protocol::kProtocolVersion));
  }
  if (!options_.allowed_clients.empty() && options_.allowed_clients.count(identity) == 0) {
    spdlog::warn("refused Join from '{}': not on the client allowlist", identity);
    throw StatusError(grpc::StatusCode::PERMISSION_DENIED,
                      "client '" + identity + "' is not allowed to join this server");
  }
  if (request.model_fingerprint() != fingerprint_) {
    spdlog::warn("refused Join from '{}': model fingerprint {} ({}) != server's {} ({})", identity,
                 request.model_fingerprint(), request.model_description(), fingerprint_,
                 DescribeSpec(options_.model));
    throw StatusError(
        grpc::StatusCode::FAILED_PRECONDITION,
        detail::Concat("model fingerprint mismatch: client ", request.model_fingerprint(), " (",
                       request.model_description(), "), server ", fingerprint_, " (",
                       DescribeSpec(options_.model), ")"));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string session_id = NewSessionId();
  sessions_[session_id] = Session{identity, 0, 0};
  sessions_changed_.notify_all();
  if (coordinator_) coordinator_->OnJoin(identity);
  NotifySessionsLocked();
  spdlog::info("client '{}' joined (session {}, {} active)", identity, session_id.substr(0, 8),
               sessions_.size());
  v1::JoinReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_session_id(session_id);
  reply.set_client_name(identity);
  reply.set_model_fingerprint(fingerprint_);
  *reply.mutable_compression() = options_.compression;
  reply.set_client_model_version(coordinator_ ? coordinator_->version() : 0);
  reply.set_server_step(step_);
  reply.mutable_server()->set_max_message_bytes(options_.max_message_bytes);
  reply.mutable_server()->set_model_description(DescribeSpec(options_.model));
  reply.mutable_server()->set_schedule(ScheduleName(options_.rounds.schedule));
  reply.mutable_server()->set_max_batch(options_.max_batch);
  reply.mutable_server()->set_rounds(options_.rounds.rounds);
  reply.mutable_server()->set_max_staleness(options_.rounds.max_staleness);
  return reply;
}

const SplitServer::Session& SplitServer::CheckSession(const std::string& identity,
                                                      const std::string& session_id,
                                                      uint32_t protocol_version) const {
  if (protocol_version != protocol::kProtocolVersion) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      detail::Concat("protocol version ", protocol_version, ", server speaks ",
                                     protocol::kProtocolVersion));
  }
  const auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    throw StatusError(grpc::StatusCode::NOT_FOUND, "unknown or expired session; Join again");
  }
  if (it->second.identity != identity) {
    spdlog::warn("'{}' tried to use a session of '{}'", identity, it->second.identity);
    throw StatusError(grpc::StatusCode::PERMISSION_DENIED,
                      "this session belongs to another client");
  }
  return it->second;
}

v1::TrainReply SplitServer::Train(const std::string& identity, const v1::TrainRequest& request) {
  const protocol::TensorSpec activation_spec = ActivationSpec();
  const protocol::TensorSpec label_spec = LabelSpec();

  // Validate outside the lock: decoding is the expensive, untrusted part.
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CheckSession(identity, request.session_id(), request.protocol_version());
  }
  protocol::DecodedTensor activations =
      protocol::DecodeTensor(request.activations(), activation_spec);
  const at::Tensor labels = protocol::DecodeTensor(request.labels(), label_spec).dense;
  CLEAVE_CHECK_INPUT(labels.size(0) == activations.dense.size(0), "labels have batch ",
                     labels.size(0), ", activations ", activations.dense.size(0));

  std::lock_guard<std::mutex> lock(mutex_);
  auto session_it = sessions_.find(request.session_id());
  if (session_it == sessions_.end()) {
    throw StatusError(grpc::StatusCode::NOT_FOUND, "session ended during the step");
  }
  const auto started = std::chrono::steady_clock::now();
  double lr_scale = 1.0;
  bool round_closing = false;
  if (coordinator_) {
    try {
      lr_scale = coordinator_->OnTrainStep(identity, request.model_version(), labels.size(0),
                                           &round_closing);
    } catch (const StatusError& error) {
      if (error.code() == grpc::StatusCode::ABORTED) {
        ++refused_steps_;
        if (observer_) observer_->OnRefused("step");
      }
      throw;
    }
  }
  model_.top->train();
  at::Tensor input = activations.dense.requires_grad_(true);
  const at::Tensor logits = model_.top->forward(input);
  const at::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
  optimizer_->zero_grad();
  loss.backward();
  if (lr_scale != 1.0) {
    // A step computed with a stale client model moves the server's layers less (Dai et al.).
    std::vector<double> rates;
    for (auto& group : optimizer_->param_groups()) {
      rates.push_back(group.options().get_lr());
      group.options().set_lr(rates.back() * lr_scale);
    }
    optimizer_->step();
    for (size_t g = 0; g < rates.size(); ++g) {
      optimizer_->param_groups()[g].options().set_lr(rates[g]);
    }
  } else {
    optimizer_->step();
  }
  ++step_;
  samples_ += labels.size(0);
  const int64_t correct = logits.argmax(1).eq(labels).sum().item<int64_t>();
  session_it->second.steps += 1;
  session_it->second.samples += labels.size(0);

  v1::TrainReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_step(request.step());
  reply.set_model_version(request.model_version());
  reply.set_loss(loss.item<double>());
  reply.set_correct(correct);
  reply.set_server_step(step_);
  reply.set_round_closing(round_closing);
  const at::Tensor grad = input.grad();
  const ValuePrecision gradient_precision =
      ParseValuePrecision(options_.compression.gradients().value_precision());
  if (gradient_compressor_) {
    // Sparsify the gradient again: over the positions the client sent (indices relative to
    // that set), or over the whole tensor when the activations came dense.
    at::Tensor values = grad.reshape({-1});
    if (activations.was_sparse) {
      std::vector<int64_t> sent(activations.sent_indices.begin(), activations.sent_indices.end());
      values = values.index_select(0, at::tensor(sent, at::kLong));
    }
    const Selection selection = gradient_compressor_->Compress(values);
    protocol::EncodeSparse(values, selection.indices, gradient_precision,
                           reply.mutable_gradients());
    // The message's shape is the full gradient's; the payload's own size says how many values.
    reply.mutable_gradients()->clear_shape();
    for (int64_t d : grad.sizes()) reply.mutable_gradients()->add_shape(d);
  } else if (activations.was_sparse) {
    protocol::EncodeValuesAt(grad, activations.sent_indices, gradient_precision,
                             reply.mutable_gradients());
  } else {
    protocol::EncodeDense(grad, reply.mutable_gradients());
  }
  CountBytesLocked(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  if (observer_) {
    observer_->OnStep(labels.size(0), std::chrono::duration<double>(
                                          std::chrono::steady_clock::now() - started)
                                          .count());
  }
  if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) {
    SaveCheckpointLocked();
  }
  return reply;
}

v1::EvaluateReply SplitServer::Evaluate(const std::string& identity,
                                        const v1::EvaluateRequest& request) {
  const protocol::TensorSpec activation_spec = ActivationSpec();
  const protocol::TensorSpec label_spec = LabelSpec();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CheckSession(identity, request.session_id(), request.protocol_version());
  }
  const at::Tensor activations =
      protocol::DecodeTensor(request.activations(), activation_spec).dense;
  const at::Tensor labels = protocol::DecodeTensor(request.labels(), label_spec).dense;
  CLEAVE_CHECK_INPUT(labels.size(0) == activations.size(0), "labels have batch ", labels.size(0),
                     ", activations ", activations.size(0));
  std::lock_guard<std::mutex> lock(mutex_);
  at::NoGradGuard no_grad;
  model_.top->eval();
  const at::Tensor logits = model_.top->forward(activations);
  const at::Tensor loss = torch::nn::functional::cross_entropy(
      logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  v1::EvaluateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_loss_sum(loss.item<double>());
  reply.set_correct(logits.argmax(1).eq(labels).sum().item<int64_t>());
  reply.set_count(labels.size(0));
  CountBytesLocked(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

protocol::TensorSpec SplitServer::ActivationSpec() const {
  protocol::TensorSpec spec;
  spec.sample_shape = model_.cut_shape;
  spec.max_batch = options_.max_batch;
  spec.allow_sparse = options_.compression.activations().method() != "none";
  return spec;
}

protocol::TensorSpec SplitServer::LabelSpec() const {
  protocol::TensorSpec spec;
  spec.dtype = v1::Tensor::INT64;
  spec.max_batch = options_.max_batch;
  spec.int_upper_bound = options_.model.num_classes;
  return spec;
}

void SplitServer::CountBytesLocked(const std::string& session_id, size_t received, size_t sent) {
  const auto session = sessions_.find(session_id);  // gone if it ended during the call
  if (session != sessions_.end()) {
    session->second.bytes_received += static_cast<int64_t>(received);
    session->second.bytes_sent += static_cast<int64_t>(sent);
  }
  bytes_received_ += static_cast<int64_t>(received);
  bytes_sent_ += static_cast<int64_t>(sent);
  if (observer_) observer_->OnBytes(static_cast<int64_t>(received), static_cast<int64_t>(sent));
}

void SplitServer::NotifySessionsLocked() {
  if (!observer_) return;
  observer_->OnSessions(static_cast<int64_t>(sessions_.size()), ActiveClientsLocked());
}

int64_t SplitServer::ActiveClientsLocked() const {
  std::set<std::string> clients;
  for (const auto& [id, session] : sessions_) clients.insert(session.identity);
  return static_cast<int64_t>(clients.size());
}

void SplitServer::Leave(const std::string& identity, const std::string& session_id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const Session& session = CheckSession(identity, session_id, protocol::kProtocolVersion);
    spdlog::info("client '{}' left after {} steps, {} samples; received {} bytes, sent {} bytes",
                 identity, session.steps, session.samples, session.bytes_received,
                 session.bytes_sent);
    sessions_.erase(session_id);
    sessions_changed_.notify_all();
    NotifySessionsLocked();
  }
  // Outside the lock: a round this closes calls back into SaveCheckpoint.
  if (coordinator_) coordinator_->OnLeave(identity);
}

void SplitServer::ReleaseSession(const std::string& identity, const std::string& session_id,
                                 const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = sessions_.find(session_id);
    if (it == sessions_.end() || it->second.identity != identity) return;
    spdlog::warn("released session of '{}': {}", identity, reason);
    sessions_.erase(it);
    sessions_changed_.notify_all();
    NotifySessionsLocked();
  }
  if (coordinator_) coordinator_->OnLeave(identity);
}

v1::SyncReply SplitServer::Sync(const std::string& identity, const v1::SyncRequest& request) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CheckSession(identity, request.session_id(), request.protocol_version());
  }
  if (!coordinator_) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      "this server runs the single schedule: there are no rounds to sync");
  }
  CLEAVE_CHECK_INPUT(request.have_version() >= -1, "have_version ", request.have_version(),
                     " is not a version");
  const auto wait = std::min(std::chrono::milliseconds(std::max<int64_t>(0, request.wait_ms())),
                             options_.max_sync_wait);
  // Not under the server's lock: this may wait for the round to change.
  const SyncDecision decision = coordinator_->Sync(identity, request.have_version(), wait);
  v1::SyncReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  switch (decision.action) {
    case SyncDecision::Action::kWait:
      reply.set_action(v1::SyncReply::WAIT);
      break;
    case SyncDecision::Action::kTrain:
      reply.set_action(v1::SyncReply::TRAIN);
      break;
    case SyncDecision::Action::kDone:
      reply.set_action(v1::SyncReply::DONE);
      break;
  }
  reply.set_round(decision.round);
  reply.set_model_version(decision.version);
  reply.set_rounds(options_.rounds.rounds);
  if (decision.weights.defined()) protocol::EncodeDense(decision.weights, reply.mutable_weights());
  std::lock_guard<std::mutex> lock(mutex_);
  CountBytesLocked(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

v1::UpdateReply SplitServer::SubmitUpdate(const std::string& identity,
                                          const v1::UpdateRequest& request) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CheckSession(identity, request.session_id(), request.protocol_version());
  }
  if (!coordinator_) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      "this server runs the single schedule: it takes no client-model updates");
  }
  protocol::TensorSpec spec;
  spec.max_batch = coordinator_->num_parameters();
  spec.allow_sparse = options_.compression.updates().method() != "none";
  const at::Tensor delta = protocol::DecodeTensor(request.delta(), spec).dense;
  CLEAVE_CHECK_INPUT(delta.size(0) == coordinator_->num_parameters(), "update has ",
                     delta.size(0), " values, the client-side model has ",
                     coordinator_->num_parameters());
  UpdateOutcome outcome;
  try {
    outcome = coordinator_->Submit(identity, request.base_version(), request.round(),
                                   request.samples(), delta);
  } catch (const StatusError& error) {
    if (error.code() == grpc::StatusCode::ABORTED && observer_) observer_->OnRefused("update");
    spdlog::warn("refused update of '{}' for round {}: {}", identity, request.round(),
                 error.what());
    throw;
  }
  v1::UpdateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_duplicate(outcome.duplicate);
  reply.set_staleness(outcome.staleness);
  reply.set_scale(outcome.scale);
  reply.set_model_version(outcome.version);
  if (outcome.duplicate) {
    spdlog::info("update of '{}' for round {} was applied before; ignored", identity,
                 request.round());
  } else {
    if (observer_) observer_->OnUpdate(outcome.staleness);
    // Accepted updates are durable before the hospital hears so.
    SaveCheckpoint();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  CountBytesLocked(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

void SplitServer::OnRoundClosed(const RoundSummary& summary) {
  const ServerCounters totals = counters();
  spdlog::info(
      "round {} done ({}): {} update(s), {} stale, {} samples in {:.1f} s ({:.0f} samples/s), "
      "client model version {}, {} hospital(s) connected, {:.1f} MB received, {:.1f} MB sent{}",
      summary.round, summary.why, summary.updates, summary.stale_updates, summary.samples,
      summary.seconds, summary.seconds > 0 ? summary.samples / summary.seconds : 0.0,
      summary.version, totals.active_clients, totals.bytes_received / 1e6,
      totals.bytes_sent / 1e6, summary.finished ? "; training finished" : "");
  if (observer_) observer_->OnRound(summary);
  SaveCheckpoint();
}

void SplitServer::SaveCheckpoint() {
  std::lock_guard<std::mutex> lock(mutex_);
  SaveCheckpointLocked();
}

void SplitServer::SaveCheckpointLocked() {
  if (options_.checkpoint_path.empty()) return;
  CheckpointMeta meta;
  meta.fingerprint = fingerprint_;
  meta.counters["step"] = step_;
  if (coordinator_) {
    const RoundState state = coordinator_->Snapshot();
    WriteRoundState(state, &meta);
    checkpoint_state_->client_weights.copy_(state.weights);
    checkpoint_state_->aggregate.copy_(state.aggregate);
  }
  cleave::SaveCheckpoint(options_.checkpoint_path, *checkpoint_state_, optimizer_.get(), meta);
  spdlog::debug("checkpoint written to '{}' at step {}", options_.checkpoint_path, step_);
}

int64_t SplitServer::step() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return step_;
}

int64_t SplitServer::bytes_received() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_received_;
}

int64_t SplitServer::bytes_sent() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_sent_;
}

ServerCounters SplitServer::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  ServerCounters counters;
  counters.steps = step_;
  counters.samples = samples_;
  counters.bytes_received = bytes_received_;
  counters.bytes_sent = bytes_sent_;
  counters.active_sessions = static_cast<int64_t>(sessions_.size());
  counters.active_clients = ActiveClientsLocked();
  counters.refused_steps = refused_steps_;
  return counters;
}

size_t SplitServer::active_sessions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sessions_.size();
}

bool SplitServer::WaitForActiveSessions(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return sessions_changed_.wait_for(lock, timeout, [&] { return sessions_.size() == count; });
}

}  // namespace cleave::server
