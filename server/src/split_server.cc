#include "cleave/server/split_server.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/optimizer.h>

#include <cctype>
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
  return "act=" + one(config.activations()) + ";grad=" + one(config.gradients());
}

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
  CLEAVE_CHECK_USER(!options_.resume || !options_.checkpoint_path.empty(),
                    "--resume needs --checkpoint FILE");
  if (options_.resume && options_.require_checkpoint) {
    ReadFile(options_.checkpoint_path, "checkpoint");  // names the file if it is missing
  }
  if (options_.resume && FileExists(options_.checkpoint_path)) {
    const CheckpointMeta meta =
        LoadCheckpoint(options_.checkpoint_path, *model_.top, optimizer_.get(), fingerprint_);
    const auto it = meta.counters.find("step");
    step_ = it == meta.counters.end() ? 0 : it->second;
    spdlog::info("resumed from checkpoint '{}' at step {}", options_.checkpoint_path, step_);
  }
  spdlog::info("model {} (fingerprint {}), compression {}", DescribeSpec(options_.model),
               fingerprint_, DescribeCompression(options_.compression));
}

SplitServer::~SplitServer() = default;

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
  spdlog::info("client '{}' joined (session {}, {} active)", identity, session_id.substr(0, 8),
               sessions_.size());
  v1::JoinReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_session_id(session_id);
  reply.set_client_name(identity);
  reply.set_model_fingerprint(fingerprint_);
  *reply.mutable_compression() = options_.compression;
  reply.set_client_model_version(0);
  reply.set_server_step(step_);
  reply.mutable_server()->set_max_message_bytes(options_.max_message_bytes);
  reply.mutable_server()->set_model_description(DescribeSpec(options_.model));
  reply.mutable_server()->set_schedule("single");
  reply.mutable_server()->set_max_batch(options_.max_batch);
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
  model_.top->train();
  at::Tensor input = activations.dense.requires_grad_(true);
  const at::Tensor logits = model_.top->forward(input);
  const at::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
  optimizer_->zero_grad();
  loss.backward();
  optimizer_->step();
  ++step_;
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
  CountBytesLocked(&session_it->second, request.ByteSizeLong(), reply.ByteSizeLong());
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
  const auto session_it = sessions_.find(request.session_id());
  CountBytesLocked(session_it == sessions_.end() ? nullptr : &session_it->second,
                   request.ByteSizeLong(), reply.ByteSizeLong());
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

void SplitServer::CountBytesLocked(Session* session, size_t received, size_t sent) {
  if (session != nullptr) {
    session->bytes_received += static_cast<int64_t>(received);
    session->bytes_sent += static_cast<int64_t>(sent);
  }
  bytes_received_ += static_cast<int64_t>(received);
  bytes_sent_ += static_cast<int64_t>(sent);
}

void SplitServer::Leave(const std::string& identity, const std::string& session_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  const Session& session = CheckSession(identity, session_id, protocol::kProtocolVersion);
  spdlog::info("client '{}' left after {} steps, {} samples; received {} bytes, sent {} bytes",
               identity, session.steps, session.samples, session.bytes_received,
               session.bytes_sent);
  sessions_.erase(session_id);
  sessions_changed_.notify_all();
}

void SplitServer::ReleaseSession(const std::string& session_id, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  spdlog::warn("released session of '{}': {}", it->second.identity, reason);
  sessions_.erase(it);
  sessions_changed_.notify_all();
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
  cleave::SaveCheckpoint(options_.checkpoint_path, *model_.top, optimizer_.get(), meta);
  spdlog::info("checkpoint written to '{}' at step {}", options_.checkpoint_path, step_);
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

size_t SplitServer::active_sessions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sessions_.size();
}

bool SplitServer::WaitForActiveSessions(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return sessions_changed_.wait_for(lock, timeout, [&] { return sessions_.size() == count; });
}

}  // namespace cleave::server
