#include "cleave/server/split_server.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <sstream>

#include "cleave/compress/compressor.h"
#include "cleave/core/checkpoint.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/optimizer_factory.h"
#include "cleave/core/peer_text.h"
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

namespace {

// What a checkpoint holds, as one module so that it is written and checked as one file: the
// server-side model (the optimizer's parameters) and the round state's tensors (the client-side
// weights and the round's accepted, not yet applied updates); the round state's numbers travel
// as checkpoint counters. Built for each save and load: the number of updates varies.
struct CheckpointModule : torch::nn::Module {
  CheckpointModule(torch::nn::Sequential top, int64_t client_parameters, int64_t pending) {
    register_module("top", std::move(top));
    client_weights = register_buffer("client_weights", at::zeros({client_parameters}));
    round_updates = register_buffer("round_updates", at::zeros({pending, client_parameters}));
  }
  at::Tensor client_weights;
  at::Tensor round_updates;  // [pending, P]
};

constexpr const char* kPendingPrefix = "pending.";

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
  c["pending"] = static_cast<int64_t>(state.pending.size());
  for (size_t i = 0; i < state.pending.size(); ++i) {
    c[kPendingPrefix + std::to_string(i) + ".samples"] = state.pending[i].samples;
    c[kPendingPrefix + std::to_string(i) + ".staleness"] = state.pending[i].staleness;
  }
  c["round_samples_trained"] = state.round_samples_trained;
  c["turn"] = state.turn;
  c["finished"] = state.finished ? 1 : 0;
  c["updates_accepted"] = state.updates_accepted;
  c["updates_applied"] = state.updates_applied;
  c["updates_refused"] = state.updates_refused;
  c["updates_duplicate"] = state.updates_duplicate;
  c["updates_capped"] = state.updates_capped;
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

int64_t PendingCount(const CheckpointMeta& meta) {
  const auto it = meta.counters.find("pending");
  const int64_t count = it == meta.counters.end() ? 0 : it->second;
  CLEAVE_CHECK_USER(count >= 0 && count <= 1000000, "checkpoint claims ", count,
                    " pending updates");
  return count;
}

// The round state's numbers; the tensors (weights, pending deltas) are filled in by the caller.
RoundState ReadRoundState(const CheckpointMeta& meta) {
  RoundState state;
  std::map<int64_t, std::string> joined;
  state.pending.resize(static_cast<size_t>(PendingCount(meta)));
  const auto counter = [&](const std::string& name) {
    const auto it = meta.counters.find(name);
    CLEAVE_CHECK_USER(it != meta.counters.end(), "checkpoint lacks counter '", name, "'");
    return it->second;
  };
  for (size_t i = 0; i < state.pending.size(); ++i) {
    state.pending[i].samples = counter(kPendingPrefix + std::to_string(i) + ".samples");
    state.pending[i].staleness = counter(kPendingPrefix + std::to_string(i) + ".staleness");
  }
  for (const auto& [name, value] : meta.counters) {
    if (name == "round")
      state.round = value;
    else if (name == "version")
      state.version = value;
    else if (name == "round_samples_trained")
      state.round_samples_trained = value;
    else if (name == "turn")
      state.turn = value;
    else if (name == "finished")
      state.finished = value != 0;
    else if (name == "updates_accepted")
      state.updates_accepted = value;
    else if (name == "updates_applied")
      state.updates_applied = value;
    else if (name == "updates_refused")
      state.updates_refused = value;
    else if (name == "updates_duplicate")
      state.updates_duplicate = value;
    else if (name == "updates_capped")
      state.updates_capped = value;
    else if (name == "steps_refused")
      state.steps_refused = value;
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
  CLEAVE_CHECK_USER(state.round >= 1 && state.version >= 0,
                    "checkpoint has an impossible round state (round ", state.round, ", version ",
                    state.version, ")");
  return state;
}

}  // namespace

double DeriveActivationBound(const ModelSpec& spec, SplitModel model, uint64_t seed) {
  at::NoGradGuard no_grad;
  // A generator of its own: drawing from the global one would change later dropout masks.
  const at::Generator generator = at::detail::createCPUGenerator(seed);
  std::vector<int64_t> shape = {64};
  shape.insert(shape.end(), spec.input_shape.begin(), spec.input_shape.end());
  const at::Tensor inputs = at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat));
  const bool was_training = model.bottom->is_training();
  model.bottom->eval();
  const double largest = model.bottom->forward(inputs).abs().max().item<double>();
  model.bottom->train(was_training);
  return std::max(1000.0 * largest, 100.0);
}

double DeriveUpdateBound(const SplitModel& model) {
  return std::max(100.0 * FlattenParameters(*model.bottom).abs().max().item<double>(), 1.0);
}

SplitServer::SplitServer(SplitServerOptions options) : options_(std::move(options)) {
  options_.compression = NormalizeCompression(options_.compression);
  CLEAVE_CHECK_USER(options_.max_activation_abs >= 0, "--max-activation-value must be >= 0");
  CLEAVE_CHECK_USER(options_.rounds.max_update_abs >= 0, "--max-update-value must be >= 0");
  CLEAVE_CHECK_USER(options_.max_sessions_per_identity >= 1, "--max-sessions must be >= 1");
  CLEAVE_CHECK_USER(options_.session_idle_timeout.count() >= 0, "--session-idle must be >= 0");
  fingerprint_ = ModelFingerprint(options_.model);
  if (options_.compression.gradients().method() != "none") {
    gradient_compressor_ =
        MakeCompressor({options_.compression.gradients().method(),
                        options_.compression.gradients().density(), options_.seed});
  }
  model_ = BuildSplitModel(options_.model, options_.seed);
  activation_bound_ = options_.max_activation_abs > 0
                          ? options_.max_activation_abs
                          : DeriveActivationBound(options_.model, model_, options_.seed);
  if (options_.rounds.max_update_abs == 0)
    options_.rounds.max_update_abs = DeriveUpdateBound(model_);
  optimizer_ = MakeOptimizer(options_.optimizer, model_.top->parameters(), options_.learning_rate);
  if (options_.rounds.schedule != Schedule::kSingle) {
    coordinator_ =
        std::make_unique<RoundCoordinator>(options_.rounds, FlattenParameters(*model_.bottom));
  }
  CLEAVE_CHECK_USER(!options_.resume || !options_.checkpoint_path.empty(),
                    "--resume needs --checkpoint FILE");
  if (options_.resume && options_.require_checkpoint) {
    ReadFile(options_.checkpoint_path, "checkpoint");  // names the file if it is missing
  }
  if (options_.resume && FileExists(options_.checkpoint_path)) ResumeFromCheckpoint();
  if (coordinator_) {
    coordinator_->SetRoundClosedCallback(
        [this](const RoundSummary& summary) { OnRoundClosed(summary); });
    spdlog::info(
        "schedule {}: {} round(s) of {} samples, deadline {} ms, quorum {}, {} "
        "hospital(s) to start, max staleness {}, aggregation {}",
        ScheduleName(options_.rounds.schedule), options_.rounds.rounds,
        options_.rounds.round_samples, options_.rounds.round_deadline.count(),
        options_.rounds.quorum, options_.rounds.min_clients, options_.rounds.max_staleness,
        AggregationName(options_.rounds.aggregation.method));
  }
  spdlog::info("model {} (fingerprint {}), compression {}", DescribeSpec(options_.model),
               fingerprint_, DescribeCompression(options_.compression));
  spdlog::info(
      "bounds: activation values {:g}, update values {:g}; sessions idle {} s expire, "
      "{} per identity",
      activation_bound_, options_.rounds.max_update_abs,
      options_.session_idle_timeout.count() / 1000.0, options_.max_sessions_per_identity);
  if (options_.session_idle_timeout.count() > 0) reaper_ = std::thread([this] { ReapLoop(); });
}

void SplitServer::ResumeFromCheckpoint() {
  const int64_t client_parameters = FlattenParameters(*model_.bottom).numel();
  const CheckpointMeta header = ReadCheckpointMeta(options_.checkpoint_path, fingerprint_);
  CheckpointModule state(model_.top, client_parameters, PendingCount(header));
  const CheckpointMeta meta =
      LoadCheckpoint(options_.checkpoint_path, state, optimizer_.get(), fingerprint_);
  const auto it = meta.counters.find("step");
  step_ = it == meta.counters.end() ? 0 : it->second;
  if (coordinator_ && meta.counters.count("round") == 1) {
    RoundState round = ReadRoundState(meta);
    round.weights = state.client_weights.clone();
    for (size_t i = 0; i < round.pending.size(); ++i) {
      round.pending[i].delta = state.round_updates[static_cast<int64_t>(i)].clone();
    }
    coordinator_->Restore(std::move(round));
    spdlog::info("resumed from checkpoint '{}' at step {}, round {}, client model version {}",
                 options_.checkpoint_path, step_, coordinator_->round(), coordinator_->version());
  } else {
    spdlog::info("resumed from checkpoint '{}' at step {}", options_.checkpoint_path, step_);
  }
}

SplitServer::~SplitServer() {
  {
    std::lock_guard<std::mutex> lock(reaper_mutex_);
    reaper_stop_ = true;
  }
  reaper_wake_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  // Its deadline thread calls back into this object: stop it first.
  coordinator_.reset();
}

void SplitServer::ReapLoop() {
  const auto period = std::clamp(options_.session_idle_timeout / 4, std::chrono::milliseconds(10),
                                 std::chrono::milliseconds(5000));
  std::unique_lock<std::mutex> lock(reaper_mutex_);
  while (!reaper_wake_.wait_for(lock, period, [this] { return reaper_stop_; })) {
    lock.unlock();
    ExpireIdleSessions(std::chrono::steady_clock::now());
    lock.lock();
  }
}

int SplitServer::ExpireIdleSessions(std::chrono::steady_clock::time_point now) {
  if (options_.session_idle_timeout.count() <= 0) return 0;
  std::vector<std::string> gone;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (now - it->second.last_call > options_.session_idle_timeout) {
        spdlog::warn("session of '{}' expired after {} s without a call",
                     PeerText(it->second.identity), options_.session_idle_timeout.count() / 1000.0);
        gone.push_back(it->second.identity);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
    if (gone.empty()) return 0;
    expired_sessions_ += static_cast<int64_t>(gone.size());
    sessions_changed_.notify_all();
    NotifySessionsLocked();
  }
  if (observer_) observer_->OnSessionsExpired(static_cast<int64_t>(gone.size()));
  // Outside the lock: a round this closes calls back into SaveCheckpoint.
  if (coordinator_) {
    for (const std::string& identity : gone) coordinator_->OnLeave(identity);
  }
  return static_cast<int>(gone.size());
}

v1::JoinReply SplitServer::Join(const std::string& identity, const v1::JoinRequest& request) {
  if (request.protocol_version() != protocol::kProtocolVersion) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      detail::Concat("client speaks protocol version ", request.protocol_version(),
                                     ", server speaks ", protocol::kProtocolVersion));
  }
  if (!options_.allowed_clients.empty() && options_.allowed_clients.count(identity) == 0) {
    spdlog::warn("refused Join from '{}': not on the client allowlist", PeerText(identity));
    throw StatusError(grpc::StatusCode::PERMISSION_DENIED,
                      "client '" + PeerText(identity) + "' is not allowed to join this server");
  }
  if (request.model_fingerprint() != fingerprint_) {
    // Peer text is escaped and capped: it cannot forge a log line or blow up the status.
    spdlog::warn("refused Join from '{}': model fingerprint {} ({}) != server's {} ({})",
                 PeerText(identity), PeerText(request.model_fingerprint(), 64),
                 PeerText(request.model_description()), fingerprint_, DescribeSpec(options_.model));
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      detail::Concat("model fingerprint mismatch: client ",
                                     PeerText(request.model_fingerprint(), 64), " (",
                                     PeerText(request.model_description()), "), server ",
                                     fingerprint_, " (", DescribeSpec(options_.model), ")"));
  }
  v1::JoinReply reply;
  int replaced = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // At most max_sessions_per_identity: the oldest sessions of this identity make room.
    std::vector<std::map<std::string, Session>::iterator> own;
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      if (it->second.identity == identity) own.push_back(it);
    }
    std::sort(own.begin(), own.end(),
              [](const auto& a, const auto& b) { return a->second.created < b->second.created; });
    for (size_t i = 0; i + options_.max_sessions_per_identity <= own.size(); ++i) {
      sessions_.erase(own[i]);
      ++replaced;
    }
    replaced_sessions_ += replaced;
    const std::string session_id = NewSessionId();
    Session& session = sessions_[session_id];
    session.identity = identity;
    session.last_call = std::chrono::steady_clock::now();
    session.created = ++sessions_created_;
    sessions_changed_.notify_all();
    if (coordinator_ && replaced == 0) coordinator_->OnJoin(identity);
    NotifySessionsLocked();
    spdlog::info("client '{}' joined (session {}, {} active{})", PeerText(identity),
                 session_id.substr(0, 8), sessions_.size(),
                 replaced > 0 ? ", replacing its earlier session" : "");
    reply.set_protocol_version(protocol::kProtocolVersion);
    reply.set_session_id(session_id);
    reply.set_client_name(identity);
    reply.set_model_fingerprint(fingerprint_);
    *reply.mutable_compression() = options_.compression;
    reply.set_server_step(step_);
  }
  // Outside the lock: a round this closes calls back into SaveCheckpoint.
  if (coordinator_ && replaced > 0) coordinator_->OnRejoin(identity);
  reply.set_client_model_version(coordinator_ ? coordinator_->version() : 0);
  reply.mutable_server()->set_max_message_bytes(options_.max_message_bytes);
  reply.mutable_server()->set_model_description(DescribeSpec(options_.model));
  reply.mutable_server()->set_schedule(ScheduleName(options_.rounds.schedule));
  reply.mutable_server()->set_max_batch(options_.max_batch);
  reply.mutable_server()->set_rounds(options_.rounds.rounds);
  reply.mutable_server()->set_max_staleness(options_.rounds.max_staleness);
  return reply;
}

SplitServer::Session& SplitServer::CheckSession(const std::string& identity,
                                                const std::string& session_id,
                                                uint32_t protocol_version) {
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
    spdlog::warn("'{}' tried to use a session of '{}'", PeerText(identity),
                 PeerText(it->second.identity));
    throw StatusError(grpc::StatusCode::PERMISSION_DENIED,
                      "this session belongs to another client");
  }
  it->second.last_call = std::chrono::steady_clock::now();
  return it->second;
}

namespace {

const char* RefusalReason(const std::exception& error) {
  if (const auto* refusal = dynamic_cast<const RoundRefusal*>(&error)) {
    return refusal->reason().c_str();
  }
  if (dynamic_cast<const NotFinite*>(&error)) return "nonfinite";
  if (dynamic_cast<const OutOfBounds*>(&error)) return "out_of_bounds";
  return "invalid";
}

// The optimizer's second moment squares each gradient: beyond this it overflows float.
constexpr double kMaxGradientAbs = 1e18;

void CheckGradient(const at::Tensor& gradient, const char* what) {
  if (!gradient.defined()) return;
  const double largest = gradient.abs().max().item<double>();
  if (!std::isfinite(largest)) throw NotFinite(detail::Concat(what, " is not finite"));
  if (largest > kMaxGradientAbs) {
    throw OutOfBounds(detail::Concat(what, " reaches ", largest, ", beyond ", kMaxGradientAbs));
  }
}

}  // namespace

void SplitServer::NoteRefusal(const char* what, const std::exception& error) {
  const char* reason = RefusalReason(error);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++(std::string(what) == "step" ? refused_steps_ : refused_updates_);
  }
  if (observer_) observer_->OnRefused(what, reason);
}

void SplitServer::CheckGradientsLocked(const at::Tensor& cut_gradient) const {
  CheckGradient(cut_gradient, "the gradient at the cut");
  for (const auto& parameter : model_.top->named_parameters()) {
    CheckGradient(parameter.value().grad(), "a gradient of the server's layers");
  }
}

void SplitServer::StepLocked(double lr_scale) {
  std::vector<at::Tensor> before;
  for (const at::Tensor& parameter : model_.top->parameters()) {
    before.push_back(parameter.detach().clone());
  }
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
  bool finite = true;
  for (const at::Tensor& parameter : model_.top->parameters()) {
    finite = finite && parameter.isfinite().all().item<bool>();
  }
  if (!finite) {
    at::NoGradGuard no_grad;
    size_t i = 0;
    for (at::Tensor& parameter : model_.top->parameters()) parameter.copy_(before[i++]);
    throw NotFinite("the step would make the server's layers non-finite; not applied");
  }
}

v1::TrainReply SplitServer::Train(const std::string& identity, const v1::TrainRequest& request) {
  const protocol::TensorSpec activation_spec = ActivationSpec();
  const protocol::TensorSpec label_spec = LabelSpec();

  // Validate outside the lock: decoding is the expensive, untrusted part.
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CheckSession(identity, request.session_id(), request.protocol_version());
  }
  protocol::DecodedTensor activations;
  at::Tensor labels;
  try {
    activations = protocol::DecodeTensor(request.activations(), activation_spec);
    labels = protocol::DecodeTensor(request.labels(), label_spec).dense;
    CLEAVE_CHECK_INPUT(labels.size(0) == activations.dense.size(0), "labels have batch ",
                       labels.size(0), ", activations ", activations.dense.size(0));
  } catch (const InvalidInput& error) {
    NoteRefusal("step", error);
    if (coordinator_) coordinator_->Exclude(identity);
    throw;
  }

  std::unique_lock<std::mutex> lock(mutex_);
  auto session_it = sessions_.find(request.session_id());
  if (session_it == sessions_.end()) {
    throw StatusError(grpc::StatusCode::NOT_FOUND, "session ended during the step");
  }
  const auto started = std::chrono::steady_clock::now();
  model_.top->train();
  at::Tensor input = activations.dense.requires_grad_(true);
  const at::Tensor logits = model_.top->forward(input);
  const at::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
  double lr_scale = 1.0;
  bool round_closing = false;
  try {
    // Nothing is committed until the step is known to be finite: the loss, every gradient,
    // then (in StepLocked) the updated layers.
    if (!std::isfinite(loss.item<double>())) {
      throw NotFinite("the loss of this batch is not finite; the model was not changed");
    }
    optimizer_->zero_grad();
    loss.backward();
    CheckGradientsLocked(input.grad());
    if (coordinator_) {
      lr_scale = coordinator_->OnTrainStep(identity, request.model_version(), labels.size(0),
                                           &round_closing);
    }
    StepLocked(lr_scale);
  } catch (const InvalidInput& error) {
    optimizer_->zero_grad();
    ++refused_steps_;
    if (observer_) observer_->OnRefused("step", RefusalReason(error));
    // Outside the lock: a round this closes calls back into SaveCheckpoint.
    lock.unlock();
    if (coordinator_) coordinator_->Exclude(identity);
    throw;
  } catch (const RoundRefusal& error) {
    optimizer_->zero_grad();
    ++refused_steps_;
    if (observer_) observer_->OnRefused("step", RefusalReason(error));
    throw;
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
    observer_->OnStep(
        labels.size(0),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
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
  spec.max_abs = activation_bound_;
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
                 PeerText(identity), session.steps, session.samples, session.bytes_received,
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
    spdlog::warn("released session of '{}': {}", PeerText(identity), reason);
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
  spec.max_abs = options_.rounds.max_update_abs;
  UpdateOutcome outcome;
  try {
    const at::Tensor delta = protocol::DecodeTensor(request.delta(), spec).dense;
    CLEAVE_CHECK_INPUT(delta.size(0) == coordinator_->num_parameters(), "update has ",
                       delta.size(0), " values, the client-side model has ",
                       coordinator_->num_parameters());
    outcome = coordinator_->Submit(identity, request.base_version(), request.round(),
                                   request.samples(), delta);
  } catch (const InvalidInput& error) {
    // Malformed or beyond a bound before it reached the rounds: the hospital is out of this round.
    NoteRefusal("update", error);
    coordinator_->Exclude(identity);
    throw;
  } catch (const RoundRefusal& error) {
    NoteRefusal("update", error);
    throw;
  }
  v1::UpdateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_duplicate(outcome.duplicate);
  reply.set_staleness(outcome.staleness);
  reply.set_scale(outcome.scale);
  reply.set_model_version(outcome.version);
  if (outcome.duplicate) {
    spdlog::info("update of '{}' for round {} was applied before; ignored", PeerText(identity),
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
      summary.version, totals.active_clients, totals.bytes_received / 1e6, totals.bytes_sent / 1e6,
      summary.finished ? "; training finished" : "");
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
  const int64_t client_parameters = FlattenParameters(*model_.bottom).numel();
  RoundState state;
  if (coordinator_) state = coordinator_->Snapshot();
  CheckpointModule module(model_.top, client_parameters,
                          static_cast<int64_t>(state.pending.size()));
  if (coordinator_) {
    WriteRoundState(state, &meta);
    module.client_weights.copy_(state.weights);
    for (size_t i = 0; i < state.pending.size(); ++i) {
      module.round_updates[static_cast<int64_t>(i)].copy_(state.pending[i].delta);
    }
  }
  // Refuses (and keeps the previous file) if anything in it is not finite.
  cleave::SaveCheckpoint(options_.checkpoint_path, module, optimizer_.get(), meta);
  spdlog::debug("checkpoint written to '{}' at step {}", options_.checkpoint_path, step_);
}

std::vector<at::Tensor> SplitServer::top_parameters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<at::Tensor> copies;
  for (const at::Tensor& parameter : model_.top->parameters()) {
    copies.push_back(parameter.detach().clone());
  }
  return copies;
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
  counters.refused_updates = refused_updates_;
  counters.expired_sessions = expired_sessions_;
  counters.replaced_sessions = replaced_sessions_;
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
