// The server side of split learning, without any networking: holds the top model and its
// optimizer, validates what clients send, computes the loss on their labels, and returns the
// cut-layer gradient. The gRPC service (grpc_server.h) only translates to and from it.
// Every hospital may be faulty or hostile (its certificate is valid, its numbers are not to be
// trusted): values are bounded, a step, an average or a checkpoint that is not finite is never
// committed, sessions expire, and peer text is escaped before it reaches a log or a status.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cleave/core/lr_schedule.h"
#include "cleave/core/split_config.h"
#include "cleave/core/split_model.h"
#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/protocol/version.h"
#include "cleave/server/client_admission.h"
#include "cleave/server/client_allowlist.h"
#include "cleave/server/periodic_task.h"
#include "cleave/server/refusal.h"
#include "cleave/server/replica_group.h"
#include "cleave/server/replicated_top.h"
#include "cleave/server/round_coordinator.h"
#include "cleave/server/round_endpoint.h"
#include "cleave/server/session_table.h"
#include "cleave/server/step_codec.h"
#include "cleave/server/step_merger.h"
#include "cleave/server/top_model.h"
#include "cleave/server/u_shaped_middle.h"
#include "cleave/server/value_bounds.h"
#include "cleave/server/vertical_training.h"

namespace cleave::server {

struct SplitServerOptions {
  ModelSpec model;
  uint64_t seed = 1;
  std::string optimizer = "adam";  // "adam", "adamw", "sgd" or "kfac" (K-FAC, then SGD)
  double learning_rate = 1e-3;
  double weight_decay = 0;
  double momentum = 0.9;  // sgd and kfac
  KfacOptions kfac;       // kfac only
  // Where the top runs: cpu, cuda, cuda:N or auto (core/device.h; UserError if not available).
  std::string device = "cpu";
  // Over the server's steps (all hospitals' together); resumes at the checkpoint's step.
  LearningRateSchedule lr_schedule;
  int64_t max_batch = 4096;
  int64_t max_message_bytes = protocol::kDefaultMaxMessageBytes;
  v1::CompressionConfig compression;  // advertised to clients in Join
  std::string checkpoint_path;        // empty: no checkpoints
  int64_t checkpoint_every = 0;       // steps between checkpoints (0: only on request)
  bool resume = false;                // load checkpoint_path at start if it exists
  bool require_checkpoint = false;    // with resume: a missing checkpoint is an error
  // A TorchScript top (model.top_script): also written back as TorchScript here, with its
  // metadata, whenever the checkpoint is (and at shutdown); empty: not written.
  std::string save_top_path;
  // Client identities (certificate CNs) allowed to join; empty: any client the CA signed.
  std::set<std::string> allowed_clients;
  // Schedule and round rules; schedule "single" (the default) runs no rounds.
  RoundOptions rounds;
  // Longest a Sync call is held waiting for work.
  std::chrono::milliseconds max_sync_wait{30000};
  // Largest magnitude of an activation value a hospital may send (0: derived from the model, see
  // DeriveActivationBound). Update deltas are bounded by rounds.max_update_abs (0: derived).
  double max_activation_abs = 0;
  // A session with no call for this long is released (0: never). Sync waits at most
  // max_sync_wait, so a waiting hospital calls well within it.
  std::chrono::milliseconds session_idle_timeout{180000};
  // Sessions one identity may hold; a Join beyond it replaces the identity's oldest session.
  int max_sessions_per_identity = 1;
  // Split configuration (advertised at Join). Vertical: `model` is the model whose top the
  // server runs; the parties' bottoms are their own (vertical_training.h). kUShaped: the server
  // runs only the middle (model.tail_layers >= 1 blocks stay with the hospital, with its
  // labels); a step started holds the middle for at most middle_gradient_timeout waiting for
  // its gradient.
  SplitConfig config = SplitConfig::kVanilla;
  VerticalOptions vertical;  // config vertical only
  std::chrono::milliseconds middle_gradient_timeout{30000};
  // Replicas of this server (replica_group.h, replicated_top.h): with replicas.replicas > 1 the
  // top trains in lockstep with the other replicas (vanilla configuration, single schedule,
  // not K-FAC); a tick without local work waits replica_idle_tick for some.
  ReplicaGroupOptions replicas;
  std::chrono::microseconds replica_idle_tick{2000};
  // Vanilla only: steps of hospitals waiting at the same time merged into one step of the top
  // (step_merger.h, split_server_merged.cc); max_batch 0 (the default): off.
  StepMergerOptions merge;
};

// Counts the server keeps for observability (metrics endpoint, tests).
struct ServerCounters {
  int64_t steps = 0;      // hospitals' steps trained
  int64_t top_steps = 0;  // optimizer steps of the top: fewer than steps when steps merge
  int64_t merged_steps = 0;  // top steps that took two hospitals' steps or more
  int64_t samples = 0;
  int64_t bytes_received = 0;  // protobuf bytes of requests (Train, Evaluate, SubmitUpdate)
  int64_t bytes_sent = 0;      // protobuf bytes of replies (Train, Evaluate, Sync)
  int64_t active_sessions = 0;
  int64_t active_clients = 0;     // distinct hospitals with a session
  int64_t refused_steps = 0;      // for any reason (stale, bounds, not finite, not a participant)
  int64_t refused_updates = 0;    // likewise
  int64_t expired_sessions = 0;   // idle too long
  int64_t replaced_sessions = 0;  // by a newer Join of the same identity
};

// Called by the server after events, for metrics; must be cheap and thread-safe.
class ServerObserver {
 public:
  virtual ~ServerObserver() = default;
  virtual void OnStep(int64_t samples, double seconds) = 0;
  virtual void OnBytes(int64_t received, int64_t sent) = 0;
  virtual void OnSessions(int64_t sessions, int64_t clients) = 0;
  virtual void OnUpdate(int64_t staleness) = 0;  // an update accepted into a round
  // `what`: "update" or "step"; `reason`: RefusalReason's label ("stale", "not_participant",
  // "out_of_bounds", "nonfinite", "no_samples") or "invalid".
  virtual void OnRefused(const std::string& what, const std::string& reason) = 0;
  virtual void OnSessionsExpired(int64_t count) = 0;
  virtual void OnRound(const RoundSummary& summary) = 0;
  // With merging on: a step of the top that took `hospitals` hospitals' steps, `samples` in all.
  virtual void OnTopStep(int64_t hospitals, int64_t samples) {
    (void)hospitals;
    (void)samples;
  }
};

// The link contract's (protocol/link_spec.h), here for the server's callers and tests.
using protocol::DescribeCompression;
using protocol::NormalizeCompression;

class SplitServer {
 public:
  explicit SplitServer(SplitServerOptions options);
  ~SplitServer();
  SplitServer(const SplitServer&) = delete;
  SplitServer& operator=(const SplitServer&) = delete;

  // Every call throws Refusal (refusal.h; status_mapping.h maps it to a status at the service
  // boundary) or InvalidInput for what it refuses: a request of another protocol version is
  // kMismatch, an unknown session kUnknownSession, another identity's kNotAllowed.
  // `identity` is the client certificate's CN (or a peer address in insecure mode). A model
  // fingerprint mismatch is kMismatch, an identity not on the allowlist kNotAllowed.
  v1::JoinReply Join(const std::string& identity, const v1::JoinRequest& request);
  // One training step on a client's batch.
  v1::TrainReply Train(const std::string& identity, const v1::TrainRequest& request);
  v1::EvaluateReply Evaluate(const std::string& identity, const v1::EvaluateRequest& request);
  void Leave(const std::string& identity, const std::string& session_id,
             uint32_t protocol_version = protocol::kProtocolVersion);
  // Rounds: what this hospital should do next (blocks up to the request's wait, capped by
  // options.max_sync_wait), and its client-model update. kMismatch with the single schedule.
  v1::SyncReply Sync(const std::string& identity, const v1::SyncRequest& request);
  v1::UpdateReply SubmitUpdate(const std::string& identity, const v1::UpdateRequest& request);
  // Releases a session whose client vanished (its stream or Sync was cancelled). Only a session
  // that `identity` owns: a client that named another's session id cannot end it this way.
  void ReleaseSession(const std::string& identity, const std::string& session_id,
                      const std::string& reason);

  // The Train stream that carried `session_id`'s steps ended: a U-shaped step of that session
  // still waiting for its gradient is dropped (no-op otherwise, or for another's session).
  void TrainStreamEnded(const std::string& identity, const std::string& session_id);
  // U-shaped only (null otherwise): the middle's step state and counters.
  UShapedMiddle* u_shaped() { return u_shaped_.get(); }

  // Replicas: empty while this server's replica group trains (or without replicas); why the
  // group ended otherwise (the server then trains no more and should exit).
  std::string replicas_ended() const { return replicated_ ? replicated_->ended() : ""; }

  // Writes the checkpoint now (no-op without a checkpoint path).
  void SaveCheckpoint();

  // Whether the server's work is over and it may stop (cleave-server then writes its checkpoint
  // and exits): its configured rounds are done and every session has ended (each hospital
  // evaluated and left, or its session expired), or `linger` has passed since the last round
  // closed (a hospital that never leaves does not hold the server up). Always false for the
  // single schedule and without a round limit. `why`, if given, receives the reason.
  bool FinishedServing(std::chrono::steady_clock::time_point now, std::chrono::milliseconds linger,
                       std::string* why = nullptr) const;

  // Releases the sessions idle since before now - session_idle_timeout; returns how many. A
  // background thread calls it; tests call it with a time of their choosing.
  int ExpireIdleSessions(std::chrono::steady_clock::time_point now);
  // Copies of the server's layers' parameters (tests, tools).
  std::vector<at::Tensor> top_parameters() const;
  double activation_bound() const { return activation_bound_; }
  double update_bound() const { return options_.rounds.max_update_abs; }

  int64_t step() const;
  ServerCounters counters() const;
  // Null for the single schedule.
  RoundCoordinator* rounds() { return coordinator_.get(); }
  // Not owned; set before serving.
  void SetObserver(ServerObserver* observer) { observer_ = observer; }
  // Protobuf bytes of all requests received and replies sent since start.
  int64_t bytes_received() const { return bytes_received_; }
  int64_t bytes_sent() const { return bytes_sent_; }
  size_t active_sessions() const { return sessions_.size(); }
  // Waits until exactly `count` sessions are active; false on timeout.
  bool WaitForActiveSessions(size_t count, std::chrono::milliseconds timeout) const {
    return sessions_.WaitForSize(count, timeout);
  }
  const std::string& fingerprint() const { return fingerprint_; }
  const SplitServerOptions& options() const { return options_; }

 private:
  // Checks the protocol version and that `identity` owns the session, and marks it active.
  void CheckSession(const std::string& identity, const std::string& session_id,
                    uint32_t protocol_version);
  // Runs `call`; a step or update (`what`) it refuses is counted (Refused) and rethrown.
  template <typename Call>
  auto Refusable(const char* what, const std::string& identity, Call&& call);
  // Counts a refused step or update, tells the observer, and (`exclude`) takes the hospital out
  // of the current round.
  void Refused(const char* what, const std::exception& error, const std::string& identity,
               bool exclude);
  // The rounds' side of `call`; Refusal kMismatch when the server runs no rounds.
  RoundEndpoint& Rounds(const char* call);
  void SaveCheckpointLocked();
  // Sets the top's learning rate for the next step from the schedule (under mutex_).
  void ScheduleLearningRateLocked();
  // The reply to a vanilla step taken (started: when its batch was decoded), counted.
  v1::TrainReply ReplyToStep(const v1::TrainRequest& request, const StepCodec::Batch& batch,
                             const TopModel::Step& step, bool round_closing, int64_t server_step,
                             std::chrono::steady_clock::time_point started);
  // Merged steps (split_server_merged.cc): a vanilla step through the merger, and a group of
  // them as the merger's leader runs it.
  struct MergedStep;
  void SetUpMerging();
  v1::TrainReply TrainMerged(const std::string& identity, const v1::TrainRequest& request,
                             const StepCodec::Batch& batch);
  void RunMergedGroup(const std::vector<StepMerger::Entry*>& group);
  std::vector<MergedStep*> AdmitMergedLocked(const std::vector<MergedStep*>& steps);
  int64_t TrainTogetherLocked(const std::vector<MergedStep*>& steps);
  void TrainAloneLocked(MergedStep& step, bool admitted);
  void CommitMergedLocked(const std::vector<MergedStep*>& steps);
  // What a client's activations and labels must look like.
  protocol::TensorSpec ActivationSpec() const;
  protocol::TensorSpec LabelSpec() const;
  // Adds a call's protobuf bytes to the totals and to its session's (if it still exists).
  void CountBytes(const std::string& session_id, size_t received, size_t sent);
  void NotifySessions();
  // A session of `identity` ended (left, released or expired).
  void SessionEnded(const std::string& identity);
  void OnRoundClosed(const RoundSummary& summary);
  // Vertical (split_server_vertical.cc): built in the constructor, which then tells `told` the
  // parties' settings; a step and an evaluation batch wait for every party.
  void SetUpVertical(v1::ServerConfig& told);
  v1::TrainReply TrainVertical(const std::string& identity, const v1::TrainRequest& request);
  v1::EvaluateReply EvaluateVertical(const std::string& identity,
                                     const v1::EvaluateRequest& request);
  // U-shaped (u_shaped_server.cc): a step's message, an evaluation batch, and dropping the
  // pending step of a session that ended.
  // Checks the configuration against the model (UserError); the middle's step state when
  // u-shaped, null otherwise.
  std::unique_ptr<UShapedMiddle> MakeUShapedMiddle(const std::vector<int64_t>& middle_shape) const;
  v1::TrainReply TrainUShaped(const std::string& identity, const v1::TrainRequest& request);
  v1::EvaluateReply EvaluateUShaped(const v1::EvaluateRequest& request);
  void AbandonEndedUShapedStep();
  // Replicas (split_server_replicated.cc): joins the group (after any resume) and takes rank
  // 0's model; a step goes through the group's step clock.
  void SetUpReplicas();
  void CheckSameSettings(ReplicaGroup& group) const;
  v1::TrainReply TrainReplicated(const std::string& identity, const v1::TrainRequest& request);

  SplitServerOptions options_;
  std::string fingerprint_;
  std::vector<int64_t> cut_shape_;
  int64_t client_parameters_ = 0;
  double activation_bound_ = 0;
  SessionTable sessions_;
  std::unique_ptr<TopModel> top_;
  protocol::LinkSpec link_spec_;  // parsed once from options_.compression
  JoinRules join_rules_;
  std::unique_ptr<protocol::ActivationDecoder> activation_decoder_;  // Evaluate
  std::unique_ptr<StepCodec> step_codec_;                            // Train
  std::unique_ptr<RoundCoordinator> coordinator_;    // null: schedule single
  std::unique_ptr<RoundEndpoint> round_endpoint_;    // likewise
  std::unique_ptr<VerticalTraining> vertical_;       // null unless config vertical
  std::unique_ptr<UShapedMiddle> u_shaped_;          // null: not U-shaped
  std::unique_ptr<ReplicatedTop> replicated_;        // null: no replicas
  std::unique_ptr<StepMerger> merger_;               // null: merging off
  ServerObserver* observer_ = nullptr;

  mutable std::mutex mutex_;  // guards the top model and the four below
  int64_t step_ = 0;          // hospitals' steps
  int64_t samples_ = 0;
  int64_t merged_steps_ = 0;  // top steps of two hospitals' steps or more
  int64_t merged_away_ = 0;   // hospitals' steps without a top step of their own

  std::atomic<int64_t> bytes_received_{0};
  std::atomic<int64_t> bytes_sent_{0};
  std::atomic<int64_t> refused_steps_{0};
  std::atomic<int64_t> refused_updates_{0};

  std::unique_ptr<PeriodicTask> reaper_;  // expires idle sessions

  mutable std::mutex finished_mutex_;
  std::optional<std::chrono::steady_clock::time_point> rounds_finished_at_;  // the last round
};

}  // namespace cleave::server
