// The server side of split learning, without any networking: holds the top model and its
// optimizer, validates what clients send, computes the loss on their labels, and returns the
// cut-layer gradient. The gRPC service (split_service.h) only translates to and from it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "cleave/core/split_model.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/tensor_message.h"

namespace torch::optim {
class Optimizer;
}

namespace cleave {
class Compressor;
}

namespace cleave::server {

struct SplitServerOptions {
  ModelSpec model;
  uint64_t seed = 1;
  std::string optimizer = "adam";  // "adam" or "sgd"
  double learning_rate = 1e-3;
  int64_t max_batch = 4096;
  int64_t max_message_bytes = 64LL << 20;
  v1::CompressionConfig compression;  // advertised to clients in Join
  std::string checkpoint_path;        // empty: no checkpoints
  int64_t checkpoint_every = 0;       // steps between checkpoints (0: only on request)
  bool resume = false;                // load checkpoint_path at start if it exists
  bool require_checkpoint = false;    // with resume: a missing checkpoint is an error
  // Client identities (certificate CNs) allowed to join; empty: any client the CA signed.
  std::set<std::string> allowed_clients;
};

// Reads an allowlist file: one client name per line; blank lines and '#' comments ignored.
// Throws UserError naming the file (missing, or a name cleave-provision would not issue).
std::set<std::string> LoadClientAllowlist(const std::string& path);

// Fills an unset compression config with "none" in both directions and checks it.
v1::CompressionConfig NormalizeCompression(const v1::CompressionConfig& config);
// "act=gaussiank:0.01:fp16;grad=none:1:fp32"
std::string DescribeCompression(const v1::CompressionConfig& config);

class SplitServer {
 public:
  explicit SplitServer(SplitServerOptions options);
  ~SplitServer();
  SplitServer(const SplitServer&) = delete;
  SplitServer& operator=(const SplitServer&) = delete;

  // `identity` is the client certificate's CN (or a peer address in insecure mode). Throws
  // protocol::StatusError (FAILED_PRECONDITION on a fingerprint or version mismatch).
  v1::JoinReply Join(const std::string& identity, const v1::JoinRequest& request);
  // One training step on a client's batch. Throws StatusError / InvalidInput.
  v1::TrainReply Train(const std::string& identity, const v1::TrainRequest& request);
  v1::EvaluateReply Evaluate(const std::string& identity, const v1::EvaluateRequest& request);
  void Leave(const std::string& identity, const std::string& session_id);
  // Releases a session whose client vanished (stream cancelled); no identity check needed as the
  // caller is the stream that owned it.
  void ReleaseSession(const std::string& session_id, const std::string& reason);

  // Writes the checkpoint now (no-op without a checkpoint path).
  void SaveCheckpoint();

  int64_t step() const;
  // Protobuf bytes of all Train/Evaluate requests received and replies sent since start.
  int64_t bytes_received() const;
  int64_t bytes_sent() const;
  size_t active_sessions() const;
  // Waits until exactly `count` sessions are active; false on timeout.
  bool WaitForActiveSessions(size_t count, std::chrono::milliseconds timeout) const;
  const std::string& fingerprint() const { return fingerprint_; }
  const SplitServerOptions& options() const { return options_; }

 private:
  struct Session {
    std::string identity;
    int64_t steps = 0;
    int64_t samples = 0;
    int64_t bytes_received = 0;  // protobuf bytes of this client's requests
    int64_t bytes_sent = 0;      // protobuf bytes of the replies to it
  };
  const Session& CheckSession(const std::string& identity, const std::string& session_id,
                              uint32_t protocol_version) const;
  void SaveCheckpointLocked();
  // What a client's activations and labels must look like.
  protocol::TensorSpec ActivationSpec() const;
  protocol::TensorSpec LabelSpec() const;
  void CountBytesLocked(Session* session, size_t received, size_t sent);

  SplitServerOptions options_;
  std::string fingerprint_;
  SplitModel model_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<Compressor> gradient_compressor_;  // null: gradients go back uncompressed

  mutable std::mutex mutex_;  // guards everything below and the model/optimizer
  mutable std::condition_variable sessions_changed_;
  std::map<std::string, Session> sessions_;
  int64_t step_ = 0;
  int64_t bytes_received_ = 0;
  int64_t bytes_sent_ = 0;
};

}  // namespace cleave::server
