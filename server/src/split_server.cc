#include "cleave/server/split_server.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/optimizer_factory.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/client_model_codec.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/status_error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/server_checkpoint.h"

namespace cleave::server {

using protocol::StatusError;
using Clock = std::chrono::steady_clock;

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

namespace {

const char* RefusalReason(const std::exception& error) {
  if (const auto* refusal = dynamic_cast<const RoundRefusal*>(&error)) {
    return refusal->reason().c_str();
  }
  if (dynamic_cast<const NotFinite*>(&error)) return "nonfinite";
  if (dynamic_cast<const OutOfBounds*>(&error)) return "out_of_bounds";
  return "invalid";
}

void CheckVersion(uint32_t version) {
  if (version != protocol::kProtocolVersion) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      detail::Concat("protocol version ", version, ", server speaks ",
                                     protocol::kProtocolVersion));
  }
}

}  // namespace

SplitServer::SplitServer(SplitServerOptions options)
    : options_(std::move(options)), sessions_(options_.max_sessions_per_identity) {
  link_spec_ = protocol::ParseLinkSpec(options_.compression);
  options_.compression = protocol::ToProto(link_spec_);  // advertised in Join
  CLEAVE_CHECK_USER(options_.max_activation_abs >= 0, "--max-activation-value must be >= 0");
  CLEAVE_CHECK_USER(options_.rounds.max_update_abs >= 0, "--max-update-value must be >= 0");
  CLEAVE_CHECK_USER(options_.session_idle_timeout.count() >= 0, "--session-idle must be >= 0");
  fingerprint_ = ModelFingerprint(options_.model);
  gradient_encoder_ =
      std::make_unique<protocol::GradientEncoder>(link_spec_.gradients, options_.seed);
  const SplitModel model = BuildSplitModel(options_.model, options_.seed);
  cut_shape_ = model.cut_shape;
  const at::Tensor client_weights = FlattenParameters(*model.bottom);
  client_parameters_ = client_weights.numel();
  activation_bound_ = options_.max_activation_abs > 0
                          ? options_.max_activation_abs
                          : DeriveActivationBound(options_.model, model, options_.seed);
  if (options_.rounds.max_update_abs == 0) options_.rounds.max_update_abs = DeriveUpdateBound(model);
  activation_decoder_ =
      std::make_unique<protocol::ActivationDecoder>(link_spec_.activations, ActivationSpec());
  top_ = std::make_unique<TopModel>(
      model.top,
      MakeOptimizer(options_.optimizer, model.top->parameters(), options_.learning_rate));
  if (options_.rounds.schedule != Schedule::kSingle) {
    coordinator_ = std::make_unique<RoundCoordinator>(options_.rounds, client_weights);
  }
  CLEAVE_CHECK_USER(!options_.resume || !options_.checkpoint_path.empty(),
                    "--resume needs --checkpoint FILE");
  if (options_.resume && options_.require_checkpoint) {
    ReadFile(options_.checkpoint_path, "checkpoint");  // names the file if it is missing
  }
  if (options_.resume && FileExists(options_.checkpoint_path)) Resume();
  if (coordinator_) {
    coordinator_->SetRoundClosedCallback(
        [this](const RoundSummary& summary) { OnRoundClosed(summary); });
    spdlog::info("schedule {}: {} round(s) of {} samples, deadline {} ms, quorum {}, {} "
                 "hospital(s) to start, max staleness {}, aggregation {}",
                 ScheduleName(options_.rounds.schedule), options_.rounds.rounds,
                 options_.rounds.round_samples, options_.rounds.round_deadline.count(),
                 options_.rounds.quorum, options_.rounds.min_clients,
                 options_.rounds.max_staleness,
                 AggregationName(options_.rounds.aggregation.method));
  }
  spdlog::info("model {} (fingerprint {}), compression {}", DescribeSpec(options_.model),
               fingerprint_, protocol::Describe(link_spec_));
  spdlog::info("bounds: activation values {:g}, update values {:g}; sessions idle {} s expire, "
               "{} per identity",
               activation_bound_, options_.rounds.max_update_abs,
               options_.session_idle_timeout.count() / 1000.0, options_.max_sessions_per_identity);
  if (options_.session_idle_timeout.count() > 0) reaper_ = std::thread([this] { ReapLoop(); });
}

void SplitServer::Resume() {
  const ServerCheckpoint loaded =
      LoadServerCheckpoint(options_.checkpoint_path, fingerprint_, top_->layers(),
                           &top_->optimizer(), client_parameters_);
  step_ = loaded.step;
  if (coordinator_ && loaded.round) {
    coordinator_->Restore(*loaded.round);
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
  const auto period = std::clamp(options_.session_idle_timeout / 4,
                                 std::chrono::milliseconds(10), std::chrono::milliseconds(5000));
  std::unique_lock<std::mutex> lock(reaper_mutex_);
  while (!reaper_wake_.wait_for(lock, period, [this] { return reaper_stop_; })) {
    lock.unlock();
    ExpireIdleSessions(Clock::now());
    lock.lock();
  }
}

int SplitServer::ExpireIdleSessions(Clock::time_point now) {
  if (options_.session_idle_timeout.count() <= 0) return 0;
  const std::vector<Session> gone = sessions_.ExpireBefore(now - options_.session_idle_timeout);
  if (gone.empty()) return 0;
  for (const Session& session : gone) {
    spdlog::warn("session of '{}' expired after {} s without a call", PeerText(session.identity),
                 options_.session_idle_timeout.count() / 1000.0);
  }
  NotifySessions();
  if (observer_) observer_->OnSessionsExpired(static_cast<int64_t>(gone.size()));
  if (coordinator_) {
    for (const Session& session : gone) coordinator_->OnLeave(session.identity);
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
                 PeerText(request.model_description()), fingerprint_,
                 DescribeSpec(options_.model));
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      detail::Concat("model fingerprint mismatch: client ",
                                     PeerText(request.model_fingerprint(), 64), " (",
                                     PeerText(request.model_description()), "), server ",
                                     fingerprint_, " (", DescribeSpec(options_.model), ")"));
  }
  const SessionTable::Opened opened = sessions_.Open(identity, Clock::now());
  if (coordinator_) {
    // A new session that replaced the hospital's earlier one: it restarted or lost its
    // connection, and takes part in the round again through Sync.
    if (opened.replaced > 0) {
      coordinator_->OnRejoin(identity);
    } else {
      coordinator_->OnJoin(identity);
    }
  }
  NotifySessions();
  spdlog::info("client '{}' joined (session {}, {} active{})", PeerText(identity),
               opened.id.substr(0, 8), sessions_.size(),
               opened.replaced > 0 ? ", replacing its earlier session" : "");
  v1::JoinReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_session_id(opened.id);
  reply.set_client_name(identity);
  reply.set_model_fingerprint(fingerprint_);
  *reply.mutable_compression() = options_.compression;
  reply.set_server_step(step());
  reply.set_client_model_version(coordinator_ ? coordinator_->version() : 0);
  reply.mutable_server()->set_max_message_bytes(options_.max_message_bytes);
  reply.mutable_server()->set_model_description(DescribeSpec(options_.model));
  reply.mutable_server()->set_schedule(ScheduleName(options_.rounds.schedule));
  reply.mutable_server()->set_max_batch(options_.max_batch);
  reply.mutable_server()->set_rounds(options_.rounds.rounds);
  reply.mutable_server()->set_max_staleness(options_.rounds.max_staleness);
  return reply;
}

void SplitServer::CheckSession(const std::string& identity, const std::string& session_id,
                               uint32_t protocol_version) {
  CheckVersion(protocol_version);
  sessions_.Touch(identity, session_id, Clock::now());
}

void SplitServer::Refused(const char* what, const std::exception& error,
                          const std::string& identity, bool exclude) {
  ++(std::string(what) == "step" ? refused_steps_ : refused_updates_);
  if (observer_) observer_->OnRefused(what, RefusalReason(error));
  // A malformed, out-of-bounds or non-finite step or update puts its hospital out of the round.
  if (exclude && coordinator_) coordinator_->Exclude(identity);
}

v1::TrainReply SplitServer::Train(const std::string& identity, const v1::TrainRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  // Decoding is the expensive, untrusted part: outside the model's lock.
  protocol::ReceivedActivations activations;
  at::Tensor labels;
  try {
    activations = activation_decoder_->Decode(request.activations());
    labels = protocol::DecodeTensor(request.labels(), LabelSpec()).dense;
    CLEAVE_CHECK_INPUT(labels.size(0) == activations.dense.size(0), "labels have batch ",
                       labels.size(0), ", activations ", activations.dense.size(0));
  } catch (const InvalidInput& error) {
    Refused("step", error, identity, /*exclude=*/true);
    throw;
  }
  const auto started = Clock::now();
  const int64_t batch = labels.size(0);
  bool round_closing = false;
  TopModel::Step step;
  v1::TrainReply reply;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    try {
      step = top_->Train(activations.dense, labels, [&] {
        return coordinator_ ? coordinator_->OnTrainStep(identity, request.model_version(), batch,
                                                        &round_closing)
                            : 1.0;
      });
    } catch (const InvalidInput& error) {
      lock.unlock();  // a round this closes calls back into SaveCheckpoint
      Refused("step", error, identity, /*exclude=*/true);
      throw;
    } catch (const RoundRefusal& error) {
      lock.unlock();
      Refused("step", error, identity, /*exclude=*/false);
      throw;
    }
    ++step_;
    samples_ += batch;
    reply.set_server_step(step_);
    if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) {
      SaveCheckpointLocked();
    }
  }
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_step(request.step());
  reply.set_model_version(request.model_version());
  reply.set_loss(step.loss);
  reply.set_correct(step.correct);
  reply.set_round_closing(round_closing);
  gradient_encoder_->Encode(step.cut_gradient, activations.sent, reply.mutable_gradients());
  sessions_.Count(request.session_id(), 1, batch, 0, 0);
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  if (observer_) {
    observer_->OnStep(batch, std::chrono::duration<double>(Clock::now() - started).count());
  }
  return reply;
}

v1::EvaluateReply SplitServer::Evaluate(const std::string& identity,
                                        const v1::EvaluateRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  const at::Tensor activations = activation_decoder_->Decode(request.activations()).dense;
  const at::Tensor labels = protocol::DecodeTensor(request.labels(), LabelSpec()).dense;
  CLEAVE_CHECK_INPUT(labels.size(0) == activations.size(0), "labels have batch ", labels.size(0),
                     ", activations ", activations.size(0));
  TopModel::Evaluation evaluation;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    evaluation = top_->Evaluate(activations, labels);
  }
  v1::EvaluateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_loss_sum(evaluation.loss_sum);
  reply.set_correct(evaluation.correct);
  reply.set_count(labels.size(0));
  reply.mutable_correct_per_class()->Add(evaluation.correct_per_class.begin(),
                                         evaluation.correct_per_class.end());
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

protocol::TensorSpec SplitServer::ActivationSpec() const {
  protocol::TensorSpec spec;
  spec.sample_shape = cut_shape_;
  spec.max_batch = options_.max_batch;
  spec.max_abs = activation_bound_;  // sparse payloads: as link_spec_ says (ActivationDecoder)
  return spec;
}

protocol::TensorSpec SplitServer::LabelSpec() const {
  protocol::TensorSpec spec;
  spec.dtype = v1::Tensor::INT64;
  spec.max_batch = options_.max_batch;
  spec.int_upper_bound = options_.model.num_classes;
  return spec;
}

void SplitServer::CountBytes(const std::string& session_id, size_t received, size_t sent) {
  sessions_.Count(session_id, 0, 0, static_cast<int64_t>(received), static_cast<int64_t>(sent));
  bytes_received_ += static_cast<int64_t>(received);
  bytes_sent_ += static_cast<int64_t>(sent);
  if (observer_) observer_->OnBytes(static_cast<int64_t>(received), static_cast<int64_t>(sent));
}

void SplitServer::NotifySessions() {
  if (observer_) {
    observer_->OnSessions(static_cast<int64_t>(sessions_.size()), sessions_.identities());
  }
}

void SplitServer::Leave(const std::string& identity, const std::string& session_id,
                        uint32_t protocol_version) {
  CheckSession(identity, session_id, protocol_version);
  const std::optional<Session> session = sessions_.Release(identity, session_id);
  if (!session) return;  // ended meanwhile
  spdlog::info("client '{}' left after {} steps, {} samples; received {} bytes, sent {} bytes",
               PeerText(identity), session->steps, session->samples, session->bytes_received,
               session->bytes_sent);
  NotifySessions();
  // Not under a lock: a round this closes calls back into SaveCheckpoint.
  if (coordinator_) coordinator_->OnLeave(identity);
}

void SplitServer::ReleaseSession(const std::string& identity, const std::string& session_id,
                                 const std::string& reason) {
  if (!sessions_.Release(identity, session_id)) return;
  spdlog::warn("released session of '{}': {}", PeerText(identity), reason);
  NotifySessions();
  if (coordinator_) coordinator_->OnLeave(identity);
}

v1::SyncReply SplitServer::Sync(const std::string& identity, const v1::SyncRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
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
  if (decision.weights.defined()) protocol::EncodeWeights(decision.weights, reply.mutable_weights());
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

v1::UpdateReply SplitServer::SubmitUpdate(const std::string& identity,
                                          const v1::UpdateRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  if (!coordinator_) {
    throw StatusError(grpc::StatusCode::FAILED_PRECONDITION,
                      "this server runs the single schedule: it takes no client-model updates");
  }
  const protocol::UpdateDecoder decoder(link_spec_.updates, client_parameters_,
                                        options_.rounds.max_update_abs);
  UpdateOutcome outcome;
  try {
    const at::Tensor delta = decoder.Decode(request.delta());
    outcome = coordinator_->Submit(identity, request.base_version(), request.round(),
                                   request.samples(), delta);
  } catch (const InvalidInput& error) {
    Refused("update", error, identity, /*exclude=*/true);
    throw;
  } catch (const RoundRefusal& error) {
    Refused("update", error, identity, /*exclude=*/false);
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
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
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
  std::optional<RoundState> round;
  if (coordinator_) round = coordinator_->Snapshot();
  // Refuses (and keeps the previous file) if anything in it is not finite.
  SaveServerCheckpoint(options_.checkpoint_path, fingerprint_, top_->layers(), top_->optimizer(),
                       client_parameters_, step_, round ? &*round : nullptr);
  spdlog::debug("checkpoint written to '{}' at step {}", options_.checkpoint_path, step_);
}

std::vector<at::Tensor> SplitServer::top_parameters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return top_->ParameterCopies();
}

int64_t SplitServer::step() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return step_;
}

ServerCounters SplitServer::counters() const {
  ServerCounters counters;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    counters.steps = step_;
    counters.samples = samples_;
  }
  counters.bytes_received = bytes_received_;
  counters.bytes_sent = bytes_sent_;
  counters.active_sessions = static_cast<int64_t>(sessions_.size());
  counters.active_clients = sessions_.identities();
  counters.refused_steps = refused_steps_;
  counters.refused_updates = refused_updates_;
  counters.expired_sessions = sessions_.expired();
  counters.replaced_sessions = sessions_.replaced();
  return counters;
}

}  // namespace cleave::server
