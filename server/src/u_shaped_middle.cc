#include "cleave/server/u_shaped_middle.h"

#include <ATen/ATen.h>

#include <cmath>

#include "cleave/core/error.h"
#include "cleave/protocol/version.h"
#include "cleave/server/refusal.h"

namespace cleave::server {

namespace {

constexpr char kNoLabels[] =
    "a U-shaped request carries no labels: the hospital keeps them and computes the loss";

std::vector<int64_t> BatchShape(int64_t batch, const std::vector<int64_t>& sample) {
  std::vector<int64_t> shape = {batch};
  shape.insert(shape.end(), sample.begin(), sample.end());
  return shape;
}

}  // namespace

UShapedMiddle::UShapedMiddle(const protocol::LinkSpec& link,
                             const protocol::TensorSpec& activations,
                             const std::vector<int64_t>& middle_shape,
                             std::chrono::milliseconds gradient_timeout, uint64_t seed)
    : activations_(link.activations, activations),
      middle_output_(link.activations, seed + 1),
      middle_gradient_(link.gradients),
      cut_gradient_(link.gradients, seed),
      middle_shape_(middle_shape),
      gradient_timeout_(gradient_timeout) {
  CLEAVE_CHECK_USER(gradient_timeout_.count() > 0, "the middle-gradient timeout must be > 0");
}

v1::TrainReply UShapedMiddle::Train(const std::string& session_id, const v1::TrainRequest& request,
                                    Middle middle, const Admit& admit, const Committed& committed) {
  CLEAVE_CHECK_INPUT(!request.has_labels(), kNoLabels);
  CLEAVE_CHECK_INPUT(request.has_activations() != request.has_middle_gradient(),
                     "a U-shaped step message carries either activations (first) or the middle "
                     "gradient (second), not ",
                     request.has_activations() ? "both" : "neither");
  if (request.has_activations()) return Forward(session_id, request, middle);
  return Backward(session_id, request, middle, admit, committed);
}

v1::TrainReply UShapedMiddle::Forward(const std::string& session_id,
                                      const v1::TrainRequest& request, Middle middle) {
  // Decoding is the expensive, untrusted part: before taking the middle.
  protocol::ReceivedActivations cut = activations_.Decode(request.activations());
  AcquireTurn(session_id);
  v1::TrainReply reply;
  try {
    Pending pending;
    pending.session_id = session_id;
    pending.step = request.step();
    pending.model_version = request.model_version();
    pending.cut_sent = std::move(cut.sent);
    {
      std::lock_guard<std::mutex> lock(middle.mutex);
      pending.forward = middle.layers.StartStep(cut.dense);
      const at::Tensor output = pending.forward.output.detach().to(at::kCPU);
      protocol::ActivationSelection selection = middle_output_.Select(output);
      middle_output_.Encode(output, selection, reply.mutable_middle_output());
      pending.middle_sent.all = selection.all;
      pending.middle_sent.indices = std::move(selection.indices);
    }
    {
      std::lock_guard<std::mutex> lock(turn_mutex_);
      pending.deadline = Clock::now() + gradient_timeout_;
      turn_deadline_ = pending.deadline;
      pending_ = std::move(pending);
      ++counters_.steps_started;
    }
    // Steps waiting for the middle now wait for this one's deadline at most.
    turn_free_.notify_all();
  } catch (...) {
    ReleaseTurn();
    throw;
  }
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_step(request.step());
  reply.set_model_version(request.model_version());
  return reply;
}

v1::TrainReply UShapedMiddle::Backward(const std::string& session_id,
                                       const v1::TrainRequest& request, Middle middle,
                                       const Admit& admit, const Committed& committed) {
  Pending pending = TakePending(session_id, request.step());
  // The turn is this step's until it is committed or refused.
  struct Releaser {
    UShapedMiddle* self;
    ~Releaser() { self->ReleaseTurn(); }
  } release{this};
  const at::Tensor gradient = DecodeMiddleGradient(request.middle_gradient(), pending);
  if (gradient_observer_) gradient_observer_(session_id, pending.step, gradient);
  v1::TrainReply reply;
  {
    std::lock_guard<std::mutex> lock(middle.mutex);
    const int64_t batch = pending.forward.output.size(0);
    const at::Tensor cut_gradient = middle.layers.FinishStep(
        pending.forward, gradient, [&] { return admit(pending.model_version, batch); });
    reply.set_server_step(committed(batch));
    cut_gradient_.Encode(cut_gradient, pending.cut_sent, reply.mutable_gradients());
  }
  {
    std::lock_guard<std::mutex> lock(turn_mutex_);
    ++counters_.steps_finished;
  }
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_step(request.step());
  reply.set_model_version(pending.model_version);
  return reply;
}

at::Tensor UShapedMiddle::DecodeMiddleGradient(const v1::Tensor& message,
                                               const Pending& pending) const {
  const at::Tensor gradient = middle_gradient_.Decode(
      message, BatchShape(pending.forward.output.size(0), middle_shape_), pending.middle_sent);
  const double largest = gradient.numel() > 0 ? gradient.abs().max().item<double>() : 0.0;
  if (!std::isfinite(largest)) throw NotFinite("the middle gradient is not finite");
  if (largest > kMaxMiddleGradientAbs) {
    throw OutOfBounds(detail::Concat("the middle gradient reaches ", largest, ", beyond ",
                                     kMaxMiddleGradientAbs));
  }
  return gradient;
}

v1::EvaluateReply UShapedMiddle::Evaluate(const v1::EvaluateRequest& request, Middle middle) {
  CLEAVE_CHECK_INPUT(!request.has_labels(), kNoLabels);
  const at::Tensor cut = activations_.Decode(request.activations()).dense;
  v1::EvaluateReply reply;
  {
    std::lock_guard<std::mutex> lock(middle.mutex);
    const at::Tensor output = middle.layers.Output(cut);
    const protocol::ActivationSelection selection = middle_output_.Select(output);
    middle_output_.Encode(output, selection, reply.mutable_middle_output());
  }
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_count(cut.size(0));
  return reply;
}

void UShapedMiddle::AcquireTurn(const std::string& session_id) {
  std::unique_lock<std::mutex> lock(turn_mutex_);
  while (turn_taken_) {
    // A pending step (not one being computed) past its deadline, or this session's own earlier
    // step (it moved on without sending the gradient), gives the middle up.
    if (pending_ && (pending_->session_id == session_id || Clock::now() >= turn_deadline_)) {
      pending_.reset();
      ++counters_.steps_abandoned;
      turn_taken_ = false;
      break;
    }
    if (pending_) {
      turn_free_.wait_until(lock, turn_deadline_);
    } else {
      turn_free_.wait(lock);
    }
  }
  turn_taken_ = true;
  turn_deadline_ = Clock::now() + gradient_timeout_;
}

UShapedMiddle::Pending UShapedMiddle::TakePending(const std::string& session_id, int64_t step) {
  std::lock_guard<std::mutex> lock(turn_mutex_);
  const bool mine = pending_ && pending_->session_id == session_id && pending_->step == step;
  if (mine && Clock::now() < pending_->deadline) {
    Pending pending = std::move(*pending_);
    pending_.reset();
    return pending;  // the turn stays taken until ReleaseTurn
  }
  if (mine) {  // too late: the step is dropped
    pending_.reset();
    ++counters_.steps_abandoned;
    turn_taken_ = false;
    turn_free_.notify_all();
  }
  throw Refusal(RefusalKind::kStale,
                detail::Concat("no U-shaped step ", step,
                               " of this session waits for its middle gradient (it came after the ",
                               gradient_timeout_.count() / 1000.0,
                               " s deadline, or the step was never started)"));
}

void UShapedMiddle::ReleaseTurn() {
  {
    std::lock_guard<std::mutex> lock(turn_mutex_);
    turn_taken_ = false;
  }
  turn_free_.notify_all();
}

bool UShapedMiddle::Abandon(const std::string& session_id) {
  {
    std::lock_guard<std::mutex> lock(turn_mutex_);
    if (!pending_ || pending_->session_id != session_id) return false;
    pending_.reset();
    ++counters_.steps_abandoned;
    turn_taken_ = false;
  }
  turn_free_.notify_all();
  return true;
}

bool UShapedMiddle::AbandonEnded(const std::function<bool(const std::string&)>& open) {
  std::string session_id;
  {
    std::lock_guard<std::mutex> lock(turn_mutex_);
    if (!pending_) return false;
    session_id = pending_->session_id;
  }
  // Outside the turn's lock: `open` takes the session table's.
  return !open(session_id) && Abandon(session_id);
}

UShapedCounters UShapedMiddle::counters() const {
  std::lock_guard<std::mutex> lock(turn_mutex_);
  return counters_;
}

}  // namespace cleave::server
