#include "cleave/server/split_server.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/device.h"
#include "cleave/core/optimizer_factory.h"
#include "cleave/core/peer_text.h"
#include "cleave/core/script_half.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/client_admission.h"
#include "cleave/server/refusal.h"
#include "cleave/server/server_checkpoint.h"
#include "cleave/server/value_bounds.h"

namespace cleave::server {

using Clock = std::chrono::steady_clock;


namespace {

// How the top trains, from the server's options.
TopOptimizerOptions TopOptimizer(const SplitServerOptions& options) {
  TopOptimizerOptions top;
  top.name = options.optimizer;
  top.learning_rate = options.learning_rate;
  top.weight_decay = options.weight_decay;
  top.momentum = options.momentum;
  top.kfac = options.kfac;
  return top;
}

}  // namespace

SplitServer::SplitServer(SplitServerOptions options)
    : options_(std::move(options)), sessions_(options_.max_sessions_per_identity) {
  link_spec_ = protocol::ParseLinkSpec(options_.compression);
  options_.compression = protocol::ToProto(link_spec_);  // advertised in Join
  options_.lr_schedule.Validate();
  CLEAVE_CHECK_USER(options_.session_idle_timeout.count() >= 0,
                    "the session idle timeout must be >= 0");
  fingerprint_ = ModelFingerprint(options_.model);
  const SplitModel model = BuildSplitModel(options_.model, options_.seed);
  cut_shape_ = model.cut_shape;
  CLEAVE_CHECK_USER(model.top, "the server runs the top half: --top is missing");
  // A server given only a TorchScript top holds no client-side weights: rounds need them.
  CLEAVE_CHECK_USER(model.bottom || options_.rounds.schedule == Schedule::kSingle, "--schedule ",
                    ScheduleName(options_.rounds.schedule),
                    " needs the client-side half too (--bottom with --top): the server keeps the "
                    "shared client-side weights");
  CLEAVE_CHECK_USER(options_.save_top_path.empty() || FindScriptHalf(*model.top),
                    "writing the top as TorchScript needs a TorchScript top (--top)");
  // U-shaped: bottom and tail are the client-side weights rounds average.
  const at::Tensor client_weights = FlattenClientParameters(model);
  client_parameters_ = client_weights.numel();
  const ValueBounds bounds =
      ResolveValueBounds({options_.max_activation_abs, options_.rounds.max_update_abs},
                         options_.model, model, options_.seed);
  activation_bound_ = bounds.activation_abs;
  options_.rounds.max_update_abs = bounds.update_abs;
  activation_decoder_ =
      std::make_unique<protocol::ActivationDecoder>(link_spec_.activations, ActivationSpec());
  step_codec_ =
      std::make_unique<StepCodec>(link_spec_, ActivationSpec(), LabelSpec(), options_.seed);
  u_shaped_ = MakeUShapedMiddle(model.middle_shape);  // null unless u-shaped
  SetUpMerging();                                      // null unless merging
  torch::nn::Sequential top = model.top;  // shares the layers
  top->to(ResolveDevice(options_.device));
  top_ = MakeTopModel(top, TopOptimizer(options_));
  if (options_.rounds.schedule != Schedule::kSingle) {
    coordinator_ = std::make_unique<RoundCoordinator>(options_.rounds, client_weights);
    round_endpoint_ =
        std::make_unique<RoundEndpoint>(*coordinator_, link_spec_.updates, options_.max_sync_wait);
  }
  CLEAVE_CHECK_USER(!options_.resume || !options_.checkpoint_path.empty(),
                    "resuming needs a checkpoint file");
  if (options_.resume && options_.require_checkpoint) {
    ReadFile(options_.checkpoint_path, "checkpoint");  // names the file if it is missing
  }
  join_rules_ = JoinRules{options_.allowed_clients, fingerprint_, DescribeSpec(options_.model),
                          options_.compression, v1::ServerConfig()};
  v1::ServerConfig& told = join_rules_.server;  // what a client learns at Join
  told.set_max_message_bytes(options_.max_message_bytes);
  told.set_model_description(DescribeSpec(options_.model));
  told.set_schedule(ScheduleName(options_.rounds.schedule));
  told.set_max_batch(options_.max_batch);
  told.set_rounds(options_.rounds.rounds);
  told.set_max_staleness(options_.rounds.max_staleness);
  told.set_config(SplitConfigName(options_.config));
  if (options_.config == SplitConfig::kVertical) SetUpVertical(told);
  if (options_.resume && FileExists(options_.checkpoint_path)) {
    step_ = ResumeServer(options_.checkpoint_path, fingerprint_, *top_, coordinator_.get(),
                         client_parameters_);
  }
  SetUpReplicas();
  if (coordinator_) {
    // Resumed after the last round: the linger after it starts now.
    if (coordinator_->finished()) rounds_finished_at_ = Clock::now();
    coordinator_->SetRoundClosedCallback(
        [this](const RoundSummary& summary) { OnRoundClosed(summary); });
    spdlog::info("{}", DescribeRoundOptions(options_.rounds));
  }
  spdlog::info(
      "model {} (fingerprint {}), compression {}; bounds: activation values {:g}, "
      "update values {:g}; sessions idle {} s expire, {} per identity",
      DescribeSpec(options_.model), fingerprint_, protocol::Describe(link_spec_), activation_bound_,
      options_.rounds.max_update_abs, options_.session_idle_timeout.count() / 1000.0,
      options_.max_sessions_per_identity);
  if (options_.session_idle_timeout.count() > 0) {
    const auto period = std::clamp(options_.session_idle_timeout / 4, std::chrono::milliseconds(10),
                                   std::chrono::milliseconds(5000));
    reaper_ = std::make_unique<PeriodicTask>(period, [this] { ExpireIdleSessions(Clock::now()); });
  }
}

SplitServer::~SplitServer() {
  replicated_.reset();  // its clock calls back into this object
  reaper_.reset();
  // Its deadline thread calls back into this object: stop it first.
  coordinator_.reset();
}

int SplitServer::ExpireIdleSessions(Clock::time_point now) {
  if (options_.session_idle_timeout.count() <= 0) return 0;
  const std::vector<Session> gone = sessions_.ExpireBefore(now - options_.session_idle_timeout);
  if (gone.empty()) return 0;
  NotifySessions();
  if (observer_) observer_->OnSessionsExpired(static_cast<int64_t>(gone.size()));
  for (const Session& session : gone) {
    spdlog::warn("session of '{}' expired after {} s without a call", PeerText(session.identity),
                 options_.session_idle_timeout.count() / 1000.0);
    if (coordinator_) coordinator_->OnLeave(session.identity);
  }
  AbandonEndedUShapedStep();
  return static_cast<int>(gone.size());
}

v1::JoinReply SplitServer::Join(const std::string& identity, const v1::JoinRequest& request) {
  AdmitJoin(identity, request, join_rules_);
  if (vertical_) vertical_->Admit(identity, request);
  const SessionTable::Opened opened = sessions_.Open(identity, Clock::now());
  if (opened.replaced > 0) AbandonEndedUShapedStep();
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
  return JoinReplyFor(join_rules_, identity, opened.id, step(),
                      coordinator_ ? coordinator_->version() : 0);
}

void SplitServer::CheckSession(const std::string& identity, const std::string& session_id,
                               uint32_t protocol_version) {
  CheckProtocolVersion(protocol_version);
  sessions_.Touch(identity, session_id, Clock::now());
}

void SplitServer::Refused(const char* what, const std::exception& error,
                          const std::string& identity, bool exclude) {
  ++(std::string(what) == "step" ? refused_steps_ : refused_updates_);
  if (observer_) observer_->OnRefused(what, RefusalReasonOf(error));
  // A malformed, out-of-bounds or non-finite step or update puts its hospital out of the round.
  if (exclude && coordinator_) coordinator_->Exclude(identity);
}

template <typename Call>
auto SplitServer::Refusable(const char* what, const std::string& identity, Call&& call) {
  try {
    return call();
  } catch (const InvalidInput& error) {
    Refused(what, error, identity, /*exclude=*/true);
    throw;
  } catch (const Refusal& error) {
    Refused(what, error, identity, /*exclude=*/false);  // the rounds dealt with the hospital
    throw;
  }
}

v1::TrainReply SplitServer::Train(const std::string& identity, const v1::TrainRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  if (vertical_) return TrainVertical(identity, request);
  if (u_shaped_) return TrainUShaped(identity, request);
  if (replicated_) return TrainReplicated(identity, request);
  CLEAVE_CHECK_INPUT(!request.has_middle_gradient(),
                     "a middle gradient belongs to the u-shaped configuration; this server runs ",
                     SplitConfigName(options_.config));
  // Decoding is the expensive, untrusted part: outside the model's lock.
  const StepCodec::Batch batch =
      Refusable("step", identity, [&] { return step_codec_->Decode(request); });
  if (merger_) return TrainMerged(identity, request, batch);
  const auto started = Clock::now();
  bool round_closing = false;
  int64_t server_step = 0;
  // The lock is released before a refusal is counted: a round it closes calls SaveCheckpoint.
  const TopModel::Step step = Refusable("step", identity, [&] {
    std::lock_guard<std::mutex> lock(mutex_);
    ScheduleLearningRateLocked();
    TopModel::Step taken = top_->Train(batch.activations.dense, batch.labels, [&] {
      if (!coordinator_) return 1.0;
      const StepAdmission admission =
          coordinator_->AdmitStep(identity, request.model_version(), batch.size());
      round_closing = admission.round_closing;
      return admission.scale;
    });
    server_step = ++step_;
    samples_ += batch.size();
    if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) {
      SaveCheckpointLocked();
    }
    return taken;
  });
  return ReplyToStep(request, batch, step, round_closing, server_step, started);
}

v1::TrainReply SplitServer::ReplyToStep(const v1::TrainRequest& request,
                                        const StepCodec::Batch& batch, const TopModel::Step& step,
                                        bool round_closing, int64_t server_step,
                                        Clock::time_point started) {
  const v1::TrainReply reply =
      step_codec_->Encode(request, batch, step, round_closing, server_step);
  sessions_.Count(request.session_id(), 1, batch.size(), 0, 0);
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  if (observer_) {
    observer_->OnStep(batch.size(), std::chrono::duration<double>(Clock::now() - started).count());
  }
  return reply;
}

v1::EvaluateReply SplitServer::Evaluate(const std::string& identity,
                                        const v1::EvaluateRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  if (vertical_) return EvaluateVertical(identity, request);
  if (u_shaped_) return EvaluateUShaped(request);
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
  return ActivationTensorSpec(cut_shape_, options_.max_batch, activation_bound_);
}

protocol::TensorSpec SplitServer::LabelSpec() const {
  return LabelTensorSpec(options_.max_batch, options_.model.num_classes);
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
  SessionEnded(identity);
}

void SplitServer::ReleaseSession(const std::string& identity, const std::string& session_id,
                                 const std::string& reason) {
  if (!sessions_.Release(identity, session_id)) return;
  spdlog::warn("released session of '{}': {}", PeerText(identity), reason);
  SessionEnded(identity);
}

void SplitServer::SessionEnded(const std::string& identity) {
  AbandonEndedUShapedStep();
  NotifySessions();
  // Not under a lock: a round this closes calls back into SaveCheckpoint.
  if (coordinator_) coordinator_->OnLeave(identity);
}

RoundEndpoint& SplitServer::Rounds(const char* call) {
  if (!round_endpoint_) {
    throw Refusal(RefusalKind::kMismatch, detail::Concat("this server runs the single schedule: ",
                                                         call, " has no rounds to take part in"));
  }
  return *round_endpoint_;
}

v1::SyncReply SplitServer::Sync(const std::string& identity, const v1::SyncRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  // Not under the server's lock: this may wait for the round to change.
  const v1::SyncReply reply = Rounds("Sync").Sync(identity, request);
  CountBytes(request.session_id(), request.ByteSizeLong(), reply.ByteSizeLong());
  return reply;
}

v1::UpdateReply SplitServer::SubmitUpdate(const std::string& identity,
                                          const v1::UpdateRequest& request) {
  CheckSession(identity, request.session_id(), request.protocol_version());
  RoundEndpoint& rounds = Rounds("SubmitUpdate");
  const v1::UpdateReply reply =
      Refusable("update", identity, [&] { return rounds.Submit(identity, request); });
  if (reply.duplicate()) {
    spdlog::info("update of '{}' for round {} was applied before; ignored", PeerText(identity),
                 request.round());
  } else {
    if (observer_) observer_->OnUpdate(reply.staleness());
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
  if (summary.finished) {
    std::lock_guard<std::mutex> lock(finished_mutex_);
    rounds_finished_at_ = Clock::now();
  }
}

bool SplitServer::FinishedServing(Clock::time_point now, std::chrono::milliseconds linger,
                                  std::string* why) const {
  std::optional<Clock::time_point> finished_at;
  {
    std::lock_guard<std::mutex> lock(finished_mutex_);
    finished_at = rounds_finished_at_;
  }
  if (!finished_at) return false;
  const size_t open = sessions_.size();
  std::string reason;
  if (open == 0) {
    reason = "every hospital has left";
  } else if (now - *finished_at >= linger) {
    reason = detail::Concat(open, " session(s) still open ", linger.count() / 1000.0,
                            " s after the last round");
  } else {
    return false;
  }
  if (why)
    *why = detail::Concat("training finished after ", options_.rounds.rounds, " round(s) and ",
                          reason);
  return true;
}

void SplitServer::SaveCheckpoint() {
  std::lock_guard<std::mutex> lock(mutex_);
  SaveCheckpointLocked();
}

void SplitServer::ScheduleLearningRateLocked() {
  SetLearningRate(top_->optimizer(), options_.lr_schedule.At(options_.learning_rate, step_));
}

void SplitServer::SaveCheckpointLocked() {
  if (!options_.save_top_path.empty()) {
    SaveScriptHalf(*FindScriptHalf(*top_->layers()), options_.save_top_path);
    spdlog::debug("TorchScript top written to '{}' at step {}", options_.save_top_path, step_);
  }
  if (options_.checkpoint_path.empty()) return;
  std::optional<RoundState> round;
  if (coordinator_) round = coordinator_->Snapshot();
  // Refuses (and keeps the previous file) if anything in it is not finite.
  SaveServerCheckpoint(options_.checkpoint_path, fingerprint_, top_->layers(), top_->optimizer(),
                       client_parameters_, step_, round ? &*round : nullptr, top_->kfac_state());
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
    counters.top_steps = step_ - merged_away_;
    counters.merged_steps = merged_steps_;
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
